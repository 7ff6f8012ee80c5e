"""Judgments: validate an answer into its stored payload, store it (once), or skip.

Label payloads, as stored (always in response ids, never in display positions):

* rating:   ``{"ratings": [{"response_id": 7, "score": 1..7, "flags": ["harmful_advice"], "notes": ""}, ...]}``
  one entry per response of the task, in position order;
* ranking:  ``{"tiers": [[7], [9, 8], [10]]}`` best tier first; a tier of several ids is a tie;
* pairwise: ``{"winner": 7 | None, "shown": [8, 7]}``; ``None`` is a tie, ``shown`` the
  order the annotator saw (left, right).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from rlhfkit import rating_flags

from ..db import Label, Task, User, as_utc, utcnow, write_session
from .assignment import get_assignment, letters, seen_order
from .blind import blind_key, from_opaque, opaque_ids
from .common import MAX_TEXT, Conflict, Invalid, check_text, show

# The lecture's rating form (Ouyang et al. 2022, InstructGPT labelling interface): one vocabulary
# with the simulated annotators, defined in a module that imports nothing.
FLAGS = rating_flags.FLAGS
FLAG_KEYS = rating_flags.FLAG_NAMES
RATING_MIN, RATING_MAX = 1, 7


# ASCII digits only, and few of them: str.isdigit() also accepts "²" (int() refuses it: a 500)
# and int() refuses more than 4300 digits.
_INT = re.compile(r"[+-]?[0-9]{1,18}")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise Invalid(f"{what} must be an integer, got {show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise Invalid(f"{what} must be an integer, got {show(value)}")


def _namer(names: Mapping[int, str] | None):  # noqa: ANN202
    """How messages name responses: by the letters the annotator saw, else by id."""
    return (lambda rid: names.get(rid, str(rid))) if names else str


def normalize_tiers(tiers: Any, ids: Sequence[int], names: Mapping[int, str] | None = None) -> list[list[int]]:
    """Check that ``tiers`` (best first; a tier of several is a tie) is a permutation of ``ids``."""
    nm = _namer(names)
    if isinstance(tiers, str):
        try:
            tiers = json.loads(tiers)
        except (ValueError, RecursionError):
            raise Invalid(f"ranking must be a JSON list of tiers like [[3], [1, 2]], got {show(tiers)}") from None
    if not isinstance(tiers, list) or not tiers:
        raise Invalid("ranking must be a non-empty list of tiers, best first")
    norm: list[list[int]] = []
    for t in tiers:
        t = t if isinstance(t, list) else [t]
        if not t:
            raise Invalid("ranking has an empty tier")
        norm.append([_as_int(x, "ranked response id") for x in t])
    flat = [x for t in norm for x in t]
    want = sorted(ids)
    if sorted(flat) != want:
        dup = sorted({x for x in flat if flat.count(x) > 1})
        unknown = sorted(set(flat) - set(ids))
        missing = sorted(set(ids) - set(flat))
        ls = lambda xs: "[" + ", ".join(nm(x) if x in ids else show(x) for x in xs) + "]"  # noqa: E731
        parts = [f"repeated {ls(dup)}" if dup else "", f"unknown {ls(unknown)}" if unknown else "", f"missing {ls(missing)}" if missing else ""]
        raise Invalid(f"ranking is not a permutation of the task's responses {ls(want)}: " + ", ".join(p for p in parts if p))
    return norm


def validate_payload(task: Task, raw: Mapping[str, Any], shown: Sequence[int] | None = None, names: Mapping[int, str] | None = None) -> dict:
    """The canonical payload for ``task`` from a submitted JSON object; :class:`Invalid` otherwise.

    ``names`` (response id -> the letter the annotator saw) words the messages.
    """
    ids = [r.id for r in task.responses]
    nm = _namer(names)
    if not ids:
        raise Conflict(f"task {task.id} has no responses yet")
    if task.kind == "rating":
        items = raw.get("ratings")
        if not isinstance(items, list):
            raise Invalid('a rating needs "ratings": one {"response_id", "score", "flags", "notes"} per response')
        by_id: dict[int, dict] = {}
        for it in items:
            if not isinstance(it, dict):
                raise Invalid("each rating must be an object")
            rid = _as_int(it.get("response_id"), "response_id")
            if rid not in ids:
                raise Invalid(f"response {rid} is not part of task {task.id}")
            if rid in by_id:
                raise Invalid(f"response {nm(rid)} is rated twice")
            score = it.get("score")
            if score is None or score == "":
                raise Invalid(f"response {nm(rid)} has no rating: choose 1 to 7")
            try:
                score = _as_int(score, "score")
            except Invalid:
                raise Invalid(f"rating of response {nm(rid)} must be an integer from 1 to 7, got {show(score)}") from None
            if not RATING_MIN <= score <= RATING_MAX:
                raise Invalid(f"rating of response {nm(rid)} must be from 1 to 7, got {show(score)}")
            flags = it.get("flags") or []
            # the panel's former names ("sexual", ...) are aliases: stored under the form's names
            known = [rating_flags.canonical_flag(f) for f in flags] if isinstance(flags, list) else None
            if known is None or None in known:
                bad = [f for f, k in zip(flags, known) if k is None] if known is not None else flags
                raise Invalid(f"unknown flag(s) {show(bad, 80)} for response {nm(rid)}; known: {', '.join(FLAG_KEYS)}")
            flags = known
            notes = check_text(it.get("notes") or "", f"notes of response {nm(rid)}", MAX_TEXT)
            by_id[rid] = {"response_id": rid, "score": score, "flags": [f for f in FLAG_KEYS if f in flags], "notes": notes.strip()}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise Invalid(f"rate every response: missing rating for response(s) {', '.join(map(nm, missing))}")
        return {"ratings": [by_id[i] for i in ids]}
    if task.kind == "ranking":
        return {"tiers": normalize_tiers(raw.get("tiers", raw.get("ranking")), ids, names)}
    # pairwise
    if "winner" not in raw:
        raise Invalid('a comparison needs "winner": a response id or "tie"')
    w = raw.get("winner")
    if w in (None, "tie"):
        winner = None
    else:
        winner = _as_int(w, "winner")
        if winner not in ids:
            raise Invalid(f"winner {show(winner)} is not one of the task's responses {', '.join(map(nm, ids))}")
    return {"winner": winner, "shown": list(shown) if shown else ids}


def payload_from_form(task: Task, form: Mapping[str, Any], ext: Mapping[int, str] | None = None) -> dict:
    """Turn an HTML form (field names below) into the JSON shape :func:`validate_payload` takes.

    rating: ``score_<rid>``, ``flag_<rid>`` (multi: flag keys), ``notes_<rid>``;
    ranking: ``ranking`` (JSON tiers of response ids); pairwise: ``winner``. With ``ext``
    (response id -> the opaque id the form shows) fields and values name opaque ids.
    """
    getlist = getattr(form, "getlist", lambda k: [form[k]] if k in form else [])
    if task.kind == "rating":
        key = (lambda r: ext[r.id]) if ext else (lambda r: r.id)
        return {
            "ratings": [
                {"response_id": key(r), "score": form.get(f"score_{key(r)}"), "flags": list(getlist(f"flag_{key(r)}")), "notes": form.get(f"notes_{key(r)}", "")}
                for r in task.responses
            ]
        }
    if task.kind == "ranking":
        return {"tiers": form.get("ranking")}
    return {"winner": form.get("winner")} if "winner" in form else {}


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@dataclass
class SubmitResult:
    label_id: int
    created: bool  # False: the same answer was already stored (idempotent repeat)
    assignment_id: int
    is_gold: bool


def submit_label(
    engine: sa.Engine, user: User, task_id: int, raw: Mapping[str, Any], from_form: bool = False, opaque: bool = False
) -> SubmitResult:
    """Validate and store one judgment in one transaction.

    Refuses (nothing stored): an unknown task (404), a task not assigned to ``user`` (403),
    an invalid answer (422), a different answer to an already answered task or an answer to
    a skipped task (409). The same answer twice is accepted once and reported as a repeat.
    With ``opaque`` (the web app) ``raw`` names responses by the annotator's opaque ids
    (``blind.py``) and messages name them by their letters.
    """
    key = blind_key(engine) if opaque else None
    for _ in range(3):
        try:
            with write_session(engine) as s, s.begin():
                a = get_assignment(s, user, task_id)
                task = s.get(Task, task_id, options=[selectinload(Task.responses)])
                if task.status != "ready":
                    raise Conflict(f"task {task_id} is still waiting for its responses")
                body, names, order = raw, None, seen_order(a, task)
                if key is not None:
                    ext = opaque_ids(key, task.id, user.id, [r.id for r in task.responses])
                    body = payload_from_form(task, body, ext) if from_form else body
                    body = from_opaque(task.kind, body, {v: k for k, v in ext.items()}, task.id)
                    names = dict(zip(order, letters(len(order))))
                elif from_form:
                    body = payload_from_form(task, body)
                payload = validate_payload(task, body, order, names)
                if a.label is not None:
                    if _same(a.label.payload, payload):
                        return SubmitResult(a.label.id, False, a.id, task.is_gold)
                    raise Conflict(f"task {task_id} was already submitted with a different answer; labels are not changed")
                if a.status == "skipped":
                    raise Conflict(f"you skipped task {task_id}; it can no longer be answered")
                now = utcnow()
                start = as_utc(a.started_at) or as_utc(a.assigned_at)
                label = Label(
                    assignment_id=a.id, task_id=task_id, user_id=user.id, kind=task.kind, payload=payload,
                    duration_ms=max(0, int((now - start).total_seconds() * 1000)), created_at=now,
                )
                s.add(label)
                a.status, a.completed_at = "done", now
                s.flush()
                return SubmitResult(label.id, True, a.id, task.is_gold)
        except IntegrityError:
            continue  # the same assignment was answered concurrently: look again
    raise Conflict(f"task {task_id}: concurrent submissions, try again")


def skip_task(engine: sa.Engine, user: User, task_id: int) -> None:
    """Skip: the assignment is closed without a label and its overlap slot freed for another annotator."""
    with write_session(engine) as s, s.begin():
        a = get_assignment(s, user, task_id)
        if a.status == "done":
            raise Conflict(f"task {task_id} is already answered; it cannot be skipped")
        if a.status == "pending":
            a.status, a.slot, a.completed_at = "skipped", None, utcnow()
