"""The annotation web app: FastAPI, server-rendered pages, a little JavaScript.

``create_app(db_url)`` builds the app (and migrates the database); ``rlhfkit feedback
serve`` runs it under uvicorn. Access rules, enforced here and tested route by route:

* every route except ``/login`` and ``/static/*`` needs a logged-in user: pages redirect
  anonymous visitors to ``/login``, JSON routes (``/api/...``, ``Accept: application/json``)
  answer 401; ``/admin/*``, ``/openapi.json`` and ``/docs`` answer 403 to annotators;
* every POST carries the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), or is refused with 403 before anything else happens;
* an annotator reaches only tasks assigned to them (403 otherwise, 404 for unknown ids).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from . import export as exp
from . import service as svc
from . import stats
from .db import DEFAULT_DB_URL, Assignment, Job, Label, Task, User, as_utc, make_engine, migrate, utcnow
from .security import CSRF_FIELD, CSRF_HEADER, csrf_matches, new_csrf_token

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "rlhfkit_session"


class LoginRequired(Exception):
    pass


class CSRFError(svc.Forbidden):
    pass


# --------------------------------------------------------------------------- helpers


def wants_json(request: Request) -> bool:
    if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
        return True
    accept = request.headers.get("accept", "")
    ctype = request.headers.get("content-type", "")
    return ("application/json" in accept and "text/html" not in accept) or ctype.startswith("application/json")


def csrf_token(request: Request) -> str:
    tok = request.session.get("csrf")
    if not tok:
        tok = request.session["csrf"] = new_csrf_token()
    return tok


async def csrf_guard(request: Request) -> None:
    """App-wide dependency: no state-changing request without the session's token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    token = request.headers.get(CSRF_HEADER)
    ctype = request.headers.get("content-type", "")
    if not token and (ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/form-data")):
        token = (await request.form()).get(CSRF_FIELD)
    if not csrf_matches(request.session.get("csrf"), token if isinstance(token, str) else None):
        raise CSRFError("CSRF token missing or wrong: reload the page and try again")


def current_user(request: Request) -> User:
    uid = request.session.get("uid")
    if uid is None:
        raise LoginRequired()
    with Session(request.app.state.engine, expire_on_commit=False) as s:
        user = s.get(User, uid)
    if user is None or not user.active:
        request.session.clear()
        raise LoginRequired()
    return user


def admin_user(user: User = Depends(current_user)) -> User:
    if user.role != "admin":
        raise svc.Forbidden("this page is for admins only")
    return user


def annotator_user(user: User = Depends(current_user)) -> User:
    return user  # admins may annotate too (their labels count like anyone's)


def _elapsed_s(a: Assignment) -> int:
    start = as_utc(a.started_at) or as_utc(a.assigned_at)
    end = as_utc(a.completed_at) or utcnow()
    return max(0, int((end - start).total_seconds()))


def letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n]) if n <= 26 else [str(i + 1) for i in range(n)]


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


# --------------------------------------------------------------------------- the app


def create_app(db_url: str = DEFAULT_DB_URL, *, secret_key: str | None = None, run_migrations: bool = True) -> FastAPI:
    """The app for the database at ``db_url`` (migrated to the newest schema first)."""
    engine = make_engine(db_url)
    if run_migrations:
        migrate(engine)
    app = FastAPI(
        title="rlhfkit feedback",
        description="Human feedback collection for RLHF: rating, ranking and pairwise tasks.",
        openapi_url=None, docs_url=None, redoc_url=None,  # served below, for admins only
        dependencies=[Depends(csrf_guard)],
    )
    app.state.engine = engine
    app.add_middleware(
        SessionMiddleware, secret_key=secret_key or svc.secret_key(engine), session_cookie=SESSION_COOKIE,
        max_age=14 * 24 * 3600, same_site="lax", https_only=False,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(flags=svc.FLAGS)

    def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("user", None)
        ctx["csrf"] = csrf_token(request)
        ctx["request"] = request
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": "log in first (POST /login)"}, status_code=401)
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(nxt)}", status_code=303)

    @app.exception_handler(svc.FeedbackError)
    async def _feedback_error(request: Request, exc: svc.FeedbackError) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        user = None
        if request.session.get("uid") is not None and not isinstance(exc, CSRFError):
            try:
                user = current_user(request)
            except LoginRequired:
                pass
        return render(request, "error.html", exc.status_code, user=user, message=exc.message, status=exc.status_code)

    # ------------------------------------------------------------------- login

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002
        return render(request, "login.html", next=next, error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        nxt = str(form.get("next", "/"))
        user = await run_in_threadpool(svc.authenticate, engine, username, password)
        if user is None:
            if wants_json(request):
                return JSONResponse({"detail": "wrong user name or password"}, status_code=401)
            return render(request, "login.html", 401, next=nxt, error="Wrong user name or password.", username=username)
        # a fresh session (and CSRF token) at login: no fixation of a pre-login session
        request.session.clear()
        request.session["uid"] = user.id
        tok = csrf_token(request)
        if wants_json(request):
            return JSONResponse({"user": user.username, "role": user.role, "csrf_token": tok})
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # only local redirects
        return RedirectResponse(nxt, status_code=303)

    @app.post("/logout")
    def logout(request: Request, user: User = Depends(current_user)) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------- annotator pages

    @app.get("/")
    def home(user: User = Depends(current_user)) -> Response:
        return RedirectResponse("/admin" if user.role == "admin" else "/tasks", status_code=303)

    @app.get("/tasks", response_class=HTMLResponse)
    def my_tasks(request: Request, user: User = Depends(annotator_user)) -> Response:
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

    @app.get("/next")
    def next_task(user: User = Depends(annotator_user)) -> Response:
        ob = svc.onboarding_state(engine, user)
        if ob.required:
            a = svc.next_onboarding(engine, user)
            return RedirectResponse(f"/tasks/{a.task_id}" if a else "/onboarding", status_code=303)
        a = svc.next_assignment(engine, user)
        return RedirectResponse(f"/tasks/{a.task_id}" if a else "/tasks?all_done=1", status_code=303)

    @app.get("/api/next")
    def api_next(user: User = Depends(annotator_user)) -> Response:
        if svc.onboarding_state(engine, user).required:
            raise svc.Forbidden("pass onboarding first (/onboarding)")
        a = svc.next_assignment(engine, user)
        if a is None:
            return JSONResponse({"task_id": None})
        return JSONResponse({"task_id": a.task_id})

    def _task_view(user: User, task_id: int) -> dict[str, Any]:
        with Session(engine) as s:
            a = svc.get_assignment(s, user, task_id)
        if not a.display_order:
            svc.ensure_display_order(engine, a.id)
        if a.started_at is None and a.status == "pending":
            svc.mark_started(engine, a.id)
        with Session(engine) as s:
            a = s.get(Assignment, a.id)
            task = s.get(Task, task_id, options=[selectinload(Task.responses)])
            label = s.scalar(sa.select(Label).where(Label.assignment_id == a.id))
            done, total = svc.progress(s, user, a.attempt)
        by_id = {r.id: r for r in task.responses}
        order = [rid for rid in (a.display_order or []) if rid in by_id]
        names = letters(len(order))
        shown = [{"id": rid, "name": names[i], "text": by_id[rid].text} for i, rid in enumerate(order)]
        return {
            "task": task, "assignment": a, "responses": shown, "label": label,
            "position": min(done + (a.status == "pending"), total), "total": total, "elapsed": _elapsed_s(a),
            "onboarding": task.is_gold,
        }

    @app.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(request: Request, task_id: int, user: User = Depends(annotator_user)) -> Response:
        with Session(engine) as s:
            task = s.get(Task, task_id)
        if task is not None and task.status == "waiting":
            with Session(engine) as s:
                svc.get_assignment(s, user, task_id)  # access check first
            return RedirectResponse(f"/chat/{task_id}", status_code=303)
        view = _task_view(user, task_id)
        return render(request, "task.html", user=user, error=None, **view)

    @app.get("/api/tasks/{task_id}")
    def api_task(task_id: int, user: User = Depends(annotator_user)) -> Response:
        view = _task_view(user, task_id)
        t, a = view["task"], view["assignment"]
        return JSONResponse({
            "task_id": t.id, "kind": t.kind, "prompt": t.prompt, "status": a.status,
            "responses": view["responses"], "progress": [view["position"], view["total"]],
            "label": view["label"].payload if view["label"] else None,
        })

    @app.post("/tasks/{task_id}")
    async def submit(request: Request, task_id: int, user: User = Depends(annotator_user)) -> Response:
        is_json = request.headers.get("content-type", "").startswith("application/json")
        if is_json:
            try:
                raw = json.loads(await request.body())
            except json.JSONDecodeError as e:
                raise svc.Invalid(f"body is not valid JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise svc.Invalid("body must be a JSON object")
        else:
            raw = await request.form()
        try:
            res = await run_in_threadpool(svc.submit_label, engine, user, task_id, raw, not is_json)
        except svc.Invalid as e:
            if wants_json(request):
                raise
            view = await run_in_threadpool(_task_view, user, task_id)
            return render(request, "task.html", 422, user=user, error=e.message, **view)
        if wants_json(request):
            return JSONResponse({"label_id": res.label_id, "created": res.created}, status_code=201 if res.created else 200)
        if res.is_gold:
            return RedirectResponse(f"/tasks/{task_id}/gold", status_code=303)
        return RedirectResponse("/next", status_code=303)

    @app.post("/tasks/{task_id}/skip")
    async def skip(request: Request, task_id: int, user: User = Depends(annotator_user)) -> Response:
        await run_in_threadpool(svc.skip_task, engine, user, task_id)
        with Session(engine) as s:
            is_gold = s.get(Task, task_id).is_gold
        if is_gold:
            await run_in_threadpool(svc.finish_onboarding, engine, user)
        if wants_json(request):
            return JSONResponse({"skipped": task_id})
        return RedirectResponse("/next", status_code=303)

    @app.get("/tasks/{task_id}/gold", response_class=HTMLResponse)
    def gold_feedback(request: Request, task_id: int, user: User = Depends(annotator_user)) -> Response:
        view = _task_view(user, task_id)
        task, label = view["task"], view["label"]
        if not task.is_gold:
            raise svc.NotFound(f"task {task_id} is not a gold question")
        if label is None:
            raise svc.Conflict(f"answer task {task_id} first")
        st = svc.finish_onboarding(engine, user)
        names = {r["id"]: r["name"] for r in view["responses"]}
        return render(
            request, "gold.html", user=user, score=svc.gold_score(task, label.payload),
            rows=compare_rows(task.kind, label.payload, svc.gold_answer_payload(task), names), state=st, **view,
        )

    @app.get("/onboarding", response_class=HTMLResponse)
    def onboarding(request: Request, user: User = Depends(annotator_user)) -> Response:
        st = svc.onboarding_state(engine, user)
        return render(request, "onboarding.html", user=user, state=st)

    @app.post("/onboarding/start")
    async def onboarding_start(request: Request, user: User = Depends(annotator_user)) -> Response:
        st = await run_in_threadpool(svc.onboarding_state, engine, user)
        await run_in_threadpool(svc.start_onboarding, engine, user, st.attempt > 0)
        return RedirectResponse("/next", status_code=303)

    @app.get("/me", response_class=HTMLResponse)
    def me(request: Request, user: User = Depends(annotator_user)) -> Response:
        return render(request, "me.html", user=user, mine=stats.my_agreement(engine, user), state=svc.onboarding_state(engine, user))

    # ------------------------------------------------------------------- chat with the model

    @app.get("/chat", response_class=HTMLResponse)
    def chat_page(request: Request, user: User = Depends(annotator_user)) -> Response:
        return render(request, "chat.html", user=user, models=svc.active_models(engine), error=None)

    @app.post("/chat")
    async def chat_submit(request: Request, user: User = Depends(annotator_user)) -> Response:
        form = await request.form()
        models = [str(m) for m in form.getlist("model") if str(m)]
        try:
            k = int(str(form.get("num_samples", "2")))
        except ValueError:
            raise svc.Invalid("number of replies must be an integer") from None
        params = {"max_new_tokens": 64, "temperature": 1.0}
        task_id = await run_in_threadpool(svc.create_chat_task, engine, user, str(form.get("prompt", "")), models, k, params)
        if wants_json(request):
            return JSONResponse({"task_id": task_id}, status_code=201)
        return RedirectResponse(f"/chat/{task_id}", status_code=303)

    @app.get("/chat/{task_id}", response_class=HTMLResponse)
    def chat_wait(request: Request, task_id: int, user: User = Depends(annotator_user)) -> Response:
        with Session(engine) as s:
            svc.get_assignment(s, user, task_id)
            task = s.get(Task, task_id)
            jobs = s.scalars(sa.select(Job).where(Job.task_id == task_id).order_by(Job.id)).all()
        if task.status == "ready":
            return RedirectResponse(f"/tasks/{task_id}", status_code=303)
        return render(request, "chat_wait.html", user=user, task=task, jobs=jobs)

    # ------------------------------------------------------------------- admin

    @app.get("/admin", response_class=HTMLResponse)
    def admin_dashboard(request: Request, user: User = Depends(admin_user)) -> Response:
        with Session(engine) as s:
            cfg = svc.get_settings(s)
        return render(request, "admin.html", user=user, d=stats.dashboard(engine), settings=cfg, models=svc.active_models(engine))

    @app.get("/admin/dashboard.json")
    def admin_dashboard_json(user: User = Depends(admin_user)) -> Response:
        return JSONResponse(stats.dashboard(engine))

    @app.post("/admin/settings")
    async def admin_settings(request: Request, user: User = Depends(admin_user)) -> Response:
        form = await request.form()
        values = {k: form[k] for k in svc.DEFAULT_SETTINGS if k in form and str(form[k]).strip() != ""}
        await run_in_threadpool(svc.set_settings, engine, values)
        return RedirectResponse("/admin", status_code=303)

    @app.get("/admin/tasks", response_class=HTMLResponse)
    def admin_tasks(request: Request, user: User = Depends(admin_user)) -> Response:
        with Session(engine) as s:
            counts = dict(s.execute(sa.select(Label.task_id, sa.func.count()).group_by(Label.task_id)).all())
            tasks = s.scalars(sa.select(Task).options(selectinload(Task.responses)).order_by(Task.id.desc()).limit(500)).all()
            jobs = s.scalars(sa.select(Job).order_by(Job.id.desc()).limit(50)).all()
        return render(request, "admin_tasks.html", user=user, tasks=tasks, counts=counts, jobs=jobs, models=svc.active_models(engine))

    @app.post("/admin/import")
    async def admin_import(request: Request, user: User = Depends(admin_user)) -> Response:
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

    @app.post("/admin/sample")
    async def admin_sample(request: Request, user: User = Depends(admin_user)) -> Response:
        form = await request.form()
        models = [m.strip() for m in str(form.get("models", "")).replace("\n", ",").split(",") if m.strip()]
        try:
            k = int(str(form.get("num_samples", "2")))
        except ValueError:
            raise svc.Invalid("number of samples must be an integer") from None
        with Session(engine) as s:
            ids = [int(x) for x in form.getlist("task_id")] or list(s.scalars(sa.select(Task.id).where(Task.status == "waiting", Task.created_by.is_(None))))
        if not ids:
            raise svc.Invalid("no task is waiting for responses")
        await run_in_threadpool(svc.request_samples, engine, ids, models, k, {"max_new_tokens": 64, "temperature": 1.0}, user.id)
        return RedirectResponse("/admin/tasks", status_code=303)

    @app.get("/admin/users", response_class=HTMLResponse)
    def admin_users(request: Request, user: User = Depends(admin_user)) -> Response:
        with Session(engine) as s:
            users = s.scalars(sa.select(User).order_by(User.username)).all()
        return render(request, "admin_users.html", user=user, users=users, error=None)

    @app.post("/admin/users")
    async def admin_add_user(request: Request, user: User = Depends(admin_user)) -> Response:
        form = await request.form()
        await run_in_threadpool(svc.create_user, engine, str(form.get("username", "")), str(form.get("role", "annotator")), str(form.get("password", "")))
        return RedirectResponse("/admin/users", status_code=303)

    @app.get("/admin/export")
    def admin_export(kind: str = "prefs", user: User = Depends(admin_user)) -> Response:
        if kind not in exp.EXPORT_KINDS:
            raise svc.Invalid(f"export kind must be one of {', '.join(exp.EXPORT_KINDS)}")
        recs = {"prefs": exp.preference_records, "eval": exp.eval_records, "labels": exp.label_records}[kind](engine)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        return PlainTextResponse(body, media_type="application/jsonl", headers={"content-disposition": f'attachment; filename="{kind}.jsonl"'})

    # ------------------------------------------------------------------- API schema, admins only

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: User = Depends(admin_user)) -> Response:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(user: User = Depends(admin_user)) -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="rlhfkit feedback API")

    return app
