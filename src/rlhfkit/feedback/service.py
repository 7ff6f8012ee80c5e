"""What the feedback app does, as functions of a database engine/session.

The web routes, the CLI and the worker are thin shells over these functions. Every
function that writes opens exactly one transaction (``write_session``), so that a
submission is stored whole or not at all.

Label payloads, as stored (always in response ids, never in display positions):

* rating:   ``{"ratings": [{"response_id": 7, "score": 1..7, "flags": ["harmful_advice"], "notes": ""}, ...]}``
  one entry per response of the task, in position order;
* ranking:  ``{"tiers": [[7], [9, 8], [10]]}`` best tier first; a tier of several ids is a tie;
* pairwise: ``{"winner": 7 | None, "shown": [8, 7]}``; ``None`` is a tie, ``shown`` the
  order the annotator saw (left, right).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from rlhfkit import rating_flags

from .db import (
    ROLES,
    TASK_KINDS,
    Assignment,
    Job,
    Label,
    Response,
    Setting,
    Task,
    User,
    Worker,
    as_utc,
    utcnow,
    write_session,
)
from .security import hash_password, verify_password

# The lecture's rating form (Ouyang et al. 2022, InstructGPT labelling interface): one vocabulary
# with the simulated annotators, defined in a module that imports nothing.
FLAGS = rating_flags.FLAGS
FLAG_KEYS = rating_flags.FLAG_NAMES
RATING_MIN, RATING_MAX = 1, 7

DEFAULT_SETTINGS: dict[str, Any] = {
    "overlap": 2,  # annotators per task, for agreement
    "batch_size": 10,  # tasks handed to an annotator at a time
    "gold_threshold": 0.7,  # mean gold score needed to pass onboarding
    "seed": 0,  # seeds the per-annotator shuffles of responses
}
# what each setting accepts: (type, minimum, maximum)
_SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "overlap": (int, 1, 50),
    "batch_size": (int, 1, 1000),
    "gold_threshold": (float, 0.0, 1.0),
    "seed": (int, 0, 2**31 - 1),
}
MAX_TEXT = 100_000  # characters in a prompt, response or note


class FeedbackError(Exception):
    """An error with an HTTP status and a message meant for the person who caused it."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(FeedbackError):
    status_code = 404


class Forbidden(FeedbackError):
    status_code = 403


class Invalid(FeedbackError):
    status_code = 422


class Conflict(FeedbackError):
    status_code = 409


# --------------------------------------------------------------------------- settings


def get_settings(s: Session) -> dict[str, Any]:
    out = dict(DEFAULT_SETTINGS)
    for row in s.scalars(sa.select(Setting).where(Setting.key.in_(list(DEFAULT_SETTINGS)))):
        out[row.key] = row.value
    return out


def coerce_setting(key: str, value: Any) -> Any:
    """Validate one setting; raises :class:`Invalid` naming the key."""
    if key not in _SETTING_RANGES:
        raise Invalid(f"unknown setting {key!r} (known: {', '.join(_SETTING_RANGES)})")
    typ, lo, hi = _SETTING_RANGES[key]
    try:
        v = typ(value)
        if typ is int and str(value).strip() not in (str(v), f"{v}.0") and not isinstance(value, int):
            raise ValueError
    except (TypeError, ValueError):
        raise Invalid(f"setting {key!r} must be {typ.__name__}, got {value!r}") from None
    if not lo <= v <= hi:
        raise Invalid(f"setting {key!r} must be between {lo} and {hi}, got {v}")
    return v


def set_settings(engine: sa.Engine, values: Mapping[str, Any]) -> dict[str, Any]:
    clean = {k: coerce_setting(k, v) for k, v in values.items()}
    with write_session(engine) as s, s.begin():
        for k, v in clean.items():
            row = s.get(Setting, k)
            if row is None:
                s.add(Setting(key=k, value=v))
            else:
                row.value = v
    with Session(engine) as s:
        return get_settings(s)


def secret_key(engine: sa.Engine) -> str:
    """The key that signs session cookies, made once per database and kept in it.

    Keeping it in the database lets several server processes share sessions and keeps
    people logged in across restarts.
    """
    with Session(engine) as s:
        row = s.get(Setting, "secret_key")
        if row is not None:
            return row.value
    try:
        with write_session(engine) as s, s.begin():
            s.add(Setting(key="secret_key", value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # another process made it first
    with Session(engine) as s:
        return s.get(Setting, "secret_key").value


# --------------------------------------------------------------------------- users


def create_user(
    engine: sa.Engine, username: str, role: str, password: str, hasher: PasswordHasher | None = None
) -> User:
    username = username.strip()
    if not username or len(username) > 64 or any(c.isspace() for c in username):
        raise Invalid(f"user name must be 1-64 characters without spaces, got {username!r}")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < 4:
        raise Invalid("password must have at least 4 characters")
    pw_hash = hash_password(password, hasher)
    try:
        with write_session(engine) as s, s.begin():
            user = User(username=username, role=role, password_hash=pw_hash, active=True, created_at=utcnow())
            if role == "admin":
                user.onboarded_at = utcnow()  # admins do not annotate for the record
            s.add(user)
    except IntegrityError:
        raise Conflict(f"user {username!r} already exists") from None
    return user


def set_password(engine: sa.Engine, username: str, password: str, hasher: PasswordHasher | None = None) -> None:
    if len(password) < 4:
        raise Invalid("password must have at least 4 characters")
    with write_session(engine) as s, s.begin():
        user = s.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user {username!r}")
        user.password_hash = hash_password(password, hasher)


def authenticate(engine: sa.Engine, username: str, password: str) -> User | None:
    from .security import dummy_verify

    with Session(engine, expire_on_commit=False) as s:
        user = s.scalar(sa.select(User).where(User.username == username.strip()))
    if user is None or not user.active:
        dummy_verify(password)
        return None
    return user if verify_password(user.password_hash, password) else None


# --------------------------------------------------------------------------- import


@dataclass
class TaskSpec:
    """One task to create; ``responses`` are ``(text, source, meta)``; none means "to sample"."""

    kind: str
    prompt: str
    responses: list[tuple[str, str, dict]] = field(default_factory=list)
    is_gold: bool = False
    gold: Any = None
    reference_source: str | None = None
    meta: dict = field(default_factory=dict)
    where: str = ""  # file:line, for messages


class ImportFileError(Invalid):
    pass


def _err(where: str, msg: str) -> ImportFileError:
    return ImportFileError(f"{where}: {msg}")


def _parse_responses(obj: dict, where: str) -> list[tuple[str, str, dict]]:
    raw = obj.get("responses", [])
    if not isinstance(raw, list):
        raise _err(where, '"responses" must be a list')
    sources = obj.get("sources")
    if sources is not None and (not isinstance(sources, list) or len(sources) != len(raw)):
        raise _err(where, f'"sources" must be a list as long as "responses" ({len(raw)})')
    out = []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            text, source, meta = r, (sources[i] if sources else f"response_{i}"), {}
        elif isinstance(r, dict):
            text = r.get("text", r.get("response"))
            source = r.get("source", sources[i] if sources else f"response_{i}")
            meta = {k: v for k, v in r.items() if k not in ("text", "response", "source")}
        else:
            raise _err(where, f'"responses"[{i}] must be a string or an object with "text"')
        if not isinstance(text, str) or not text.strip():
            raise _err(where, f'"responses"[{i}] has no text')
        if not isinstance(source, str) or not source:
            raise _err(where, f'"responses"[{i}]: "source" must be a non-empty string')
        out.append((text, source, meta))
    return out


def _check_gold(kind: str, gold: Any, n: int, where: str) -> Any:
    """Gold answers are given in response positions (0-based, import order)."""
    if not isinstance(gold, dict):
        raise _err(where, '"gold" must be an object: {"scores": [...]}, {"ranking": [...]} or {"winner": i|"tie"}')
    if kind == "rating":
        scores = gold.get("scores")
        if not isinstance(scores, list) or len(scores) != n or not all(
            isinstance(x, int) and not isinstance(x, bool) and RATING_MIN <= x <= RATING_MAX for x in scores
        ):
            raise _err(where, f'"gold"."scores" must be {n} integers from 1 to 7')
        return {"scores": scores}
    if kind == "ranking":
        tiers = gold.get("ranking")
        try:
            tiers = _normalize_tiers(tiers, list(range(n)))
        except Invalid as e:
            raise _err(where, f'"gold"."ranking": {e.message}') from None
        return {"ranking": tiers}
    winner = gold.get("winner")
    if winner != "tie" and winner not in range(n):
        raise _err(where, f'"gold"."winner" must be 0..{n - 1} or "tie", got {winner!r}')
    return {"winner": winner}


def _expand_pairwise(spec: TaskSpec, where: str) -> list[TaskSpec]:
    """A pairwise task compares one method with the reference: split K responses into pairs."""
    if spec.is_gold or (len(spec.responses) == 2 and spec.reference_source is None):
        if len(spec.responses) != 2:
            raise _err(where, f"a pairwise task needs exactly 2 responses, got {len(spec.responses)}")
        return [spec]
    ref = spec.reference_source
    if ref is None:
        raise _err(where, 'pairwise tasks with more than 2 responses need a reference source ("reference" or --reference)')
    refs = [r for r in spec.responses if r[1] == ref]
    others = [r for r in spec.responses if r[1] != ref]
    if not refs:
        raise _err(where, f"no response from the reference source {ref!r} (sources: {sorted({r[1] for r in spec.responses})})")
    if not others:
        raise _err(where, f"only responses from the reference source {ref!r}: nothing to compare")
    out = []
    for i, r in enumerate(others):
        out.append(
            TaskSpec(
                kind="pairwise", prompt=spec.prompt, responses=[r, refs[i % len(refs)]], reference_source=ref,
                meta=dict(spec.meta), where=spec.where,
            )
        )
    return out


def parse_import_lines(
    lines: Iterable[str],
    name: str = "<input>",
    default_kind: str = "rating",
    reference: str | None = None,
    gold: bool = False,
) -> list[TaskSpec]:
    """Parse a tasks JSONL into task specs; raises :class:`ImportFileError` naming file:line:field.

    Accepted lines (see docs/feedback.md):

    * ``{"prompt", "responses": [str | {"text", "source", ...}], "sources"?, "kind"?, "reference"?, "gold"?, "meta"?}``
    * ``{"prompt", "response", "source", "sample"}`` (``rlhfkit generate`` output): lines with
      the same prompt (and kind) are grouped into one task;
    * ``{"prompt"}`` alone: a task whose responses the model worker samples later.
    """
    if default_kind not in TASK_KINDS:
        raise Invalid(f"kind must be one of {', '.join(TASK_KINDS)}, got {default_kind!r}")
    specs: list[TaskSpec] = []
    grouped: dict[tuple[str, str], TaskSpec] = {}
    for lineno, line in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(where, f"not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise _err(where, "each line must be a JSON object")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _err(where, '"prompt" must be a non-empty string')
        if len(prompt) > MAX_TEXT:
            raise _err(where, f'"prompt" is longer than {MAX_TEXT} characters')
        kind = obj.get("kind", default_kind)
        if kind not in TASK_KINDS:
            raise _err(where, f'"kind" must be one of {", ".join(TASK_KINDS)}, got {kind!r}')
        ref = obj.get("reference", reference)
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise _err(where, '"meta" must be an object')
        if "response" in obj and "responses" not in obj:
            text = obj["response"]
            if not isinstance(text, str) or not text.strip():
                raise _err(where, '"response" must be a non-empty string')
            source = obj.get("source", "unknown")
            rmeta = {k: obj[k] for k in ("sample",) if k in obj}
            key = (kind, prompt)
            if key not in grouped:
                grouped[key] = TaskSpec(kind=kind, prompt=prompt, reference_source=ref, meta=meta, where=where, is_gold=gold)
                specs.append(grouped[key])
            grouped[key].responses.append((text, str(source), rmeta))
            continue
        responses = _parse_responses(obj, where)
        is_gold = bool(obj.get("gold") is not None or gold)
        spec = TaskSpec(kind=kind, prompt=prompt, responses=responses, reference_source=ref, meta=meta, where=where, is_gold=is_gold)
        if is_gold:
            if not responses:
                raise _err(where, "a gold question needs its responses")
            if obj.get("gold") is None:
                raise _err(where, 'a gold question needs "gold" (its known answer)')
            spec.gold = _check_gold(kind, obj["gold"], len(responses), where)
        specs.append(spec)
    out: list[TaskSpec] = []
    for spec in specs:
        n = len(spec.responses)
        if spec.is_gold and spec.gold is None:
            raise _err(spec.where, 'a gold question needs "gold" (its known answer)')
        if n == 0:
            out.append(spec)  # waits for the worker
        elif spec.kind == "pairwise":
            out.extend(_expand_pairwise(spec, spec.where))
        elif spec.kind == "ranking" and n < 2:
            raise _err(spec.where, f"a ranking task needs at least 2 responses, got {n}")
        else:
            out.append(spec)
    return out


def add_tasks(
    engine: sa.Engine,
    specs: Sequence[TaskSpec],
    sample_models: Sequence[str] = (),
    num_samples: int = 2,
    params: dict | None = None,
) -> list[int]:
    """Create tasks (one transaction); tasks without responses get sampling jobs when models are given."""
    ids = []
    with write_session(engine) as s, s.begin():
        for spec in specs:
            task = Task(
                kind=spec.kind, prompt=spec.prompt, status="ready" if spec.responses else "waiting",
                is_gold=spec.is_gold, gold=spec.gold, reference_source=spec.reference_source,
                meta=spec.meta or {}, created_at=utcnow(),
            )
            s.add(task)
            s.flush()
            for pos, (text, source, meta) in enumerate(spec.responses):
                s.add(Response(task_id=task.id, position=pos, text=text, source=source, meta=meta or {}))
            if not spec.responses:
                for model in sample_models:
                    s.add(Job(task_id=task.id, model=model, num_samples=num_samples, params=params or {}, status="queued", created_at=utcnow()))
            ids.append(task.id)
    return ids


def request_samples(
    engine: sa.Engine, task_ids: Sequence[int], models: Sequence[str], num_samples: int, params: dict | None = None,
    user_id: int | None = None,
) -> list[int]:
    """Queue sampling jobs for tasks that nobody has labelled yet; returns job ids."""
    if not models:
        raise Invalid("name at least one model to sample from")
    if not 1 <= num_samples <= 16:
        raise Invalid(f"number of samples must be 1..16, got {num_samples}")
    job_ids = []
    with write_session(engine) as s, s.begin():
        for tid in task_ids:
            task = s.get(Task, tid)
            if task is None:
                raise NotFound(f"no task {tid}")
            if s.scalar(sa.select(sa.func.count()).select_from(Label).where(Label.task_id == tid)):
                raise Conflict(f"task {tid} already has labels: new responses would change what was judged")
            task.status = "waiting"
            for model in models:
                job = Job(task_id=tid, model=model, num_samples=num_samples, params=params or {}, status="queued", created_by=user_id, created_at=utcnow())
                s.add(job)
                s.flush()
                job_ids.append(job.id)
    return job_ids


# --------------------------------------------------------------------------- assignments


def display_order(seed: int, task: Task, user_id: int, attempt: int) -> list[int]:
    """The shuffled response ids this annotator sees (blind: sources never shown)."""
    ids = [r.id for r in task.responses]
    return random.Random(f"{seed}:{task.id}:{user_id}:{attempt}").sample(ids, len(ids))


def _real(q):  # noqa: ANN001, ANN202 - query filter: real work, not onboarding
    return q.where(Assignment.attempt == 0)


def progress(s: Session, user: User, attempt: int = 0) -> tuple[int, int]:
    """(done or skipped, total) among the user's assignments of this attempt (0 = real work)."""
    rows = s.execute(
        sa.select(Assignment.status, sa.func.count())
        .where(Assignment.user_id == user.id, Assignment.attempt == attempt)
        .group_by(Assignment.status)
    ).all()
    counts = dict(rows)
    total = sum(counts.values())
    return total - counts.get("pending", 0), total


def _first_pending(s: Session, user_id: int, attempt: int | None = 0) -> Assignment | None:
    q = (
        sa.select(Assignment)
        .join(Task, Task.id == Assignment.task_id)
        .where(Assignment.user_id == user_id, Assignment.status == "pending", Task.status == "ready")
        .order_by(Assignment.id)
        .limit(1)
    )
    if attempt is not None:
        q = q.where(Assignment.attempt == attempt)
    return s.scalar(q)


def _candidates(s: Session, user_id: int, overlap: int, limit: int) -> list[int]:
    """Ready, non-gold, non-chat tasks with a free overlap slot that ``user_id`` never had;
    the most assigned first."""
    slotted = (
        sa.select(Assignment.task_id, sa.func.count().label("c"))
        .where(Assignment.slot.is_not(None))
        .group_by(Assignment.task_id)
        .subquery()
    )
    mine = sa.select(Assignment.task_id).where(Assignment.user_id == user_id)
    n_slotted = sa.func.coalesce(slotted.c.c, 0)
    return list(s.scalars(
        sa.select(Task.id)
        .outerjoin(slotted, slotted.c.task_id == Task.id)
        .where(
            Task.status == "ready", Task.is_gold.is_(False), Task.created_by.is_(None),
            Task.id.not_in(mine), n_slotted < overlap,
        )
        .order_by(n_slotted.desc(), Task.id)
        .limit(limit)
    ))


def allocate_batch(engine: sa.Engine, user: User, n: int | None = None) -> int:
    """Assign up to ``n`` (default: batch_size) ready tasks to ``user``; returns how many.

    Tasks already partly assigned come first, so that overlapping labels (and so agreement
    figures) accumulate early. The overlap cap is enforced by the unique (task, slot) index:
    two annotators racing for the last slot cannot both get it.
    """
    with write_session(engine) as s, s.begin():
        if s.bind.dialect.name == "postgresql":
            # one allocation at a time (released at commit): without it, concurrent
            # annotators all chase the same first free slots. SQLite's BEGIN IMMEDIATE
            # already serialises writers.
            s.execute(sa.text("SELECT pg_advisory_xact_lock(7261002)"))
        cfg = get_settings(s)
        overlap, n = int(cfg["overlap"]), int(n or cfg["batch_size"])
        made = 0
        for _round in range(5):
            cands = _candidates(s, user.id, overlap, (n - made) * 3)
            if not cands:
                break
            # Three queries per round, whatever the batch size: under the lock above every
            # other annotator's first request waits for this one, so round trips add up.
            used: dict[int, set[int]] = {}
            for task_id, slot in s.execute(
                sa.select(Assignment.task_id, Assignment.slot).where(Assignment.task_id.in_(cands), Assignment.slot.is_not(None))
            ):
                used.setdefault(task_id, set()).add(slot)
            tasks = {t.id: t for t in s.scalars(sa.select(Task).where(Task.id.in_(cands)).options(selectinload(Task.responses)))}
            new = []
            for task_id in cands:
                if made + len(new) >= n:
                    break
                free = [k for k in range(overlap) if k not in used.get(task_id, set())]
                if free:
                    task = tasks[task_id]
                    new.append(Assignment(
                        task_id=task_id, user_id=user.id, slot=free[0], attempt=0, status="pending",
                        display_order=display_order(cfg["seed"], task, user.id, 0), assigned_at=utcnow(),
                    ))
            if not new:
                break
            try:
                with s.begin_nested():
                    s.add_all(new)
            except IntegrityError:
                # somebody else took one of these slots a moment ago (only possible without
                # the lock): place them one by one, skipping the taken ones
                placed = []
                for a in map(_fresh_copy, new):
                    try:
                        with s.begin_nested():
                            s.add(a)
                    except IntegrityError:
                        continue
                    placed.append(a)
                new = placed
            made += len(new)
            if made >= n:
                break
    return made


def _fresh_copy(a: Assignment) -> Assignment:
    return Assignment(task_id=a.task_id, user_id=a.user_id, slot=a.slot, attempt=a.attempt, status=a.status,
                      display_order=a.display_order, assigned_at=a.assigned_at)


def next_assignment(engine: sa.Engine, user: User) -> Assignment | None:
    """The user's next real task: the first pending one, else a freshly allocated batch."""
    with Session(engine) as s:
        a = _first_pending(s, user.id)
    if a is None and allocate_batch(engine, user):
        with Session(engine) as s:
            a = _first_pending(s, user.id)
    return a


def get_assignment(s: Session, user: User, task_id: int) -> Assignment:
    """The user's (latest) assignment of ``task_id``; refuses unknown tasks and others' tasks."""
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    a = s.scalar(
        sa.select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user.id)
        .order_by(Assignment.attempt.desc()).limit(1)
    )
    if a is None:
        raise Forbidden(f"task {task_id} is not assigned to you")
    return a


def mark_started(engine: sa.Engine, assignment_id: int) -> None:
    """First time the page is opened: time on task counts from here."""
    with write_session(engine) as s, s.begin():
        s.execute(
            sa.update(Assignment).where(Assignment.id == assignment_id, Assignment.started_at.is_(None)).values(started_at=utcnow())
        )


# --------------------------------------------------------------------------- validation


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise Invalid(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise Invalid(f"{what} must be an integer, got {value!r}")


def _normalize_tiers(tiers: Any, ids: Sequence[int]) -> list[list[int]]:
    """Check that ``tiers`` (best first; a tier of several is a tie) is a permutation of ``ids``."""
    if isinstance(tiers, str):
        try:
            tiers = json.loads(tiers)
        except json.JSONDecodeError:
            raise Invalid(f"ranking must be a JSON list of tiers like [[3], [1, 2]], got {tiers!r}") from None
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
        parts = [f"repeated {dup}" if dup else "", f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else ""]
        raise Invalid(f"ranking is not a permutation of the task's responses {want}: " + ", ".join(p for p in parts if p))
    return norm


def validate_payload(task: Task, raw: Mapping[str, Any], shown: Sequence[int] | None = None) -> dict:
    """The canonical payload for ``task`` from a submitted JSON object; :class:`Invalid` otherwise."""
    ids = [r.id for r in task.responses]
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
                raise Invalid(f"response {rid} is rated twice")
            score = it.get("score")
            if score in (None, ""):
                raise Invalid(f"response {rid} has no rating: choose 1 to 7")
            try:
                score = _as_int(score, "score")
            except Invalid:
                raise Invalid(f"rating of response {rid} must be an integer from 1 to 7, got {score!r}") from None
            if not RATING_MIN <= score <= RATING_MAX:
                raise Invalid(f"rating of response {rid} must be from 1 to 7, got {score}")
            flags = it.get("flags") or []
            # the panel's former names ("sexual", ...) are aliases: stored under the form's names
            known = [rating_flags.canonical_flag(f) for f in flags] if isinstance(flags, list) else None
            if known is None or None in known:
                bad = [f for f, k in zip(flags, known) if k is None] if known is not None else flags
                raise Invalid(f"unknown flag(s) {bad!r} for response {rid}; known: {', '.join(FLAG_KEYS)}")
            flags = known
            notes = it.get("notes") or ""
            if not isinstance(notes, str) or len(notes) > MAX_TEXT:
                raise Invalid(f"notes of response {rid} must be text of at most {MAX_TEXT} characters")
            by_id[rid] = {"response_id": rid, "score": score, "flags": [f for f in FLAG_KEYS if f in flags], "notes": notes.strip()}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise Invalid(f"rate every response: missing rating for response(s) {missing}")
        return {"ratings": [by_id[i] for i in ids]}
    if task.kind == "ranking":
        return {"tiers": _normalize_tiers(raw.get("tiers", raw.get("ranking")), ids)}
    # pairwise
    if "winner" not in raw:
        raise Invalid('a comparison needs "winner": a response id or "tie"')
    w = raw.get("winner")
    if w in (None, "tie"):
        winner = None
    else:
        winner = _as_int(w, "winner")
        if winner not in ids:
            raise Invalid(f"winner {winner} is not one of the task's responses {ids}")
    return {"winner": winner, "shown": list(shown) if shown else ids}


def payload_from_form(task: Task, form: Mapping[str, Any]) -> dict:
    """Turn an HTML form (field names below) into the JSON shape :func:`validate_payload` takes.

    rating: ``score_<rid>``, ``flag_<rid>`` (multi: flag keys), ``notes_<rid>``;
    ranking: ``ranking`` (JSON tiers of response ids); pairwise: ``winner``.
    """
    getlist = getattr(form, "getlist", lambda k: [form[k]] if k in form else [])
    if task.kind == "rating":
        return {
            "ratings": [
                {"response_id": r.id, "score": form.get(f"score_{r.id}"), "flags": list(getlist(f"flag_{r.id}")), "notes": form.get(f"notes_{r.id}", "")}
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


def submit_label(engine: sa.Engine, user: User, task_id: int, raw: Mapping[str, Any], from_form: bool = False) -> SubmitResult:
    """Validate and store one judgment in one transaction.

    Refuses (nothing stored): an unknown task (404), a task not assigned to ``user`` (403),
    an invalid answer (422), a different answer to an already answered task or an answer to
    a skipped task (409). The same answer twice is accepted once and reported as a repeat.
    """
    for _ in range(3):
        try:
            with write_session(engine) as s, s.begin():
                a = get_assignment(s, user, task_id)
                task = s.get(Task, task_id, options=[selectinload(Task.responses)])
                if task.status != "ready":
                    raise Conflict(f"task {task_id} is still waiting for its responses")
                payload = validate_payload(task, payload_from_form(task, raw) if from_form else raw, a.display_order)
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


# --------------------------------------------------------------------------- gold and onboarding


def _relation(pos: Mapping[int, int], i: int, j: int) -> int:
    return (pos[i] > pos[j]) - (pos[i] < pos[j])


def gold_score(task: Task, payload: dict) -> float:
    """Agreement in [0, 1] of one answer with the gold answer of ``task``.

    rating: fraction of responses rated within 1 point of gold; ranking: fraction of
    response pairs put in the same order (ties included) as gold; pairwise: 1 if same winner.
    """
    id_of = {r.position: r.id for r in task.responses}
    gold = task.gold or {}
    if task.kind == "rating":
        given = {it["response_id"]: it["score"] for it in payload["ratings"]}
        gs = gold["scores"]
        return sum(abs(given[id_of[p]] - g) <= 1 for p, g in enumerate(gs)) / len(gs)
    if task.kind == "ranking":
        gpos = {id_of[p]: t for t, tier in enumerate(gold["ranking"]) for p in tier}
        apos = {rid: t for t, tier in enumerate(payload["tiers"]) for rid in tier}
        ids = sorted(gpos)
        pairs = [(i, j) for k, i in enumerate(ids) for j in ids[k + 1 :]]
        return sum(_relation(gpos, i, j) == _relation(apos, i, j) for i, j in pairs) / len(pairs)
    gw = gold["winner"]
    return float((None if gw == "tie" else id_of[gw]) == payload["winner"])


def gold_answer_payload(task: Task) -> dict:
    """The gold answer in the stored payload shape (response ids), for showing it."""
    id_of = {r.position: r.id for r in task.responses}
    gold = task.gold or {}
    if task.kind == "rating":
        return {"ratings": [{"response_id": id_of[p], "score": g} for p, g in enumerate(gold["scores"])]}
    if task.kind == "ranking":
        return {"tiers": [[id_of[p] for p in tier] for tier in gold["ranking"]]}
    return {"winner": None if gold["winner"] == "tie" else id_of[gold["winner"]]}


@dataclass
class OnboardingState:
    required: bool  # there are gold questions and the user has not passed
    passed: bool
    attempt: int  # 0 before the first attempt
    done: int
    total: int
    score: float | None  # mean gold score of the attempt once finished
    threshold: float


def onboarding_state(engine: sa.Engine, user: User) -> OnboardingState:
    with Session(engine) as s:
        u = s.get(User, user.id)
        cfg = get_settings(s)
        thr = float(cfg["gold_threshold"])
        n_gold = s.scalar(sa.select(sa.func.count()).select_from(Task).where(Task.is_gold.is_(True), Task.status == "ready"))
        attempt = s.scalar(
            sa.select(sa.func.max(Assignment.attempt)).join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == user.id, Task.is_gold.is_(True))
        ) or 0
        if u.onboarded_at is not None or u.role == "admin" or n_gold == 0:
            return OnboardingState(False, True, attempt, 0, 0, None, thr)
        if attempt == 0:
            return OnboardingState(True, False, 0, 0, n_gold, None, thr)
        rows = s.execute(
            sa.select(Assignment, Label).join(Task, Task.id == Assignment.task_id)
            .outerjoin(Label, Label.assignment_id == Assignment.id)
            .where(Assignment.user_id == user.id, Assignment.attempt == attempt, Task.is_gold.is_(True))
        ).all()
        done = sum(a.status != "pending" for a, _ in rows)
        score = None
        if done == len(rows):
            scores = [gold_score(s.get(Task, a.task_id), lab.payload) if lab else 0.0 for a, lab in rows]
            score = sum(scores) / len(scores)
        return OnboardingState(True, False, attempt, done, len(rows), score, thr)


def start_onboarding(engine: sa.Engine, user: User, retry: bool = False) -> int:
    """Open an onboarding attempt (all gold questions, shuffled per person); returns its number."""
    st = onboarding_state(engine, user)
    if not st.required:
        raise Conflict("onboarding is already passed")
    if st.attempt and not retry:
        return st.attempt
    if st.attempt and st.done < st.total:
        raise Conflict("finish the current onboarding attempt first")
    attempt = st.attempt + 1
    with write_session(engine) as s, s.begin():
        seed = get_settings(s)["seed"]
        golds = s.scalars(
            sa.select(Task).where(Task.is_gold.is_(True), Task.status == "ready").options(selectinload(Task.responses)).order_by(Task.id)
        ).all()
        for t in golds:
            s.add(Assignment(
                task_id=t.id, user_id=user.id, slot=None, attempt=attempt, status="pending",
                display_order=display_order(seed, t, user.id, attempt), assigned_at=utcnow(),
            ))
    return attempt


def finish_onboarding(engine: sa.Engine, user: User) -> OnboardingState:
    """After the last gold answer: mark the user onboarded when the score reaches the threshold."""
    st = onboarding_state(engine, user)
    if st.required and st.score is not None and st.score >= st.threshold:
        with write_session(engine) as s, s.begin():
            s.get(User, user.id).onboarded_at = utcnow()
        return onboarding_state(engine, user)
    return st


def next_onboarding(engine: sa.Engine, user: User) -> Assignment | None:
    st = onboarding_state(engine, user)
    if not st.required or st.attempt == 0:
        return None
    with Session(engine) as s:
        return _first_pending(s, user.id, attempt=st.attempt)


# --------------------------------------------------------------------------- chat and jobs


def active_models(engine: sa.Engine, within_s: float = 120.0) -> list[str]:
    """Models served by workers seen in the last ``within_s`` seconds."""
    cutoff = utcnow() - dt.timedelta(seconds=within_s)
    with Session(engine) as s:
        models: list[str] = []
        for w in s.scalars(sa.select(Worker)):
            if as_utc(w.heartbeat_at) >= cutoff:
                models += [m for m in w.models if m not in models]
        return models


def create_chat_task(
    engine: sa.Engine, user: User, prompt: str, models: Sequence[str], num_samples: int, params: dict | None = None
) -> int:
    """An annotator's own prompt: sampled by the worker, then ranked by that annotator."""
    prompt = prompt.strip()
    if not prompt:
        raise Invalid("write a prompt first")
    if len(prompt) > MAX_TEXT:
        raise Invalid(f"the prompt is longer than {MAX_TEXT} characters")
    if not models:
        raise Invalid("choose at least one model")
    if not 1 <= num_samples <= 8:
        raise Invalid(f"number of replies per model must be 1..8, got {num_samples}")
    if num_samples * len(models) < 2:
        raise Invalid("ask for at least 2 replies in all, to rank them")
    with write_session(engine) as s, s.begin():
        task = Task(kind="ranking", prompt=prompt, status="waiting", is_gold=False, created_by=user.id, meta={"chat": True}, created_at=utcnow())
        s.add(task)
        s.flush()
        for m in models:
            s.add(Job(task_id=task.id, model=m, num_samples=num_samples, params=params or {}, status="queued", created_by=user.id, created_at=utcnow()))
        s.add(Assignment(task_id=task.id, user_id=user.id, slot=0, attempt=0, status="pending", display_order=[], assigned_at=utcnow()))
        return task.id


def ensure_display_order(engine: sa.Engine, assignment_id: int) -> None:
    """Chat tasks get their responses after being assigned: shuffle them at first view."""
    with write_session(engine) as s, s.begin():
        a = s.get(Assignment, assignment_id)
        if not a.display_order:
            task = s.get(Task, a.task_id, options=[selectinload(Task.responses)])
            a.display_order = display_order(get_settings(s)["seed"], task, a.user_id, a.attempt)


def heartbeat(engine: sa.Engine, name: str, models: Sequence[str]) -> None:
    with write_session(engine) as s, s.begin():
        w = s.get(Worker, name)
        if w is None:
            s.add(Worker(name=name, models=list(models), heartbeat_at=utcnow()))
        else:
            w.models, w.heartbeat_at = list(models), utcnow()


def claim_jobs(engine: sa.Engine, models: Sequence[str], worker: str, limit: int = 16) -> list[dict]:
    """Take up to ``limit`` queued jobs for ``models``.

    A job is claimed by exactly one worker: the conditional UPDATE succeeds for only one
    of several racing workers. Returns plain dicts ``{"id", "task_id", "model",
    "num_samples", "params", "prompt"}``.
    """
    claimed: list[int] = []
    with write_session(engine) as s, s.begin():
        ids = s.scalars(
            sa.select(Job.id).where(Job.status == "queued", Job.model.in_(list(models))).order_by(Job.id).limit(limit)
        ).all()
        for jid in ids:
            res = s.execute(
                sa.update(Job).where(Job.id == jid, Job.status == "queued").values(status="running", worker=worker, started_at=utcnow())
            )
            if res.rowcount == 1:
                claimed.append(jid)
    with Session(engine) as s:
        rows = s.execute(
            sa.select(Job, Task.prompt).join(Task, Task.id == Job.task_id).where(Job.id.in_(claimed)).order_by(Job.id)
        ).all()
        return [
            {"id": j.id, "task_id": j.task_id, "model": j.model, "num_samples": j.num_samples, "params": j.params or {}, "prompt": p}
            for j, p in rows
        ]


def finish_job(engine: sa.Engine, job_id: int, texts: Sequence[str] | None, error: str | None = None) -> None:
    """Store a job's sampled responses (or its error) and mark the task ready when its jobs are done."""
    with write_session(engine) as s, s.begin():
        job = s.get(Job, job_id)
        if job is None or job.status != "running":
            return
        job.finished_at = utcnow()
        if error is not None:
            job.status, job.error = "failed", error[-4000:]
        else:
            pos = s.scalar(sa.select(sa.func.coalesce(sa.func.max(Response.position), -1)).where(Response.task_id == job.task_id))
            for i, text in enumerate(texts or []):
                s.add(Response(task_id=job.task_id, position=pos + 1 + i, text=text if text.strip() else "(empty response)", source=job.model, meta={"sample": i, "job": job.id}))
            job.status = "done"
        s.flush()
        pending = s.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.task_id == job.task_id, Job.status.in_(["queued", "running"]))
        )
        if not pending:
            task = s.get(Task, job.task_id)
            n = s.scalar(sa.select(sa.func.count()).select_from(Response).where(Response.task_id == task.id))
            need = 1 if task.kind == "rating" else 2
            if n >= need:
                task.status = "ready"
