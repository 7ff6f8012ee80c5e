"""Gold questions and onboarding: score an answer against the known one, open an attempt,
pass the annotator once the attempt's mean score reaches the threshold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from ..db import Assignment, Label, Task, User, utcnow, write_session
from .assignment import display_order, first_pending
from .common import Conflict
from .settings import get_settings


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
        return first_pending(s, user.id, attempt=st.attempt)
