"""Figures for the admin dashboard and the annotators' own agreement page.

Labels are turned into rating matrices of shape ``(raters, items)`` (``nan`` = not rated)
and handed to :mod:`rlhfkit.agreement`:

* ``rating`` items are (task, response) pairs; values are the 1-7 scores (Krippendorff's
  alpha at the ordinal level; kappas treat the scores as nominal categories);
* ``preference`` items are pairs of responses of one task, from pairwise and ranking
  tasks; values are ``1`` (first response of the pair, by id, preferred), ``0`` (tie),
  ``-1`` (second preferred); nominal statistics.

Only real work counts (gold/onboarding answers are scored against gold instead).
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from rlhfkit import agreement as ag

from .db import Assignment, Label, Task, User, as_utc, utcnow
from .service import gold_score

Item = tuple  # (task_id, response_id) or (task_id, id_lo, id_hi)


def label_items(kind: str, payload: dict, task_id: int) -> dict[str, dict[Item, int]]:
    """The agreement items one label contributes: ``{"rating"|"preference": {item: value}}``."""
    if kind == "rating":
        return {"rating": {(task_id, it["response_id"]): int(it["score"]) for it in payload["ratings"]}}
    if kind == "pairwise":
        lo, hi = sorted(payload["shown"])
        w = payload["winner"]
        return {"preference": {(task_id, lo, hi): 0 if w is None else (1 if w == lo else -1)}}
    tier = {rid: t for t, ids in enumerate(payload["tiers"]) for rid in ids}
    out = {}
    for lo, hi in combinations(sorted(tier), 2):
        out[(task_id, lo, hi)] = (tier[lo] < tier[hi]) - (tier[lo] > tier[hi])
    return {"preference": out}


@dataclass
class Matrix:
    raters: list[str]
    items: list[Item]
    data: np.ndarray  # (R, N) float, nan = missing


def build_matrices(rows: list[tuple[str, str, dict, int]]) -> dict[str, Matrix]:
    """rows: (username, kind, payload, task_id) of real labels -> one matrix per item family."""
    values: dict[str, dict[Item, dict[str, int]]] = {"rating": defaultdict(dict), "preference": defaultdict(dict)}
    for user, kind, payload, task_id in rows:
        for fam, items in label_items(kind, payload, task_id).items():
            for item, v in items.items():
                values[fam][item][user] = v
    out = {}
    for fam, by_item in values.items():
        raters = sorted({u for d in by_item.values() for u in d})
        items = sorted(by_item)
        data = np.full((len(raters), len(items)), np.nan)
        ridx = {u: i for i, u in enumerate(raters)}
        for j, item in enumerate(items):
            for u, v in by_item[item].items():
                data[ridx[u], j] = v
        out[fam] = Matrix(raters, items, data)
    return out


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def loo_majority_agreement(data: np.ndarray) -> list[float | None]:
    """(R,) each rater's agreement with the majority of the *other* raters (leave-one-out,
    so that a rater's own vote never counts toward the majority they are compared with)."""
    out = []
    for r in range(data.shape[0]):
        others = np.delete(data, r, axis=0)
        if others.shape[0] == 0:
            out.append(None)
            continue
        ref = ag.majority_vote(others)
        out.append(_finite(ag.agreement_with_reference(data[r : r + 1], ref)[0]))
    return out


def agreement_summary(m: Matrix, level: str) -> dict[str, Any]:
    """Cohen's kappa per rater pair, Fleiss' kappa, Krippendorff's alpha, percent agreement."""
    data = m.data
    multi = (~np.isnan(data)).sum(axis=0) >= 2 if data.size else np.zeros(0, bool)
    d = data[:, multi] if data.size else data
    res: dict[str, Any] = {"n_items": int(data.shape[1]) if data.ndim == 2 else 0, "n_overlap_items": int(multi.sum())}
    pairs = []
    for i, j in combinations(range(len(m.raters)), 2):
        both = ~np.isnan(d[i]) & ~np.isnan(d[j])
        if both.sum() >= 2:
            pairs.append({"a": m.raters[i], "b": m.raters[j], "n": int(both.sum()),
                          "kappa": _finite(ag.cohen_kappa(d[i][both].tolist(), d[j][both].tolist()))})
    res["cohen_pairs"] = pairs
    ks = [p["kappa"] for p in pairs if p["kappa"] is not None]
    res["cohen_mean"] = float(np.mean(ks)) if ks else None
    # Fleiss needs the same number of ratings per item: use the most common count >= 2.
    res["fleiss"] = None
    if d.size and d.shape[1]:
        counts_per_item = (~np.isnan(d)).sum(axis=0)
        vals, freq = np.unique(counts_per_item, return_counts=True)
        k = int(vals[np.argmax(freq)])
        sel = d[:, counts_per_item == k]
        cats = sorted({v for v in sel[~np.isnan(sel)].tolist()})
        if sel.shape[1] >= 2 and len(cats) >= 1:
            table = np.array([[int(np.sum(sel[:, j] == c)) for c in cats] for j in range(sel.shape[1])])
            res["fleiss"] = _finite(ag.fleiss_kappa(table))
            res["fleiss_raters_per_item"] = k
            res["fleiss_items"] = int(sel.shape[1])
    res["alpha"] = _finite(ag.krippendorff_alpha(d, level=level)) if d.size and d.shape[1] else None
    res["alpha_level"] = level
    res["percent_agreement"] = _finite(ag.mean_pairwise_agreement(d)) if d.size and d.shape[1] else None
    res["majority"] = dict(zip(m.raters, loo_majority_agreement(d))) if d.size else {}
    return res


def _real_label_rows(s: Session) -> list[tuple[User, Label, Task]]:
    return s.execute(
        sa.select(User, Label, Task)
        .join(Label, Label.user_id == User.id)
        .join(Task, Task.id == Label.task_id)
        .join(Assignment, Assignment.id == Label.assignment_id)
        .where(Task.is_gold.is_(False), Assignment.attempt == 0)
        .order_by(Label.id)
    ).all()


def gold_scores(s: Session) -> dict[str, dict[str, Any]]:
    """username -> {"score": mean gold score of the latest attempt, "n", "attempt"}."""
    rows = s.execute(
        sa.select(User.username, Assignment.attempt, Label, Task)
        .join(Assignment, Assignment.user_id == User.id)
        .join(Label, Label.assignment_id == Assignment.id)
        .join(Task, Task.id == Assignment.task_id)
        .where(Task.is_gold.is_(True))
        .options(selectinload(Task.responses))
    ).all()
    latest: dict[str, int] = {}
    for u, att, _, _ in rows:
        latest[u] = max(latest.get(u, 0), att)
    acc: dict[str, list[float]] = defaultdict(list)
    for u, att, lab, task in rows:
        if att == latest[u]:
            acc[u].append(gold_score(task, lab.payload))
    return {u: {"score": sum(v) / len(v), "n": len(v), "attempt": latest[u]} for u, v in acc.items()}


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def dashboard(engine: sa.Engine, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the admin dashboard shows, as plain data (also served as JSON)."""
    now = now or utcnow()
    with Session(engine) as s:
        rows = _real_label_rows(s)
        users = s.scalars(sa.select(User).order_by(User.username)).all()
        task_counts = dict(s.execute(sa.select(Task.kind, sa.func.count()).where(Task.is_gold.is_(False)).group_by(Task.kind)).all())
        waiting = s.scalar(sa.select(sa.func.count()).select_from(Task).where(Task.status == "waiting"))
        n_gold = s.scalar(sa.select(sa.func.count()).select_from(Task).where(Task.is_gold.is_(True)))
        pending = s.scalar(sa.select(sa.func.count()).select_from(Assignment).where(Assignment.status == "pending", Assignment.attempt == 0))
        skipped = s.scalar(sa.select(sa.func.count()).select_from(Assignment).where(Assignment.status == "skipped", Assignment.attempt == 0))
        golds = gold_scores(s)
    times = [as_utc(lab.created_at) for _, lab, _ in rows]
    by_kind: dict[str, list[float]] = defaultdict(list)
    per_user: dict[str, dict[str, Any]] = {u.username: {"labels": 0, "durations": [], "last": None} for u in users if u.role == "annotator"}
    for u, lab, task in rows:
        by_kind[task.kind].append(lab.duration_ms / 1000)
        pu = per_user.setdefault(u.username, {"labels": 0, "durations": [], "last": None})
        pu["labels"] += 1
        pu["durations"].append(lab.duration_ms / 1000)
        t = as_utc(lab.created_at)
        pu["last"] = max(pu["last"], t) if pu["last"] else t
    days = []
    for back in range(6, -1, -1):
        day = (now - dt.timedelta(days=back)).date()
        days.append({"day": day.isoformat(), "labels": sum(t.date() == day for t in times)})
    mats = build_matrices([(u.username, t.kind, lab.payload, t.id) for u, lab, t in rows])
    agreement = {
        "rating": agreement_summary(mats["rating"], "ordinal"),
        "preference": agreement_summary(mats["preference"], "nominal"),
    }
    annotators = []
    for name, pu in sorted(per_user.items()):
        annotators.append({
            "username": name,
            "labels": pu["labels"],
            "median_seconds": _median(pu["durations"]),
            "last": pu["last"].isoformat(timespec="seconds") if pu["last"] else None,
            "gold": golds.get(name, {}).get("score"),
            "majority_rating": agreement["rating"]["majority"].get(name),
            "majority_preference": agreement["preference"]["majority"].get(name),
        })
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "throughput": {
            "labels_total": len(rows),
            "labels_last_hour": sum(t >= now - dt.timedelta(hours=1) for t in times),
            "labels_last_24h": sum(t >= now - dt.timedelta(days=1) for t in times),
            "per_day": days,
            "tasks": task_counts,
            "tasks_waiting": waiting,
            "gold_questions": n_gold,
            "assignments_pending": pending,
            "assignments_skipped": skipped,
        },
        "time_per_task": {k: {"median_seconds": _median(v), "mean_seconds": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_kind.items())},
        "annotators": annotators,
        "agreement": agreement,
    }


def my_agreement(engine: sa.Engine, user: User) -> dict[str, Any]:
    """What an annotator sees about themself: gold score and agreement with the others."""
    with Session(engine) as s:
        rows = _real_label_rows(s)
        golds = gold_scores(s)
        gold_rows = s.execute(
            sa.select(Assignment, Label, Task)
            .join(Label, Label.assignment_id == Assignment.id)
            .join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == user.id, Task.is_gold.is_(True))
            .options(selectinload(Task.responses))
            .order_by(Assignment.attempt.desc(), Task.id)
        ).all()
        gold_detail = [{"task_id": t.id, "attempt": a.attempt, "score": gold_score(t, lab.payload)} for a, lab, t in gold_rows]
    mats = build_matrices([(u.username, t.kind, lab.payload, t.id) for u, lab, t in rows])
    out: dict[str, Any] = {"gold": golds.get(user.username), "gold_detail": gold_detail, "labels": sum(u.id == user.id for u, _, _ in rows)}
    for fam, m in mats.items():
        if user.username not in m.raters:
            out[fam] = None
            continue
        r = m.raters.index(user.username)
        mine = m.data[r]
        others = np.delete(m.data, r, axis=0)
        shared = ~np.isnan(mine) & ((~np.isnan(others)).sum(axis=0) >= 1) if others.size else np.zeros_like(mine, bool)
        agree = within1 = total = 0
        for j in np.flatnonzero(shared):
            for v in others[:, j][~np.isnan(others[:, j])]:
                total += 1
                agree += v == mine[j]
                within1 += abs(v - mine[j]) <= 1
        maj = loo_majority_agreement(m.data)[r]
        out[fam] = {
            "shared_items": int(shared.sum()),
            "agreement_with_others": agree / total if total else None,
            "within_one_with_others": within1 / total if total and fam == "rating" else None,
            "agreement_with_majority": maj,
        }
    return out
