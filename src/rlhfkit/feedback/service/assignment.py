"""Who judges what: per-annotator shuffles, batch allocation under the overlap cap, the
next task, access to one's own assignments."""

from __future__ import annotations

import random
import string

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from ..db import Assignment, Task, User, utcnow, write_session
from .common import Forbidden, NotFound
from .settings import get_settings


def display_order(seed: int, task: Task, user_id: int, attempt: int) -> list[int]:
    """The shuffled response ids this annotator sees (blind: sources never shown)."""
    ids = [r.id for r in task.responses]
    return random.Random(f"{seed}:{task.id}:{user_id}:{attempt}").sample(ids, len(ids))


def seen_order(a: Assignment, task: Task) -> list[int]:
    """The response ids of ``task`` in the order ``a``'s annotator sees them: the stored shuffle,
    then any response added after it was made (so that no task asks for a rating of a response
    its annotator was never shown; :func:`ensure_display_order` stores such an extension)."""
    ids = [r.id for r in task.responses]
    order = [rid for rid in (a.display_order or []) if rid in ids]
    return order + [rid for rid in ids if rid not in order]


def letters(n: int) -> list[str]:
    """Display names of n responses: A, B, C, ... (1, 2, 3, ... beyond 26)."""
    return list(string.ascii_uppercase[:n]) if n <= 26 else [str(i + 1) for i in range(n)]


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


def first_pending(s: Session, user_id: int, attempt: int | None = 0) -> Assignment | None:
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
        a = first_pending(s, user.id)
    if a is None and allocate_batch(engine, user):
        with Session(engine) as s:
            a = first_pending(s, user.id)
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
