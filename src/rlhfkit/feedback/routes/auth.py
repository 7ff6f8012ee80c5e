"""Log in and out. A login starts a fresh session (and CSRF token): no session fixation.

Failed logins are throttled per account and per client address (``service/throttle.py``:
429 with ``Retry-After`` while locked); logout ends every session of the user."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import service as svc
from ..service import throttle
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
    policy = request.app.state.login_policy
    keys = throttle.login_keys(username, request.client.host if request.client else None)
    wait = await run_in_threadpool(throttle.begin_attempt, engine, keys, policy)
    if wait is not None:  # locked: the password is not even checked
        msg = f"Too many failed logins: try again in {wait} s."
        headers = {"retry-after": str(wait)}
        if wants_json(request):
            return JSONResponse({"detail": msg}, status_code=429, headers=headers)
        r = render(request, "login.html", 429, next=nxt, error=msg, username=username)
        r.headers.update(headers)
        return r
    user = await run_in_threadpool(svc.authenticate, engine, username, password)
    await run_in_threadpool(throttle.end_attempt, engine, keys, policy, user is not None)
    if user is None:
        if wants_json(request):
            return JSONResponse({"detail": "wrong user name or password"}, status_code=401)
        return render(request, "login.html", 401, next=nxt, error="Wrong user name or password.", username=username)
    # a fresh session (and CSRF token) at login: no fixation of a pre-login session
    request.session.clear()
    request.session["uid"] = user.id
    request.session["sv"] = user.session_version  # current_user compares it: logout elsewhere ends this
    tok = csrf_token(request)
    if wants_json(request):
        return JSONResponse({"user": user.username, "role": user.role, "csrf_token": tok})
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"  # only local redirects
    return RedirectResponse(nxt, status_code=303)


@router.post("/logout")
async def logout(request: Request, user: User = Depends(current_user), engine: sa.Engine = Depends(get_engine)) -> Response:
    # every session of the user ends, not only this browser's: a copied or forgotten
    # cookie (another machine, a stolen one) must not outlive the logout
    await run_in_threadpool(svc.end_sessions, engine, user.id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
