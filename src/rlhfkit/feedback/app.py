"""The annotation web app: FastAPI, server-rendered pages, a little JavaScript.

``create_app(db_url)`` builds the app (and migrates the database); ``rlhfkit feedback
serve`` runs it under uvicorn. Access rules, enforced here and tested route by route:

* every route except ``/login`` and ``/static/*`` needs a logged-in user: pages redirect
  anonymous visitors to ``/login``, JSON routes (``/api/...``, ``Accept: application/json``)
  answer 401; ``/admin/*``, ``/openapi.json`` and ``/docs`` answer 403 to annotators;
* every POST carries the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), or is refused with 403 before anything else happens;
* an annotator reaches only tasks assigned to them (403 otherwise, 404 for unknown ids).

Sessions: a signed cookie (``Secure`` over https, see ``headers.py``) holding the user id and
the user's ``session_version``, so that logout and a password change end every session of the
user; the signing key comes from the environment or a 0600 file (``secretkey.py``). Failed
logins lock the account and the client address for a while (``service/throttle.py``). Every
response carries CSP, X-Frame-Options, nosniff and Referrer-Policy headers, a 500 too
(:class:`FeedbackApp`).

The routes are in ``routes/`` (one router per audience); this module assembles them and
answers errors: pages get ``error.html``, JSON clients ``{"detail": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from . import limits
from . import service as svc
from .db import DEFAULT_DB_URL, make_engine, migrate
from .headers import SecurityHeaders, https_only_from_env
from .routes import admin, annotate, auth, chat, loop
from .routes.deps import CSRFError, LoginRequired, csrf_guard, current_user, render, wants_json
from .secretkey import session_secret

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "rlhfkit_session"


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    if wants_json(request) or request.method != "GET":
        return JSONResponse({"detail": "log in first (POST /login)"}, status_code=401)
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(nxt)}", status_code=303)


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


class DatabaseBusy(svc.FeedbackError):
    status_code = 503


async def _database_error(request: Request, exc: sa.exc.OperationalError) -> Response:
    """A lock wait that ran out: 503 with Retry-After (the transaction was rolled back whole)."""
    if not limits.is_busy(exc):
        raise exc
    r = await _feedback_error(request, DatabaseBusy(limits.busy_message()))
    r.headers["retry-after"] = str(limits.RETRY_AFTER_S)
    return r


class FeedbackApp(FastAPI):
    """FastAPI with :class:`SecurityHeaders` around everything. ``add_middleware`` cannot put it
    there: Starlette's ServerErrorMiddleware (the 500 of an unhandled exception) always sits
    outside the added middlewares, and that answer went out without the headers."""

    def __init__(self, *args: object, https_only: bool | None = None, **kwargs: object) -> None:
        self.https_only = https_only
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self):  # noqa: ANN201
        return SecurityHeaders(super().build_middleware_stack(), https_only=self.https_only)


def create_app(
    db_url: str = DEFAULT_DB_URL, *, secret_key: str | None = None, run_migrations: bool = True,
    https_only: bool | None = None, login_policy: svc.LoginPolicy | None = None,
) -> FastAPI:
    """The app for the database at ``db_url`` (migrated to the newest schema first).

    ``secret_key`` signs the session cookies (default: ``secretkey.session_secret``, from the
    environment or a 0600 file); ``https_only`` sets the cookie's ``Secure`` flag always (True),
    never (False) or for https requests (None; default: env ``RLHFKIT_HTTPS_ONLY``);
    ``login_policy`` is the brute-force lockout (``service/throttle.py``).
    """
    if https_only is None:
        https_only = https_only_from_env()
    engine = make_engine(db_url, busy_timeout_s=limits.env_number("RLHFKIT_FEEDBACK_BUSY_TIMEOUT", limits.BUSY_TIMEOUT_S))
    if run_migrations:
        migrate(engine)
    app = FeedbackApp(
        https_only=https_only,  # SecurityHeaders, outermost: sees the session cookie and every 500
        title="rlhfkit feedback",
        description="Human feedback collection for RLHF: rating, ranking and pairwise tasks.",
        openapi_url=None, docs_url=None, redoc_url=None,  # served by the admin router, for admins only
        dependencies=[Depends(csrf_guard)],
    )
    app.state.engine = engine
    # innermost of the middlewares: sessions and headers wrap its 413 like any answer, and
    # no route, form parser or CSRF check reads a body before it has passed
    app.add_middleware(
        limits.BodyLimit, max_bytes=int(limits.env_number("RLHFKIT_FEEDBACK_MAX_BODY", limits.MAX_BODY_BYTES, int)),
        max_upload_bytes=int(limits.env_number("RLHFKIT_FEEDBACK_MAX_UPLOAD", limits.MAX_UPLOAD_BYTES, int)),
    )
    app.state.login_policy = login_policy or svc.LoginPolicy()
    app.add_middleware(
        SessionMiddleware, secret_key=secret_key or session_secret(db_url), session_cookie=SESSION_COOKIE,
        max_age=14 * 24 * 3600, same_site="lax", https_only=bool(https_only),
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.templates.env.globals.update(flags=svc.FLAGS)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(svc.FeedbackError, _feedback_error)
    app.add_exception_handler(sa.exc.OperationalError, _database_error)
    for module in (auth, annotate, chat, admin, loop):  # the order routes were declared in
        app.include_router(module.router)
    return app
