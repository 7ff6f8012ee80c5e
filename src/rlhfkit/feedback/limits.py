"""Limits that keep one request from costing the server much: the size of a request body,
and how long a request waits for a locked database before it is told to come back.

* :class:`BodyLimit` (ASGI middleware, before any route reads a body) answers 413 to a body over
  the limit before any route, form parser or CSRF check reads it: at once when
  ``Content-Length`` says so, else as soon as the streamed bytes pass the limit.
* :func:`busy_response` turns "database is locked" (SQLite past its busy timeout) or a
  PostgreSQL lock timeout into 503 with ``Retry-After``: the transaction was rolled back
  whole, so nothing is half stored and a retry is safe (submissions are idempotent).

Settings: ``create_app(max_body_bytes=..., busy_timeout_s=...)``, or the environment
variables ``RLHFKIT_FEEDBACK_MAX_BODY`` (bytes, default 1 MiB; ``/admin/import`` gets
``RLHFKIT_FEEDBACK_MAX_UPLOAD``, default 64 MiB) and ``RLHFKIT_FEEDBACK_BUSY_TIMEOUT`` (seconds, default 5).
"""

from __future__ import annotations

import os

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20
MAX_UPLOAD_BYTES = 64 << 20
UPLOAD_PATHS = ("/admin/import",)  # tasks files: the one place a large body is expected
BUSY_TIMEOUT_S = 5.0
RETRY_AFTER_S = 2


def env_number(name: str, default: float, kind: type = float) -> float:
    """A positive number from the environment; a clear error naming the variable otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: must be a {kind.__name__}") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse (413) request bodies over ``max_bytes`` (``max_upload_bytes`` on :data:`UPLOAD_PATHS`)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.app, self.max_bytes, self.max_upload_bytes = app, max_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope.get("path") in UPLOAD_PATHS else self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        msg = f"request body too large (at most {limit} bytes)"
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        path = scope.get("path", "")
        wants_json = path.startswith("/api/") or ("application/json" in accept and "text/html" not in accept)
        r: Response = JSONResponse({"detail": msg}, 413) if wants_json else PlainTextResponse(msg, 413)
        r.headers["connection"] = "close"  # the rest of the body is not read
        await r(scope, receive, send)


def is_busy(exc: BaseException) -> bool:
    """True for a lock wait that ran out: SQLite's "database is locked", PostgreSQL's lock timeout."""
    text = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text or "database table is locked" in text or "lock timeout" in text


def busy_message() -> str:
    return f"the database is busy (another process holds it): nothing was stored; try again in {RETRY_AFTER_S} s"
