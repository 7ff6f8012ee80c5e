"""Log in and out. A login starts a fresh session (and CSRF token): no session fixation."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import service as svc
from ..db import User
from .deps import csrf_token, current_user, get_engine, render, wants_json

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002
    return render(request, "login.html", next=next, error=None)


@router.post("/login")
async def login(request: Request, engine: sa.Engine = Depends(get_engine)) -> Response:
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


@router.post("/logout")
def logout(request: Request, user: User = Depends(current_user)) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
