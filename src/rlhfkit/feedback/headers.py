"""Security headers on every response, and the ``Secure`` flag of the session cookie.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it would buffer streamed responses) that
wraps the whole app (``app.FeedbackApp``), outside Starlette's ServerErrorMiddleware too: every
answer gets the headers, an unhandled exception's 500 included, and it sees the session cookie
being set.

``Secure`` (the browser sends the cookie over https only) follows ``RLHFKIT_HTTPS_ONLY``:
``1`` always (behind a TLS proxy that does not say ``X-Forwarded-Proto``), ``0`` never,
unset or ``auto``: when the request came over https (directly, or through a proxy whose
``X-Forwarded-Proto`` uvicorn trusts: ``--forwarded-allow-ips``). Plain-http local use keeps
working, and a cookie set over https is never sent back over http.
"""

from __future__ import annotations

import os

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTPS_ONLY_ENV = "RLHFKIT_HTTPS_ONLY"

# Scripts only from our own /static (no inline script: an injected <script> does not run).
# Inline *style attributes* are allowed: templates size bars and grids with them, and a style
# cannot run code. frame-ancestors 'none' (and X-Frame-Options for old browsers): no clickjacking.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # task ids in URLs stay on this site
}


def https_only_from_env() -> bool | None:
    """``RLHFKIT_HTTPS_ONLY`` as True (always Secure), False (never) or None (auto: per request)."""
    raw = os.environ.get(HTTPS_ONLY_ENV, "auto").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{HTTPS_ONLY_ENV} must be 1, 0 or auto, got {raw!r}")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, https_only: bool | None = None) -> None:
        self.app = app
        self.https_only = https_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = self.https_only if self.https_only is not None else scope.get("scheme") == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:  # a route may set a stricter one
                        headers[name] = value
                cookies = headers.getlist("set-cookie")
                if secure and any("; secure" not in c.lower() for c in cookies):
                    del headers["set-cookie"]
                    for c in cookies:
                        headers.append("set-cookie", c if "; secure" in c.lower() else f"{c}; secure")
            await send(message)

        await self.app(scope, receive, send_wrapper)
