"""The plumbing every trainer shares, in one object, so that a trainer's file holds its algorithm:
accelerator, seeds, the checkpoint to resume from, config.yaml and run_info.json, the metrics log, the
progress bar, periodic checkpoints with the full trainer state, and the final save."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from rlhfkit.atomic import atomic_dir, crash_point
from rlhfkit.train.common import (
    Batches, MetricsLog, latest_checkpoint, load_trainer_state, lora_settings, make_accelerator, progress_bar,
    rng_state, save_trainer_state, seed_everything, set_rng_state, write_run_info,
)


class NonFiniteError(ValueError):
    """Too many training steps in a row had a non-finite loss or reward (``max_nonfinite_steps``), or the
    weights went non-finite: the run stops rather than train on, or save, garbage."""


class NonFiniteWarning(RuntimeWarning):
    """A training step with a non-finite loss or reward was skipped (no update made)."""


def _all_finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return math.isfinite(float(value))


def total_steps(cfg, n_items: int, processes: int = 1) -> int:
    """Optimiser steps of an epoch-based run: ``cfg.max_steps``, or ``cfg.epochs`` passes over ``n_items``
    in batches of ``cfg.batch_size * cfg.grad_accum`` per process (at least 1)."""
    per_epoch = math.ceil(n_items / (cfg.batch_size * cfg.grad_accum * processes))
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
        self.nonfinite_in_a_row = 0  # updates skipped for a non-finite loss or reward since the last one made
        self.metrics: MetricsLog | None = None
        self._bar = self._task = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ---- several processes (``accelerate launch``): each its share of every global batch ----------------

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    def batches(self, n: int, batch_size: int, seed: int | None = None, drop_last: bool = False) -> Batches:
        """The global batch order over ``n`` items (seeded by ``seed``, default ``cfg.seed``): ``batch_size``
        per process, so that P processes at batch b step as one process at batch P * b (``share`` picks
        this process's part)."""
        return Batches(n, batch_size * self.processes, self.cfg.seed if seed is None else seed, drop_last=drop_last)

    def share(self, idx: list[int]) -> tuple[list[int], bool]:
        """This process's part of a global batch (every P-th item from its rank on: no overlap, nothing
        left out) and whether it holds real items. A process left without any (an epoch's last, short
        batch) gets the batch's first item to run with weight 0 (``share_weight``): every process must
        take part in each backward pass, or DDP's gradient all-reduce waits forever."""
        mine = idx[self.accelerator.process_index :: self.processes]
        return (mine, True) if mine else (idx[:1], False)

    def share_weight(self, n_local: float) -> float:
        """P * n_local / (n summed over processes): the factor on this process's mean loss (a mean over
        its n_local units: tokens, prompts) that turns DDP's mean of the processes' gradients into the
        gradient of the global batch's mean. 1 on one process."""
        if self.processes == 1:
            return 1.0
        total = self.sum(n_local)
        return self.processes * n_local / total if total else 0.0

    def sum(self, x: float) -> float:
        """``x`` summed over processes."""
        if self.processes == 1:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum")[0])

    def weighted_mean(self, metrics: dict, weight: float) -> dict:
        """Each metric's mean over processes, each process weighing ``weight`` (its share's size, 0 for a
        process that ran a stand-in item): what one process would log for the whole global batch. Keys
        must be the same on every process."""
        if self.processes == 1:
            return dict(metrics)
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64,
                         device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum").tolist()
        return {k: v / t[-1] for k, v in zip(keys, t[:-1])}

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
        # each process's own RNGs (they sample differently) when the checkpoint has as many as we are
        per_process = st.get("rng_processes")
        ok = per_process is not None and len(per_process) == self.processes
        set_rng_state(per_process[self.accelerator.process_index] if ok else st["rng"], generator)
        self.resumed, self.step = st, st["step"]
        self.nonfinite_in_a_row = st.get("nonfinite_in_a_row", 0)
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

    # ---- non-finite losses and rewards: skip the update, stop after max_nonfinite_steps in a row ------------

    def nonfinite(self, **values) -> list[str]:
        """The names of ``values`` (losses, rewards: numbers or tensors) holding a NaN or an infinity; with
        several processes, non-empty on every process when any has one (they must skip the same updates,
        or DDP's all-reduce in the next backward pass waits forever)."""
        bad = [k for k, v in values.items() if not _all_finite(v)]
        if self.processes > 1 and self.sum(float(bool(bad))) > 0 and not bad:
            bad = [f"{', '.join(values)} on another process"]
        return bad

    def record_update(self, where: str, bad: list[str]) -> bool:
        """After ``nonfinite``: True (and the count of skipped updates back to 0) when ``bad`` is empty;
        else warn naming ``where`` (the step) and what was not finite, count one more skipped update, and
        raise ``NonFiniteError`` when ``cfg.max_nonfinite_steps`` were skipped in a row. False: make no
        update (the caller drops its gradients)."""
        if not bad:
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        limit = getattr(self.cfg, "max_nonfinite_steps", 3)
        if limit and self.nonfinite_in_a_row >= limit:
            raise NonFiniteError(f"{self.out}: {self.name} stopped at {where}: non-finite {', '.join(bad)} in "
                                 f"{self.nonfinite_in_a_row} updates in a row (max_nonfinite_steps {limit}); the last "
                                 f"checkpoint holds finite weights. A lower learning rate, gradient clipping or a "
                                 f"check of the reward for NaN/inf may help.")
        warnings.warn(f"{self.out}: {self.name} {where}: non-finite {', '.join(bad)}; update skipped "
                      f"({self.nonfinite_in_a_row} in a row, the run stops at {limit})", NonFiniteWarning, stacklevel=2)
        return False

    def finite(self, where: str, **values) -> bool:
        """``record_update(where, nonfinite(**values))``: True when the update may go ahead."""
        return self.record_update(where, self.nonfinite(**values))

    def _check_weights(self, what: str) -> None:
        """Refuse to write ``what`` when a trained weight (the tracked optimiser's parameters) is not finite."""
        opt = self._tracked.get("optimizer")
        if opt is None:
            return
        if not all(bool(torch.isfinite(p).all()) for g in opt.param_groups for p in g["params"]):
            raise NonFiniteError(f"{self.out}: the weights hold NaN or infinite values; {what} not written "
                                 f"(the earlier checkpoints are untouched)")

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
            crash_point(f"step:{self.out}:{step}")
            return None
        ckpt = self.checkpoint(step, **extra)
        crash_point(f"step:{self.out}:{step}")  # where the kill -9 tests stop a run between steps
        return ckpt

    def checkpoint(self, step: int, **extra) -> Path:
        """``checkpoint-{step}``: the model (``track``'s ``save``) and trainer_state.pt (step, optimiser,
        scheduler, data position, every RNG, ``extra``), written by the main process."""
        ckpt = self.out / f"checkpoint-{step}"
        rngs = [rng_state(self._tracked["generator"])]
        if self.processes > 1:  # every process's RNGs, written by the main one
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        self._check_weights(ckpt.name)
        if self.is_main:
            t = self._tracked
            # filled under a temporary name, renamed when whole: a checkpoint-N folder is always complete
            with atomic_dir(ckpt) as tmp:
                if self._save is not None:
                    self._save(tmp)
                crash_point(f"checkpoint-half:{ckpt}")
                state = {"step": step, "optimizer": t["optimizer"].state_dict(), "nonfinite_in_a_row": self.nonfinite_in_a_row}
                if t["scheduler"] is not None:
                    state["scheduler"] = t["scheduler"].state_dict()
                if t["batches"] is not None:
                    state["data"] = t["batches"].state()
                save_trainer_state(tmp, {**state, "rng": rngs[0], "rng_processes": rngs, **extra})
        self._saved_step = step
        return ckpt

    def finish(self, save: Callable[[Path], None]) -> Path:
        """``save(out)`` writes the final model on the main process; every process waits for it.
        Returns the run directory."""
        self._check_weights(f"the final model in {self.out}")
        if self.is_main:
            save(self.out)
        self.accelerator.wait_for_everyone()
        return self.out
