"""The iterated-RLHF loop's live state for admins (``rlhfkit loop --feedback-db URL`` writes it): the
round, the labels in and needed, and the reward and KL curves so far. ``/admin/loop`` reloads itself
every few seconds (a meta refresh: no script); ``/admin/loop.json`` is the same state as JSON."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import service as svc
from ..db import User
from .deps import Engine, admin_user, render

router = APIRouter()
REFRESH_SECONDS = 5
CURVES = (("gold", "gold reward", "#1f77b4"), ("proxy", "proxy reward", "#ff7f0e"), ("kl", "KL to SFT", "#2ca02c"),
          ("rm_accuracy", "reward-model accuracy on policy samples", "#d62728"))


def curve_svg(rows: list[dict], key: str, width: int = 300, height: int = 110, pad: int = 14) -> dict | None:
    """Points of one curve in an SVG box (rounds on x, the value on y, scaled to the curve's own range), or
    None when no round has the value yet."""
    pts = [(r["round"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return None
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)
    xy = [(pad + (x - x0) * sx, height - pad - (y - y0) * sy) for x, y in pts]
    return {"points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy), "dots": xy, "min": y0, "max": y1, "last": pts[-1][1],
            "width": width, "height": height}


@router.get("/admin/loop", response_class=HTMLResponse)
async def admin_loop(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    state = await run_in_threadpool(svc.get_loop_state, engine)
    rows = (state or {}).get("curves") or []
    curves = [(name, color, curve_svg(rows, key)) for key, name, color in CURVES]
    return render(request, "admin_loop.html", user=user, state=state, rows=rows, curves=curves, refresh=REFRESH_SECONDS)


@router.get("/admin/loop.json")
async def admin_loop_json(engine: Engine, user: User = Depends(admin_user)) -> Response:
    return JSONResponse({"state": await run_in_threadpool(svc.get_loop_state, engine)})
