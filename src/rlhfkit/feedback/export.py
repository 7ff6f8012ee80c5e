"""Export labels as the files the rest of rlhfkit reads.

``prefs`` (what ``rlhfkit reward --data`` reads; TRL's standard preference shape, which TRL's
RewardTrainer reads)::

    {"prompt", "chosen", "rejected", "margin"?, "annotator", "sources": {"chosen", "rejected"},
     "kind": "ranking"|"rating", "task_ids", "label_ids", "created_at"}

* ``margin`` is on every row or on none: on every row as soon as one rating pair is exported (0 on
  ranking and pairwise pairs), on none otherwise;

* a ranking (tiers best first) gives every pair across tiers (none inside a tie);
* ratings give, per annotator and prompt, every pair of responses whose scores differ,
  with ``margin`` = the score difference (>= 1); responses rated in separate rating
  tasks of the same prompt by the same annotator are paired too;
* pairwise tasks are evaluation and gold questions are onboarding: neither is exported
  unless asked for.

``eval`` (human judgments of pairwise evaluation tasks, read by
:func:`rlhfkit.feedback.winrate.human_winrates` and ``rlhfkit eval --human``)::

    {"prompt", "method", "reference", "method_response", "reference_response",
     "outcome": 1.0 | 0.5 | 0.0 (method wins | tie | reference wins), "winner": "method"|"tie"|"reference",
     "shown": ["method", "reference"] (left to right, as the annotator saw them),
     "annotator", "task_id", "label_id", "created_at"}

``labels``: every label with its task and responses (a complete, lossless dump).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from .db import Assignment, Label, Task, User, as_utc

EXPORT_KINDS = ("prefs", "eval", "labels")


def _label_rows(s: Session, kinds: tuple[str, ...], include_gold: bool) -> list[tuple[str, Label, Task, int]]:
    q = (
        sa.select(User.username, Label, Task, Assignment.attempt)
        .join(Label, Label.user_id == User.id)
        .join(Task, Task.id == Label.task_id)
        .join(Assignment, Assignment.id == Label.assignment_id)
        .where(Task.kind.in_(kinds))
        .options(selectinload(Task.responses))
        .order_by(Label.id)
    )
    if not include_gold:
        q = q.where(Task.is_gold.is_(False))
    return list(s.execute(q).all())


def _ts(label: Label) -> str:
    return as_utc(label.created_at).isoformat(timespec="seconds")


def preference_records(engine: sa.Engine, include_gold: bool = False, include_pairwise: bool = False) -> Iterator[dict]:
    """Preference pairs (see module docstring), rankings first, then ratings, in label order. ``margin``
    is on every row or on none: TRL's RewardTrainer fails on a margin column with nulls, so when any
    rating pair is exported, ranking and pairwise pairs get margin 0 (no strength given, as rlhfkit reads
    a missing margin)."""
    recs = list(_preference_pairs(engine, include_gold, include_pairwise))
    if any("margin" in r for r in recs):
        recs = [r if "margin" in r else _with_margin(r, 0.0) for r in recs]
    yield from recs


def _with_margin(rec: dict, margin: float) -> dict:
    """``rec`` with ``margin`` right after ``rejected`` (where rating pairs have it)."""
    out = {}
    for k, v in rec.items():
        out[k] = v
        if k == "rejected":
            out["margin"] = margin
    return out


def _preference_pairs(engine: sa.Engine, include_gold: bool, include_pairwise: bool) -> Iterator[dict]:
    kinds = ("ranking", "rating") + (("pairwise",) if include_pairwise else ())
    with Session(engine) as s:
        rows = _label_rows(s, kinds, include_gold)
    rated: dict[tuple[str, str], list[tuple[Any, Label, Task, dict]]] = defaultdict(list)
    for user, label, task, _ in rows:
        resp = {r.id: r for r in task.responses}
        if task.kind == "ranking":
            tiers = label.payload["tiers"]
            for hi, lo in combinations(range(len(tiers)), 2):
                for w in tiers[hi]:
                    for l in tiers[lo]:
                        if resp[w].text == resp[l].text:
                            continue  # identical texts carry no preference
                        yield {
                            "prompt": task.prompt, "chosen": resp[w].text, "rejected": resp[l].text,
                            "annotator": user, "sources": {"chosen": resp[w].source, "rejected": resp[l].source},
                            "kind": "ranking", "task_ids": [task.id], "label_ids": [label.id], "created_at": _ts(label),
                        }
        elif task.kind == "pairwise":
            win = label.payload["winner"]
            if win is None:
                continue
            lose = next(r for r in resp if r != win)
            yield {
                "prompt": task.prompt, "chosen": resp[win].text, "rejected": resp[lose].text, "annotator": user,
                "sources": {"chosen": resp[win].source, "rejected": resp[lose].source},
                "kind": "pairwise", "task_ids": [task.id], "label_ids": [label.id], "created_at": _ts(label),
            }
        else:
            for it in label.payload["ratings"]:
                rated[(user, task.prompt)].append((resp[it["response_id"]], label, task, it))
    for (user, prompt), items in rated.items():
        for a, b in combinations(items, 2):
            (ra, la, ta, ia), (rb, lb, tb, ib) = (a, b) if a[3]["score"] >= b[3]["score"] else (b, a)
            margin = ia["score"] - ib["score"]
            if margin == 0 or ra.text == rb.text:
                continue
            yield {
                "prompt": prompt, "chosen": ra.text, "rejected": rb.text, "margin": float(margin),
                "annotator": user, "sources": {"chosen": ra.source, "rejected": rb.source},
                "scores": {"chosen": ia["score"], "rejected": ib["score"]},
                "flags": {"chosen": ia["flags"], "rejected": ib["flags"]},
                "kind": "rating", "task_ids": sorted({ta.id, tb.id}), "label_ids": sorted({la.id, lb.id}),
                "created_at": max(_ts(la), _ts(lb)),
            }


def eval_records(engine: sa.Engine) -> Iterator[dict]:
    """One record per human judgment of a pairwise task that names a reference source."""
    with Session(engine) as s:
        rows = _label_rows(s, ("pairwise",), include_gold=False)
    for user, label, task, _ in rows:
        ref = task.reference_source
        refs = [r for r in task.responses if r.source == ref]
        meths = [r for r in task.responses if r.source != ref]
        if ref is None or len(refs) != 1 or len(meths) != 1:
            continue  # no reference named: not an evaluation against a baseline
        m, r = meths[0], refs[0]
        w = label.payload["winner"]
        outcome = 0.5 if w is None else (1.0 if w == m.id else 0.0)
        yield {
            "prompt": task.prompt, "method": m.source, "reference": ref,
            "method_response": m.text, "reference_response": r.text,
            "outcome": outcome, "winner": {1.0: "method", 0.5: "tie", 0.0: "reference"}[outcome],
            "shown": ["method" if rid == m.id else "reference" for rid in label.payload.get("shown", [])],
            "annotator": user, "task_id": task.id, "label_id": label.id, "created_at": _ts(label),
        }


def label_records(engine: sa.Engine) -> Iterator[dict]:
    """Every label, gold and onboarding included, with its task: a lossless dump."""
    with Session(engine) as s:
        rows = _label_rows(s, ("rating", "ranking", "pairwise"), include_gold=True)
    for user, label, task, attempt in rows:
        yield {
            "label_id": label.id, "task_id": task.id, "kind": task.kind, "prompt": task.prompt,
            "responses": [{"id": r.id, "position": r.position, "text": r.text, "source": r.source} for r in task.responses],
            "is_gold": task.is_gold, "attempt": attempt, "reference": task.reference_source,
            "annotator": user, "payload": label.payload, "duration_ms": label.duration_ms, "created_at": _ts(label),
        }


def jsonl_line(rec: dict) -> str:
    """One JSONL line, UTF-8 text as is; a record whose text UTF-8 cannot encode (a lone
    surrogate, stored before the app refused them) is written with ``\\uXXXX`` escapes, which
    is valid JSON and reads back the same, instead of failing the whole export."""
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec, ensure_ascii=True)
    return line + "\n"


def export(engine: sa.Engine, path: str | Path, kind: str = "prefs", include_gold: bool = False) -> int:
    """Write ``kind`` records to ``path`` (JSONL); returns the number of lines.

    Written to ``<path>.tmp`` and renamed: a reader never sees half a file, and a failed
    export removes its ``.tmp`` (and leaves an earlier ``path`` as it was).
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"export kind must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    recs = {"prefs": lambda: preference_records(engine, include_gold), "eval": lambda: eval_records(engine), "labels": lambda: label_records(engine)}[kind]()
    n = 0
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in recs:
                f.write(jsonl_line(rec))
                n += 1
        tmp.replace(path)  # never leave a half-written file where a trainer could read it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
