"""Resuming a pipeline run killed part way (``rlhfkit pipeline --resume RUN``, ``rlhfkit demo --resume``).

A stage is done when its marker, ``RUN/stages/<stage>.done``, exists: it is written (atomically) after
everything the stage writes, so a stage killed at any point, its last file half-written or not, has none
and runs again. A training stage that runs again goes on from the last complete ``checkpoint-N`` in its
folder (checkpoint folders appear whole, by one rename); the other stages are seeded and start over,
drawing what they drew before. Expert iteration keeps its own marker per round (``round-R.done``).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import yaml

from rlhfkit.pipeline.config import PipelineConfig, load_pipeline_config, wire

# stages whose section is a trainer with checkpoints, and which write the folder of the same name
TRAINED = ("sft", "reward", "dpo", "ppo", "rloo", "grpo")


def marker(run: Path, stage: str) -> Path:
    return run / "stages" / f"{stage}.done"


def resumable_config(saved: Path, out: str, layers=()) -> PipelineConfig:
    """The config of the run whose ``pipeline.yaml`` is ``saved`` (its wired values dropped, wired again
    for ``out``), under ``layers`` (flags)."""
    from rlhfkit.pipeline.config import _normalise

    raw = yaml.safe_load(saved.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{saved}: expected a mapping of option: value")
    return load_pipeline_config(None, _normalise(raw, str(saved), allow_wired=True), {"out": out}, *layers)


def config_changes(cfg: PipelineConfig, run: Path) -> list[str]:
    """What differs between ``cfg`` (as the run would use it: precision resolved, sections wired) and
    the run's saved ``pipeline.yaml``, as ``option: saved -> now``; ``stages`` may differ (a stage added
    on resume runs, and the stages after it run again)."""
    from rlhfkit.precision import resolve_bf16

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    def as_run(c: PipelineConfig) -> dict:
        c = dataclasses.replace(c, bf16=resolve_bf16(c.bf16))
        return flat(yaml.safe_load(yaml.safe_dump(dataclasses.asdict(wire(c, run, "bf16" if c.bf16 else "no")))))

    before, now = as_run(resumable_config(run / "pipeline.yaml", str(run))), as_run(dataclasses.replace(cfg, out=str(run)))
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if k != "stages" and before.get(k) != now.get(k)]


def check_resumable(cfg: PipelineConfig, run: Path) -> None:
    """Refuse to resume ``run`` with a config other than the one it was started with."""
    changes = config_changes(cfg, run)
    if changes:
        raise ValueError(f"{run / 'pipeline.yaml'}: the run was started with other settings; resume it with the same "
                         f"ones (or start a new run): " + "; ".join(changes))


def start_stage(run: Path, stage: str, later: list[str], resume: bool) -> Path | None:
    """Before ``stage`` runs: its marker and those of ``later`` stages (which may read what it rewrites)
    are removed. Returns the folder a training stage resumes from (``resume`` and a complete checkpoint
    there), else None; a training stage that starts over loses the checkpoints of an earlier run first,
    so that a later resume cannot go on from one of them."""
    for name in [stage, *later]:
        marker(run, name).unlink(missing_ok=True)
    if stage not in TRAINED:
        return None
    folder = run / stage
    checkpoints = list(folder.glob("checkpoint-*"))
    if resume and checkpoints:
        return folder
    for ckpt in checkpoints:
        shutil.rmtree(ckpt)
    return None
