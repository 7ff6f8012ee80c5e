"""The annotator's pages and their JSON twins: the task list, the next task, a task (show,
answer, skip), gold feedback, onboarding, one's own agreement.

An annotator reaches only tasks assigned to them (``svc.get_assignment``: 403 otherwise, 404
for unknown ids); responses are shown in the assignment's shuffled order under letters, never
with their sources, and named by opaque per-annotator ids (``service/blind.py``), never by
their global ids.

GETs change nothing that matters: ``GET /next`` and ``GET /api/next`` show the pending task;
``POST /next`` and ``POST /api/next`` hand out work (allocate a batch when none is pending),
and so does a submitted or skipped form (a POST already), which goes straight to the next task.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool

from .. import service as svc
from .. import stats
from ..db import Assignment, Label, Task, User, as_utc, utcnow
from .deps import Engine, TaskId, annotator_user, current_user, render, wants_json

router = APIRouter()


def _elapsed_s(a: Assignment) -> int:
    start = as_utc(a.started_at) or as_utc(a.assigned_at)
    end = as_utc(a.completed_at) or utcnow()
    return max(0, int((end - start).total_seconds()))


letters = svc.letters  # where it used to live


def compare_rows(kind: str, yours: dict, known: dict, names: dict[int, str]) -> list[tuple[str, str, str]]:
    """(what, your answer, known answer) rows for the gold feedback page, in display names."""
    if kind == "rating":
        g = {it["response_id"]: it["score"] for it in known["ratings"]}
        return [(f"Output {names[it['response_id']]}", str(it["score"]), str(g[it["response_id"]])) for it in sorted(yours["ratings"], key=lambda it: names[it["response_id"]])]
    if kind == "ranking":
        fmt = lambda tiers: " > ".join(" = ".join(sorted(names[i] for i in t)) for t in tiers)  # noqa: E731
        return [("Ranking, best first", fmt(yours["tiers"]), fmt(known["tiers"]))]
    w = lambda x: "tie" if x is None else names[x]  # noqa: E731
    return [("Better response", w(yours["winner"]), w(known["winner"]))]


@router.get("/")
def home(user: User = Depends(current_user)) -> Response:
    return RedirectResponse("/admin" if user.role == "admin" else "/tasks", status_code=303)


@router.get("/tasks", response_class=HTMLResponse)
def my_tasks(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    ob = svc.onboarding_state(engine, user)
    with Session(engine) as s:
        rows = s.execute(
            sa.select(Assignment, Task).join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == user.id, Assignment.attempt == 0)
            .order_by(Assignment.id.desc()).limit(200)
        ).all()
        done, total = svc.progress(s, user)
    items = [{"task_id": t.id, "kind": t.kind, "status": a.status, "task_status": t.status, "prompt": t.prompt[:140], "chat": bool((t.meta or {}).get("chat"))} for a, t in rows]
    return render(request, "tasks.html", user=user, items=items, done=done, total=total, onboarding=ob)


def _pending(engine: sa.Engine, user: User) -> Assignment | None:
    with Session(engine) as s:
        return svc.first_pending(s, user.id)


def _next_location(engine: sa.Engine, user: User, allocate: bool) -> str:
    """Where "next" leads: onboarding while required, else the first pending task; with
    ``allocate`` (a POST) a fresh batch when none is pending."""
    if svc.onboarding_state(engine, user).required:
        a = svc.next_onboarding(engine, user)  # onboarding tasks are made by POST /onboarding/start
        return f"/tasks/{a.task_id}" if a else "/onboarding"
    a = svc.next_assignment(engine, user) if allocate else _pending(engine, user)
    if a is not None:
        return f"/tasks/{a.task_id}"
    return "/tasks?all_done=1" if allocate else "/tasks"


@router.get("/next")
def next_task(engine: Engine, user: User = Depends(annotator_user)) -> Response:
    """The pending task (nothing is handed out: the task list's button POSTs for more)."""
    return RedirectResponse(_next_location(engine, user, allocate=False), status_code=303)


@router.post("/next")
async def next_task_new(engine: Engine, user: User = Depends(annotator_user)) -> Response:
    """The pending task, else a freshly allocated batch's first."""
    return RedirectResponse(await run_in_threadpool(_next_location, engine, user, True), status_code=303)


def _api_next(engine: sa.Engine, user: User, allocate: bool) -> dict:
    if svc.onboarding_state(engine, user).required:
        raise svc.Forbidden("pass onboarding first (/onboarding)")
    a = svc.next_assignment(engine, user) if allocate else _pending(engine, user)
    return {"task_id": a.task_id if a else None}


@router.get("/api/next")
def api_next(engine: Engine, user: User = Depends(annotator_user)) -> Response:
    """``{"task_id"}`` of the pending task, or null (then ``POST /api/next`` asks for more)."""
    return JSONResponse(_api_next(engine, user, allocate=False))


@router.post("/api/next")
async def api_next_new(engine: Engine, user: User = Depends(annotator_user)) -> Response:
    """``{"task_id"}`` of the pending task, else of a freshly allocated one; null when no work is left."""
    return JSONResponse(await run_in_threadpool(_api_next, engine, user, True))


def _task_view(engine: sa.Engine, user: User, task_id: int) -> dict[str, Any]:
    """What a task page shows; ``responses`` are ``{"id": opaque id, "name": letter, "text", "rid"}``
    (``rid``, the global id, stays on the server: templates and JSON show ``id``)."""
    with Session(engine) as s:
        a = svc.get_assignment(s, user, task_id)
        task = s.get(Task, task_id, options=[selectinload(Task.responses)])
        if svc.seen_order(a, task) != list(a.display_order or []):
            svc.ensure_display_order(engine, a.id)  # first view of a chat task, or responses added since
    if a.started_at is None and a.status == "pending":
        svc.mark_started(engine, a.id)
    with Session(engine) as s:
        a = s.get(Assignment, a.id)
        task = s.get(Task, task_id, options=[selectinload(Task.responses)])
        label = s.scalar(sa.select(Label).where(Label.assignment_id == a.id))
        done, total = svc.progress(s, user, a.attempt)
    by_id = {r.id: r for r in task.responses}
    order = svc.seen_order(a, task)
    names = letters(len(order))
    ext = svc.opaque_ids(svc.blind_key(engine), task.id, user.id, order)
    shown = [{"id": ext[rid], "name": names[i], "text": by_id[rid].text, "rid": rid} for i, rid in enumerate(order)]
    return {
        "task": task, "assignment": a, "responses": shown, "label": label, "ext": ext,
        "position": min(done + (a.status == "pending"), total), "total": total, "elapsed": _elapsed_s(a),
        "onboarding": task.is_gold,
    }


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    with Session(engine) as s:
        task = s.get(Task, task_id)
    if task is not None and task.status == "waiting":
        with Session(engine) as s:
            svc.get_assignment(s, user, task_id)  # access check first
        return RedirectResponse(f"/chat/{task_id}", status_code=303)
    view = _task_view(engine, user, task_id)
    return render(request, "task.html", user=user, error=None, **view)


@router.get("/api/tasks/{task_id}")
def api_task(task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    view = _task_view(engine, user, task_id)
    t, a, ext = view["task"], view["assignment"], view["ext"]
    return JSONResponse({
        "task_id": t.id, "kind": t.kind, "prompt": t.prompt, "status": a.status,
        "responses": [{k: r[k] for k in ("id", "name", "text")} for r in view["responses"]],
        "progress": [view["position"], view["total"]],
        "label": svc.map_payload(t.kind, view["label"].payload, lambda rid: ext.get(rid, "?")) if view["label"] else None,
    })


def parse_json_object(body: bytes) -> dict:
    """A request body that must be one JSON object; :class:`svc.Invalid` (422) for anything else.

    ``json.loads`` raises RecursionError on deep nesting (``[[[[...``) and ValueError on an
    integer of more than 4300 digits: both were a 500.
    """
    try:
        raw = json.loads(body)
    except RecursionError:
        raise svc.Invalid("body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, a too long integer, bytes that are not UTF-8
        raise svc.Invalid(f"body is not valid JSON ({getattr(e, 'msg', str(e)[:80])})") from None
    if not isinstance(raw, dict):
        raise svc.Invalid("body must be a JSON object")
    return raw


async def _after_answer(engine: sa.Engine, user: User) -> Response:
    """A form answered or skipped (a POST): on to the next task, allocating one if needed."""
    return RedirectResponse(await run_in_threadpool(_next_location, engine, user, True), status_code=303)


@router.post("/tasks/{task_id}")
async def submit(request: Request, task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    is_json = request.headers.get("content-type", "").startswith("application/json")
    raw = parse_json_object(await request.body()) if is_json else await request.form()
    try:
        res = await run_in_threadpool(svc.submit_label, engine, user, task_id, raw, not is_json, True)
    except svc.Invalid as e:
        if wants_json(request):
            raise
        view = await run_in_threadpool(_task_view, engine, user, task_id)
        return render(request, "task.html", 422, user=user, error=e.message, **view)
    if wants_json(request):
        return JSONResponse({"label_id": res.label_id, "created": res.created}, status_code=201 if res.created else 200)
    if res.is_gold:
        return RedirectResponse(f"/tasks/{task_id}/gold", status_code=303)
    return await _after_answer(engine, user)


@router.post("/tasks/{task_id}/skip")
async def skip(request: Request, task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    await run_in_threadpool(svc.skip_task, engine, user, task_id)
    with Session(engine) as s:
        is_gold = s.get(Task, task_id).is_gold
    if is_gold:
        await run_in_threadpool(svc.finish_onboarding, engine, user)
    if wants_json(request):
        return JSONResponse({"skipped": task_id})
    return await _after_answer(engine, user)


@router.get("/tasks/{task_id}/gold", response_class=HTMLResponse)
def gold_feedback(request: Request, task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    view = _task_view(engine, user, task_id)
    task, label = view["task"], view["label"]
    if not task.is_gold:
        raise svc.NotFound(f"task {task_id} is not a gold question")
    if label is None:
        raise svc.Conflict(f"answer task {task_id} first")
    st = svc.finish_onboarding(engine, user)
    names = {r["rid"]: r["name"] for r in view["responses"]}
    return render(
        request, "gold.html", user=user, score=svc.gold_score(task, label.payload),
        rows=compare_rows(task.kind, label.payload, svc.gold_answer_payload(task), names), state=st, **view,
    )


@router.get("/onboarding", response_class=HTMLResponse)
def onboarding(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    st = svc.onboarding_state(engine, user)
    return render(request, "onboarding.html", user=user, state=st)


@router.post("/onboarding/start")
async def onboarding_start(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    st = await run_in_threadpool(svc.onboarding_state, engine, user)
    await run_in_threadpool(svc.start_onboarding, engine, user, st.attempt > 0)
    return RedirectResponse("/next", status_code=303)


@router.get("/me", response_class=HTMLResponse)
def me(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    return render(request, "me.html", user=user, mine=stats.my_agreement(engine, user), state=svc.onboarding_state(engine, user))
