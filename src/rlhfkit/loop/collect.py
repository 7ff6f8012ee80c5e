"""Where a round's preferences come from, and where the loop's state goes.

``PanelCollector``: the task's simulated judge ranks each group at once (label noise ``flip_prob``, as the
pipeline's preference stage). ``AppCollector``: the groups become blind tasks in the feedback app's
database; ``wait`` shows a progress bar until ``labels_per_task`` labels per task are in, or stops the loop
cleanly after ``timeout`` seconds (``LabelTimeout``). Both give rows ``rlhfkit reward`` reads: rankings
``{prompt, responses, ranking}`` from the panel, pairs ``{prompt, chosen, rejected}`` from the app.

``LoopState`` is what the admin page ``/admin/loop`` shows: written to OUT/loop_state.json, and into the
app's database when the loop runs with it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class LabelTimeout(TimeoutError):
    """A round's labels did not come in within the timeout; the rounds before it are kept."""


@dataclass
class Pending:
    """A round's groups handed to the collector: what ``wait`` turns into preference rows."""

    round: int
    prompts: list[str]
    groups: list[list[str]]
    sources: list[list[str]]
    rows: list[dict] | None = None  # the panel's rankings, made at once
    task_ids: list[int] | None = None  # the app's tasks
    policy_round: int = 0  # the groups are samples of pi_{policy_round} (0: SFT)


class LoopState:
    """The loop's live state: one JSON object, rewritten whole at each change."""

    def __init__(self, out: Path, engine=None, **fixed: Any):
        self.path, self.engine = out / "loop_state.json", engine
        self.state: dict[str, Any] = {"status": "running", "round": 0, "phase": "starting", "labels_in": None,
                                      "labels_needed": None, "curves": [], **fixed}

    def update(self, **changes: Any) -> dict:
        self.state.update(changes)
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")
        if self.engine is not None:
            from rlhfkit.feedback import service as svc

            svc.set_loop_state(self.engine, self.state)
        return self.state


class PanelCollector:
    """The task's simulated judge (``ctx.judge``) ranks every group, with the pipeline's label noise."""

    name = "simulated-panel"

    def __init__(self, ctx, flip_prob: float, seed: int):
        self.ctx, self.flip_prob, self.seed = ctx, flip_prob, seed

    def post(self, round_no: int, prompts: list[str], groups: list[list[str]], sources: list[list[str]]) -> Pending:
        from rlhfkit.pipeline.seeds import stream_seed

        rng = np.random.default_rng(stream_seed(self.seed, f"loop:labels:{round_no}"))
        rankings = self.ctx.judge.rank(self.ctx.openings_of(prompts), groups, flip_prob=self.flip_prob, rng=rng)
        rows = [{"prompt": p, "responses": g, "ranking": rk, "sources": s, "annotator": self.name, "round": round_no,
                 "flip_prob": self.flip_prob} for p, g, rk, s in zip(prompts, groups, rankings, sources)]
        return Pending(round_no, prompts, groups, sources, rows=rows)

    def wait(self, pending: Pending, state: LoopState) -> list[dict]:
        state.update(labels_in=len(pending.rows), labels_needed=len(pending.rows))
        return pending.rows


class AppCollector:
    """People in the feedback app: a round's groups become blind ranking (or pairwise) tasks."""

    name = "feedback-app"

    def __init__(self, engine, run: str, kind: str, labels_per_task: int, timeout: float, poll: float,
                 progress: bool = True):
        self.engine, self.run, self.kind = engine, run, kind
        self.per_task, self.timeout, self.poll, self.progress = labels_per_task, timeout, poll, progress

    def post(self, round_no: int, prompts: list[str], groups: list[list[str]], sources: list[list[str]]) -> Pending:
        from rlhfkit.feedback import service as svc

        ids = svc.add_round_tasks(self.engine, self.run, round_no, prompts, groups, self.kind, sources)
        return Pending(round_no, prompts, groups, sources, task_ids=ids)

    def wait(self, pending: Pending, state: LoopState) -> list[dict]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from rlhfkit.feedback import service as svc

        ids, needed = pending.task_ids, len(pending.task_ids) * self.per_task
        start = time.monotonic()
        n_in = svc.labels_in(self.engine, ids, self.per_task)
        state.update(phase="waiting for labels", labels_in=n_in, labels_needed=needed)
        label = f"round {pending.round}: labels in the app (tasks {ids[0]}-{ids[-1]})"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not self.progress) as bar:
            task = bar.add_task(label, total=needed, completed=n_in)
            while n_in < needed:
                if time.monotonic() - start > self.timeout:
                    state.update(status="timed_out", phase="timed out waiting for labels",
                                 message=f"round {pending.round}: {n_in} of {needed} labels after {self.timeout:g} s")
                    raise LabelTimeout(f"round {pending.round}: {n_in} of {needed} labels came in within --timeout "
                                       f"{self.timeout:g} s (tasks {ids[0]}-{ids[-1]} stay in the app); the rounds before "
                                       f"it are in {state.path.parent / 'rounds.jsonl'}")
                time.sleep(self.poll)
                now = svc.labels_in(self.engine, ids, self.per_task)
                if now != n_in:
                    n_in = now
                    bar.update(task, completed=n_in)
                    state.update(labels_in=n_in)
        rows = svc.round_preferences(self.engine, ids)
        if not rows:
            raise ValueError(f"round {pending.round}: the app's labels of tasks {ids[0]}-{ids[-1]} give no preference "
                             "(every answer a tie)")
        return [{**r, "round": pending.round} for r in rows]
