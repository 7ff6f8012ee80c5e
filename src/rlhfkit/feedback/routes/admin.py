"""Admin pages, all behind ``admin_user`` (403 for annotators): dashboard, settings, tasks
(import, sampling), users, exports, and the API schema (``/openapi.json``, ``/docs``)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool

from .. import export as exp
from .. import service as svc
from .. import stats
from ..db import Job, Label, Task, User
from .deps import MAX_ID, Engine, admin_user, render, wants_json

router = APIRouter()


@router.get("/admin", response_class=HTMLResponse)
def admin_dashboard(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    with Session(engine) as s:
        cfg = svc.get_settings(s)
    return render(request, "admin.html", user=user, d=stats.dashboard(engine), settings=cfg, models=svc.active_models(engine))


@router.get("/admin/dashboard.json")
def admin_dashboard_json(engine: Engine, user: User = Depends(admin_user)) -> Response:
    return JSONResponse(stats.dashboard(engine))


@router.post("/admin/settings")
async def admin_settings(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    form = await request.form()
    values = {k: form[k] for k in svc.DEFAULT_SETTINGS if k in form and str(form[k]).strip() != ""}
    await run_in_threadpool(svc.set_settings, engine, values)
    return RedirectResponse("/admin", status_code=303)


@router.get("/admin/tasks", response_class=HTMLResponse)
def admin_tasks(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    with Session(engine) as s:
        counts = dict(s.execute(sa.select(Label.task_id, sa.func.count()).group_by(Label.task_id)).all())
        tasks = s.scalars(sa.select(Task).options(selectinload(Task.responses)).order_by(Task.id.desc()).limit(500)).all()
        jobs = s.scalars(sa.select(Job).order_by(Job.id.desc()).limit(50)).all()
    return render(request, "admin_tasks.html", user=user, tasks=tasks, counts=counts, jobs=jobs, models=svc.active_models(engine))


@router.post("/admin/import")
async def admin_import(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    form = await request.form()
    up = form.get("file")
    if up is None or not hasattr(up, "read"):
        raise svc.Invalid("choose a JSONL file to import")
    text = (await up.read()).decode("utf-8", errors="replace")
    kind = str(form.get("kind", "rating"))
    ref = str(form.get("reference", "")).strip() or None
    specs = svc.parse_import_lines(text.splitlines(), name=up.filename or "upload", default_kind=kind, reference=ref, gold=bool(form.get("gold")))
    ids = await run_in_threadpool(svc.add_tasks, engine, specs)
    if wants_json(request):
        return JSONResponse({"imported": len(ids), "task_ids": ids}, status_code=201)
    return RedirectResponse("/admin/tasks", status_code=303)


@router.post("/admin/sample")
async def admin_sample(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    form = await request.form()
    models = [m.strip() for m in str(form.get("models", "")).replace("\n", ",").split(",") if m.strip()]
    try:
        k = int(str(form.get("num_samples", "2")))
    except ValueError:
        raise svc.Invalid("number of samples must be an integer") from None
    ids = []
    for x in form.getlist("task_id"):
        if not (isinstance(x, str) and x.strip().isascii() and x.strip().isdigit() and len(x.strip()) <= 10 and 1 <= int(x.strip()) <= MAX_ID):
            raise svc.Invalid(f"task_id must be a task number, got {x!r:.40}")
        ids.append(int(x.strip()))
    if not ids:
        with Session(engine) as s:
            ids = list(s.scalars(sa.select(Task.id).where(Task.status == "waiting", Task.created_by.is_(None))))
    if not ids:
        raise svc.Invalid("no task is waiting for responses")
    await run_in_threadpool(svc.request_samples, engine, ids, models, k, {"max_new_tokens": 64, "temperature": 1.0}, user.id)
    return RedirectResponse("/admin/tasks", status_code=303)


@router.get("/admin/users", response_class=HTMLResponse)
def admin_users(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    with Session(engine) as s:
        users = s.scalars(sa.select(User).order_by(User.username)).all()
    return render(request, "admin_users.html", user=user, users=users, error=None)


@router.post("/admin/users")
async def admin_add_user(request: Request, engine: Engine, user: User = Depends(admin_user)) -> Response:
    form = await request.form()
    await run_in_threadpool(svc.create_user, engine, str(form.get("username", "")), str(form.get("role", "annotator")), str(form.get("password", "")))
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/admin/export")
def admin_export(engine: Engine, kind: str = "prefs", user: User = Depends(admin_user)) -> Response:
    if kind not in exp.EXPORT_KINDS:
        raise svc.Invalid(f"export kind must be one of {', '.join(exp.EXPORT_KINDS)}")
    recs = {"prefs": exp.preference_records, "eval": exp.eval_records, "labels": exp.label_records}[kind](engine)
    body = "".join(exp.jsonl_line(r) for r in recs)
    return PlainTextResponse(body, media_type="application/jsonl", headers={"content-disposition": f'attachment; filename="{kind}.jsonl"'})


# ------------------------------------------------------------------- API schema, admins only


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, user: User = Depends(admin_user)) -> Response:
    return JSONResponse(request.app.openapi())


def api_endpoints(schema: dict) -> list[dict]:
    """The OpenAPI schema as rows for ``api_docs.html``: method, path, summary, parameters, body."""
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = [f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})" for p in op.get("parameters", [])]
            body = ", ".join(op.get("requestBody", {}).get("content", {}))
            rows.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                         "doc": op.get("description", ""), "params": params, "body": body})
    return rows


@router.get("/docs", include_in_schema=False)
def docs(request: Request, user: User = Depends(admin_user)) -> Response:
    # A plain page made here from the schema, not Swagger UI: that loads its script and CSS
    # from a CDN (the app must work offline, and must not run another host's code next to
    # the session) and starts with an inline script, which the CSP forbids.
    return render(request, "api_docs.html", user=user, endpoints=api_endpoints(request.app.openapi()))
