"""The plumbing every trainer shares, in one object, so that a trainer's file holds its algorithm:
accelerator, seeds, the checkpoint to resume from, config.yaml and run_info.json, the metrics log, the
progress bar, periodic checkpoints with the full trainer state, and the final save."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from rlhfkit.train.common import (
    Batches, MetricsLog, latest_checkpoint, load_trainer_state, lora_settings, make_accelerator, progress_bar,
    rng_state, save_trainer_state, seed_everything, set_rng_state, write_run_info,
)


def total_steps(cfg, n_items: int) -> int:
    """Optimiser steps of an epoch-based run: ``cfg.max_steps``, or ``cfg.epochs`` passes over ``n_items``
    in batches of ``cfg.batch_size * cfg.grad_accum`` (at least 1)."""
    per_epoch = math.ceil(n_items / (cfg.batch_size * cfg.grad_accum))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))


class TrainingRun:
    """One run's plumbing. Creating it makes the accelerator (``cfg.mixed_precision`` 'auto' resolved in
    place), seeds every RNG from ``cfg.seed`` and finds the checkpoint to resume from (``cfg.resume``),
    in that order, before the trainer loads anything.

    Args:
        cfg: the trainer's config; reads ``out``, ``seed``, ``mixed_precision``, ``threads`` and, when
            present, ``resume``, ``save_every`` and ``log_every``.
        name: the progress bar's label (``"SFT"``).
        grad_accum: micro-batches per optimiser step, for the accelerator.
        progress: show the progress bar (main process only).

    Then, in the trainer: load the model (``load_lm()``, or from ``resume_from / "model"`` when that is
    set); ``track()`` the optimiser, scheduler, batches and generator (restored when resuming, saved in
    checkpoints); ``loop()`` around the training loop, calling ``log()``, ``advance()`` and
    ``maybe_checkpoint()`` each step; ``finish()`` to write the final model.

    Example::

        run = TrainingRun(cfg, "SFT", cfg.grad_accum)
        model = run.load_lm()
        optimizer, scheduler = make_optimizer(model.parameters(), cfg.lr)
        model, optimizer, scheduler = run.accelerator.prepare(model, optimizer, scheduler)
        batches = Batches(len(examples), cfg.batch_size, cfg.seed)
        step = run.track(optimizer, scheduler, batches, save=lambda ckpt: model.save_pretrained(ckpt / "model"))
        total = total_steps(cfg, len(examples))
        with run.loop(total, data=cfg.data):
            while step < total:
                loss = ...  # one optimiser step on batches.next()
                step += 1
                run.log(step, {"loss": loss})
                run.advance(f"loss {loss:.3f}")
                run.maybe_checkpoint(step)
        run.finish(lambda out: model.save_pretrained(out))
    """

    def __init__(self, cfg, name: str, grad_accum: int = 1, progress: bool = True):
        self.cfg, self.name, self.show_progress = cfg, name, progress
        self.out = Path(cfg.out)
        self.accelerator = make_accelerator(cfg, grad_accum)
        seed_everything(cfg.seed)
        resume = getattr(cfg, "resume", None)
        self.resume_from: Path | None = latest_checkpoint(resume) if resume else None
        self.resumed: dict | None = None  # the trainer state read back by track(), when resuming
        self.step = 0  # the step the run starts from
        self.total: int | None = None
        self._tracked: dict = {}
        self._save: Callable[[Path], None] | None = None
        self._saved_step: int | None = None
        self.metrics: MetricsLog | None = None
        self._bar = self._task = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def load_lm(self, model: str | None = None):
        """The causal LM this run trains: the checkpoint's when resuming (a LoRA run's checkpoint is an
        adapter folder: its adapters train on), else the function ``model`` (default ``cfg.model``)
        stands for (an adapter folder merged into its base), with fresh adapters when ``cfg.lora_r``."""
        from rlhfkit.models import load_causal_lm

        lora = lora_settings(self.cfg)
        if self.resume_from:
            return load_causal_lm(self.resume_from / "model", lora=lora)
        return load_causal_lm(model or self.cfg.model, lora=lora, merge=True)

    def track(self, optimizer, scheduler=None, batches: Batches | None = None, generator: torch.Generator | None = None,
              save: Callable[[Path], None] | None = None) -> int:
        """Name what a checkpoint holds besides every global RNG: the (prepared) optimiser, the scheduler,
        the data position and a sampling generator, each optional but the optimiser; ``save(ckpt)``
        writes the model into a checkpoint folder. When resuming, puts them all back as the checkpoint
        left them (its whole state dict, extra keys included, is then ``self.resumed``). Returns the step
        the run continues from: 0 on a fresh run."""
        self._tracked = {"optimizer": optimizer, "scheduler": scheduler, "batches": batches, "generator": generator}
        self._save = save
        if self.resume_from is None:
            return self.step
        st = load_trainer_state(self.resume_from)
        optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(st["scheduler"])
        if batches is not None:
            batches.load(st["data"])
        set_rng_state(st["rng"], generator)
        self.resumed, self.step = st, st["step"]
        self._saved_step = self.step  # the checkpoint we resumed from holds this step already
        return self.step

    @contextmanager
    def loop(self, total: int, **run_info):
        """Around the training loop: writes config.yaml and run_info.json (``run_info``: what the run was
        made from), opens the metrics log (cut back to the resumed step) and the progress bar."""
        self.total = total
        if self.is_main:
            write_run_info(self.out, self.cfg, **run_info)
        self.metrics = MetricsLog(self.out, self.is_main, resume_step=self.step if self.resumed is not None else None)
        bar = progress_bar(total, self.name, disable=not (self.show_progress and self.is_main))
        try:
            with bar:
                self._bar, self._task = bar, bar.add_task(self.name, total=total, completed=self.step, info="")
                yield self
        finally:
            self.metrics.close()

    def log(self, step: int, metrics: dict, timings: dict | None = None, always: bool = False) -> None:
        """Append to metrics.jsonl (and timings.jsonl) every ``cfg.log_every`` steps and at the last one,
        or now when ``always``."""
        if always or step % getattr(self.cfg, "log_every", 1) == 0 or step == self.total:
            self.metrics.log(step, metrics, timings)

    def advance(self, info: str, steps: int = 1) -> None:
        """Move the progress bar on by ``steps`` and show ``info`` (the latest metrics) beside it."""
        self._bar.update(self._task, advance=steps, info=info)

    def maybe_checkpoint(self, step: int, last: bool = False, **extra) -> Path | None:
        """Write ``checkpoint-{step}`` every ``cfg.save_every`` steps, at the last step of the loop, and
        now when ``last`` (a run that stopped early), so that a finished run can be extended with
        ``resume``; never twice for one step. ``extra``: more trainer state (PPO's ``kl_coef``)."""
        every = getattr(self.cfg, "save_every", 0)
        if not every or step == self._saved_step or not (step % every == 0 or step == self.total or last):
            return None
        return self.checkpoint(step, **extra)

    def checkpoint(self, step: int, **extra) -> Path:
        """``checkpoint-{step}``: the model (``track``'s ``save``) and trainer_state.pt (step, optimiser,
        scheduler, data position, every RNG, ``extra``), written by the main process."""
        ckpt = self.out / f"checkpoint-{step}"
        if self.is_main:
            t = self._tracked
            if self._save is not None:
                self._save(ckpt)
            state = {"step": step, "optimizer": t["optimizer"].state_dict()}
            if t["scheduler"] is not None:
                state["scheduler"] = t["scheduler"].state_dict()
            if t["batches"] is not None:
                state["data"] = t["batches"].state()
            save_trainer_state(ckpt, {**state, "rng": rng_state(t["generator"]), **extra})
        self._saved_step = step
        return ckpt

    def finish(self, save: Callable[[Path], None]) -> Path:
        """``save(out)`` writes the final model on the main process; every process waits for it.
        Returns the run directory."""
        if self.is_main:
            save(self.out)
        self.accelerator.wait_for_everyone()
        return self.out
