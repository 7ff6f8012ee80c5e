"""What every router shares: the engine, the current user, CSRF, JSON-or-page, rendering.

The engine and the templates live on ``request.app.state`` (set by ``create_app``), so that
routers hold no state of their own and one process can serve several apps.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Path, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from .. import service as svc
from ..db import User
from ..security import CSRF_FIELD, CSRF_HEADER, csrf_matches, new_csrf_token


class LoginRequired(Exception):
    """No logged-in user: pages redirect to ``/login``, JSON routes answer 401."""


class CSRFError(svc.Forbidden):
    """A state-changing request without the session's CSRF token (403)."""


async def get_engine(request: Request) -> sa.Engine:
    """The app's database engine (async: no thread-pool hop for an attribute lookup)."""
    return request.app.state.engine


Engine = Annotated[sa.Engine, Depends(get_engine)]  # a route parameter ``engine: Engine``
# A task id in a path: what the id column holds (a 32-bit integer on PostgreSQL), else 422.
# Without the bound /tasks/99999999999999999999 reached the database and failed there (500).
MAX_ID = 2**31 - 1
TaskId = Annotated[int, Path(ge=1, le=MAX_ID)]


def wants_json(request: Request) -> bool:
    """True for API paths and for clients that ask for, or send, JSON rather than HTML."""
    if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
        return True
    accept = request.headers.get("accept", "")
    ctype = request.headers.get("content-type", "")
    return ("application/json" in accept and "text/html" not in accept) or ctype.startswith("application/json")


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made at first use."""
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
    """The logged-in, active user of a current session; raises :class:`LoginRequired` otherwise."""
    uid = request.session.get("uid")
    if uid is None:
        raise LoginRequired()
    with Session(request.app.state.engine, expire_on_commit=False) as s:
        user = s.get(User, uid)
    # a session made before the user's last logout or password change is over
    if user is None or not user.active or request.session.get("sv") != user.session_version:
        request.session.clear()
        raise LoginRequired()
    return user


def admin_user(user: User = Depends(current_user)) -> User:
    """The current user if an admin; 403 otherwise."""
    if user.role != "admin":
        raise svc.Forbidden("this page is for admins only")
    return user


def annotator_user(user: User = Depends(current_user)) -> User:
    """The current user, whatever the role."""
    return user  # admins may annotate too (their labels count like anyone's)


def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """Render template ``name`` with the session's CSRF token and ``user`` (None unless given)."""
    ctx.setdefault("user", None)
    ctx["csrf"] = csrf_token(request)
    ctx["request"] = request
    return request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status_code)
