"""The model worker: samples responses for tasks, so that the web app never loads a model.

``rlhfkit feedback worker --model tiny [--model runs/ppo] --db URL`` polls the ``jobs``
table, claims the jobs for its models (a job goes to exactly one worker), samples with
the lead's :mod:`rlhfkit.rollout` and stores the responses; a task becomes ready when
its last job is done. torch is imported here, lazily, never by the web app.

A generator is any ``Callable[[model, prompts, num_samples, params, seed], list[list[str]]]``
returning ``num_samples`` texts per prompt; tests pass a fake one.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from . import service as svc
from .db import make_engine, migrate

Generator = Callable[[str, list[str], int, dict, int], list[list[str]]]


class RolloutGenerator:
    """Samples with ``rlhfkit.rollout.generate``; keeps each model loaded between jobs."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def _load(self, name: str):  # noqa: ANN202
        if name not in self._loaded:
            from rlhfkit import models

            model = models.load_causal_lm(name, trainable=False).to(models.default_device())
            model.eval()
            self._loaded[name] = (model, models.load_tokenizer(name))
        return self._loaded[name]

    def __call__(self, model: str, prompts: list[str], num_samples: int, params: dict, seed: int) -> list[list[str]]:
        import torch

        from rlhfkit import rollout

        lm, tok = self._load(model)
        cfg = rollout.GenerationConfig(
            max_new_tokens=int(params.get("max_new_tokens", 64)), temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)), batch_size=int(params.get("batch_size", 16)),
        )
        flat = [p for p in prompts for _ in range(num_samples)]  # K samples of each prompt, adjacent
        with torch.no_grad():
            ro = rollout.generate(lm, tok, flat, cfg, seed=seed)
        return [ro.responses[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def process_jobs(engine, jobs: Sequence[dict], generate: Generator, seed: int = 0) -> int:  # noqa: ANN001
    """Run claimed jobs, grouped by (model, samples, params) into batched generate calls."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for j in jobs:
        groups[(j["model"], j["num_samples"], tuple(sorted((j["params"] or {}).items())))].append(j)
    done = 0
    for (model, k, params), group in groups.items():
        try:
            outs = generate(model, [j["prompt"] for j in group], k, dict(params), seed + group[0]["id"])
            if len(outs) != len(group) or any(len(o) != k for o in outs):
                raise RuntimeError(f"generator returned {[len(o) for o in outs]} samples for {len(group)} prompts x {k}")
        except Exception:  # noqa: BLE001 - a failed model must not kill the worker; the job records why
            err = traceback.format_exc()
            for j in group:
                svc.finish_job(engine, j["id"], None, error=err)
            continue
        for j, texts in zip(group, outs):
            svc.finish_job(engine, j["id"], texts)
            done += 1
    return done


def run_worker(
    db_url: str, models: Sequence[str], generate: Generator | None = None, *, once: bool = False,
    poll_s: float = 1.0, batch: int = 16, seed: int = 0, name: str | None = None, max_seconds: float | None = None,
) -> int:
    """Serve ``models`` until interrupted (or, with ``once``, until no job is queued); returns jobs done."""
    if not models:
        raise ValueError("name at least one model (--model)")
    try:
        models = svc.check_model_names(models, max_n=None)
    except svc.Invalid as e:  # before anything is announced: pages list these names
        raise ValueError(f"--model: {e.message}") from None
    engine = make_engine(db_url)
    migrate(engine)
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    generate = generate or RolloutGenerator()
    total, t0 = 0, time.monotonic()
    try:
        while True:
            svc.heartbeat(engine, name, models)
            jobs = svc.claim_jobs(engine, models, name, limit=batch)
            if jobs:
                total += process_jobs(engine, jobs, generate, seed)
                continue
            if once or (max_seconds is not None and time.monotonic() - t0 > max_seconds):
                return total
            time.sleep(poll_s)
    finally:
        engine.dispose()
