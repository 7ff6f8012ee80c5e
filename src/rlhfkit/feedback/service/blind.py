"""Blind comparisons: what an annotator sees instead of the global response ids.

Global ids told an annotator which response was imported first (the method's, in a
pairwise task) and let them line up responses across tasks. An annotator sees instead an
opaque id per (task, annotator, response): the first 12 hex digits of an HMAC under a key
of this database, which nobody outside it can invert. Ids are stable (reloading a page,
answering by JSON later) and differ between annotators; the order stays the assignment's
seeded shuffle. Submissions name responses by these ids; labels keep storing global ids
(the exports and statistics read those).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import Setting, write_session
from .common import Invalid, show

BLIND_KEY = "blind_key"  # settings row: the HMAC key (made once per database)


def blind_key(engine: sa.Engine) -> str:
    """This database's key for opaque response ids, made at first use."""
    with Session(engine) as s:
        row = s.get(Setting, BLIND_KEY)
        if row is not None:
            return row.value
    try:
        with write_session(engine) as s, s.begin():
            s.add(Setting(key=BLIND_KEY, value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # another request made it first
    with Session(engine) as s:
        return s.get(Setting, BLIND_KEY).value


def opaque_ids(key: str, task_id: int, user_id: int, response_ids: Sequence[int]) -> dict[int, str]:
    """response id -> the opaque id ``user_id`` sees for it in task ``task_id``."""
    out = {}
    for rid in response_ids:
        mac = hmac.new(key.encode(), f"{task_id}:{user_id}:{rid}".encode(), hashlib.sha256).hexdigest()
        out[rid] = "r" + mac[:12]
    if len(set(out.values())) != len(out):  # 48 bits: never in practice, but then say so
        raise RuntimeError(f"task {task_id}: two responses got the same opaque id; change {BLIND_KEY}")
    return out


def map_payload(kind: str, payload: Mapping[str, Any], f: Callable[[Any], Any]) -> dict:
    """A label payload (or a submission in that shape) with every response id passed through ``f``.

    Only the places that name responses change: ``ratings[*].response_id``, ``tiers`` (or
    ``ranking``, also as a JSON string), ``winner`` (not ``"tie"``/None) and ``shown``.
    Anything of another shape is left for :func:`validate_payload` to refuse.
    """
    out = dict(payload)
    if kind == "rating" and isinstance(out.get("ratings"), list):
        out["ratings"] = [{**it, "response_id": f(it.get("response_id"))} if isinstance(it, dict) else it for it in out["ratings"]]
    if kind == "ranking":
        for k in ("tiers", "ranking"):
            tiers = out.get(k)
            if isinstance(tiers, str):
                try:
                    tiers = json.loads(tiers)
                except ValueError:
                    continue
            if isinstance(tiers, list):
                out[k] = [[f(x) for x in t] if isinstance(t, list) else f(t) for t in tiers]
    if kind == "pairwise":
        if out.get("winner") not in (None, "tie"):
            out["winner"] = f(out["winner"])
        if isinstance(out.get("shown"), list):
            out["shown"] = [f(x) for x in out["shown"]]
    return out


def from_opaque(kind: str, raw: Mapping[str, Any], rid_of: Mapping[str, int], task_id: int) -> dict:
    """A submission naming opaque ids -> the same naming response ids; unknown ids are refused."""

    def f(x: Any) -> int:
        if isinstance(x, str) and x in rid_of:
            return rid_of[x]
        raise Invalid(f"unknown response {show(x)}: not part of task {task_id} (name responses by the ids the task shows)")

    return map_payload(kind, raw, f)
