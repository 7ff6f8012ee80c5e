"""ASGI entry for multi-process serving: ``uvicorn rlhfkit.feedback.asgi:app`` with
``RLHFKIT_FEEDBACK_DB`` set (``rlhfkit feedback serve --workers N`` does this)."""

from __future__ import annotations

import os

from .app import create_app
from .db import DEFAULT_DB_URL


def __getattr__(name: str):  # noqa: ANN202 - build the app only when uvicorn asks for it
    if name == "app":
        return create_app(os.environ.get("RLHFKIT_FEEDBACK_DB", DEFAULT_DB_URL))
    raise AttributeError(name)
