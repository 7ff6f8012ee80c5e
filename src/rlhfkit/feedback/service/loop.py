"""What an iterated-RLHF loop (``rlhfkit loop --feedback-db URL``) does in the app's database: it
creates a round's blind tasks from the current policy's samples, counts the round's labels, reads
them back as preference pairs, and keeps its live state (round, labels in/needed, the curves so far)
in one ``settings`` row that the admin page ``/admin/loop`` shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..db import Label, Setting, utcnow, write_session
from .common import Invalid
from .tasks import TaskSpec, add_tasks

LOOP_STATE_KEY = "loop_state"  # settings row holding the running loop's state (JSON)
LOOP_KINDS = ("ranking", "pairwise")


def add_round_tasks(engine: sa.Engine, run: str, round_no: int, prompts: Sequence[str], groups: Sequence[Sequence[str]],
                    kind: str = "ranking", sources: Sequence[Sequence[str]] | None = None,
                    meta: Sequence[dict] | None = None) -> list[int]:
    """One task per prompt with its group of responses, created in the given order (the app hands out
    tasks in id order: the first given are shown first). ``kind`` pairwise takes groups of exactly 2.
    Responses are shown blind and shuffled per annotator (``display_order``); the task's meta records
    the loop's run, round and the group's index."""
    if kind not in LOOP_KINDS:
        raise Invalid(f"loop tasks are {' or '.join(LOOP_KINDS)}, got {kind!r}")
    if len(prompts) != len(groups):
        raise Invalid(f"{len(prompts)} prompts but {len(groups)} response groups")
    specs = []
    for i, (p, g) in enumerate(zip(prompts, groups)):
        if kind == "pairwise" and len(g) != 2:
            raise Invalid(f"group {i}: a pairwise task needs exactly 2 responses, got {len(g)}")
        if len(g) < 2:
            raise Invalid(f"group {i}: a ranking task needs at least 2 responses, got {len(g)}")
        src = sources[i] if sources else [f"policy_round{round_no}"] * len(g)
        specs.append(TaskSpec(kind=kind, prompt=p, responses=[(t, s, {}) for t, s in zip(g, src)],
                              meta={"loop_run": run, "loop_round": round_no, "loop_group": i, **(meta[i] if meta else {})}))
    return add_tasks(engine, specs)


def labels_in(engine: sa.Engine, task_ids: Sequence[int], per_task: int = 1) -> int:
    """Labels in for these tasks, each task counting at most ``per_task`` (the round needs
    ``per_task * len(task_ids)``)."""
    if not task_ids:
        return 0
    with Session(engine) as s:
        counts = s.execute(sa.select(Label.task_id, sa.func.count()).where(Label.task_id.in_(list(task_ids)))
                           .group_by(Label.task_id)).all()
    return sum(min(int(c), per_task) for _, c in counts)


def round_preferences(engine: sa.Engine, task_ids: Sequence[int]) -> list[dict]:
    """The labels of these tasks as preference pairs ``{prompt, chosen, rejected, annotator, ...}``
    (``export.preference_records``' rows: a ranking gives every pair across its tiers, a tie none)."""
    from ..export import preference_records

    wanted = set(task_ids)
    return [r for r in preference_records(engine, include_pairwise=True) if set(r["task_ids"]) & wanted]


def set_loop_state(engine: sa.Engine, state: dict[str, Any]) -> None:
    """Store the loop's state (JSON) with the time it was written."""
    value = {**state, "updated_at": utcnow().isoformat(timespec="seconds")}
    with write_session(engine) as s, s.begin():
        row = s.get(Setting, LOOP_STATE_KEY)
        if row is None:
            s.add(Setting(key=LOOP_STATE_KEY, value=value))
        else:
            row.value = value


def get_loop_state(engine: sa.Engine) -> dict[str, Any] | None:
    """The last state a loop wrote, or None when no loop ever ran on this database."""
    with Session(engine) as s:
        row = s.get(Setting, LOOP_STATE_KEY)
        return dict(row.value) if row is not None and isinstance(row.value, dict) else None

