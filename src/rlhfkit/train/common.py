"""The pieces every trainer shares: accelerator, seeds, optimiser, data order, metrics log, checkpoint
files with the full trainer state (optimiser, scheduler, every RNG, step, data position), progress bar.
``run.TrainingRun`` puts them together into one run's plumbing."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.atomic import atomic_files, atomic_json, atomic_path, atomic_write, read_jsonl_lines
from rlhfkit.config import save_config


def make_accelerator(cfg, grad_accum: int = 1):
    """Device placement, gradient accumulation and mixed precision through accelerate, so that the same
    loop runs on a laptop CPU, one GPU or several processes (``accelerate launch``)."""
    from accelerate import Accelerator

    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    resolve_config_precision(cfg)
    _forget_other_precision(cfg.mixed_precision)
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=grad_accum, cpu=_cpu_processes())


def _forget_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses an Accelerator whose mixed precision differs from
    the first one's. Trainers run one after another in a process (the pipeline's stages, a test session, a
    notebook) may differ: on a CPU with native bf16, ``auto`` is bf16 while a run can ask for fp32. Forget the
    old precision then; the process group (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState

    old = AcceleratorState._shared_state.get("_mixed_precision")
    if old is not None and old != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _cpu_processes() -> bool:
    """Several processes (torchrun, ``accelerate launch --multi_gpu``) on a machine without an accelerator:
    accelerate joins them into one gloo group only when told the run is on the CPU (``accelerate launch
    --cpu`` would tell it, but starts a single process unless mpirun is set up)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not (torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available())


def resolve_config_precision(cfg) -> str:
    """Turn ``cfg.mixed_precision`` 'auto' into what this machine computes fast ('bf16' or 'no'), in place,
    so that every bf16 path of the run (autocast, weights cast once for sampling, reward scoring) follows
    one decision and config.yaml records it. Idempotent."""
    from rlhfkit.precision import resolve

    cfg.mixed_precision = resolve(cfg.mixed_precision)
    return cfg.mixed_precision


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every global RNG's state (and ``generator``'s), for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Put back what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def make_optimizer(params, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0, head=None, head_lr: float | None = None):
    """AdamW over the trainable parameters; ``head`` (a module inside them) may get its own ``head_lr``:
    a freshly zero-initialised scalar head learns too slowly at a fine-tuning learning rate."""
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr else set()
    body = [p for p in params if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": body}] if body else []
    if head_ids:
        groups.append({"params": [p for p in head.parameters() if p.requires_grad], "lr": head_lr})
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    return opt, sched


class Batches:
    """Deterministic shuffled batches over ``n`` items, resumable from (epoch, position)."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = False):
        if n == 0:
            raise ValueError("no training items")
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.epoch, self.pos = 0, 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next(self) -> list[int]:
        """The next batch, wrapping into a new epoch (with a fresh order) when this one is used up."""
        order = self._order(self.epoch)
        if self.pos >= self.n or (self.drop_last and self.pos + self.batch_size > self.n):
            self.epoch, self.pos = self.epoch + 1, 0
            order = self._order(self.epoch)
        idx = order[self.pos : self.pos + self.batch_size]
        self.pos += len(idx)
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


class MetricsLog:
    """metrics.jsonl (deterministic numbers only, so identical runs write identical files),
    timings.jsonl (wall-clock splits), and TensorBoard when it is installed."""

    def __init__(self, out: Path, enabled: bool = True, resume_step: int | None = None):
        self.out, self.enabled = Path(out), enabled
        self.tb = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "timings.jsonl"):
            p = self.out / name
            if resume_step is None:
                p.unlink(missing_ok=True)
            elif p.exists():  # drop lines past the checkpoint we resume from (and a line a kill cut off)
                keep = [row for row in read_jsonl_lines(p) if row["step"] <= resume_step]
                atomic_write(p, "".join(json.dumps(row) + "\n" for row in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def log(self, step: int, metrics: dict[str, float], timings: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        clean = {"step": step, **{k: _num(v) for k, v in metrics.items()}}
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if timings:
            with (self.out / "timings.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, **{k: round(float(v), 4) for k, v in timings.items()}}) + "\n")
        if self.tb is not None:
            for k, v in {**clean, **(timings or {})}.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _num(v: Any):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


class Timer:
    """Accumulates wall-clock seconds per named phase."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.t[name] = timer.t.get(name, 0.0) + time.perf_counter() - self.start

        return _Ctx()


def progress_bar(total: int, description: str, disable: bool = False):
    """A rich progress bar whose description line shows the latest metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=disable,
        transient=False,
    )


def save_trainer_state(ckpt: Path, state: dict) -> None:
    """``ckpt``/trainer_state.pt: whatever a trainer needs to continue (see ``TrainingRun.checkpoint``)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt / "trainer_state.pt") as tmp:
        torch.save(state, tmp)


def load_trainer_state(ckpt: Path) -> dict:
    """What ``save_trainer_state`` wrote into ``ckpt``."""
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The ``checkpoint-N`` folder of ``run_dir`` with the largest N."""
    run_dir = Path(run_dir)
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no checkpoint-N folder to resume from")
    return ckpts[-1]


def write_run_info(out: Path, cfg, **extra) -> None:
    """config.yaml (``cfg``) and run_info.json (versions, ``extra``: what the run was made from) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    info = {"rlhfkit_version": __import__("rlhfkit").__version__, "torch": torch.__version__, **extra}
    if hasattr(cfg, "chat_template"):  # how a plain-string prompt reached the model: part of what the run means
        info.setdefault("chat_template", cfg.chat_template)
    atomic_json(out / "run_info.json", info)


def lora_settings(cfg):
    """``cfg``'s LoRA settings (lora_r, lora_alpha, comma-separated lora_targets), or None when lora_r is 0."""
    from rlhfkit.models import LoraSettings

    if not cfg.lora_r:
        return None
    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=[s.strip() for s in cfg.lora_targets.split(",") if s.strip()])


def save_model(accelerator, model, tokenizer, out: Path, merge: bool) -> None:
    """Plain safetensors that ``from_pretrained`` loads; a LoRA model is merged into a copy first when
    ``merge`` (final models), or saved as a peft adapter folder (checkpoints)."""
    import copy

    from rlhfkit.models import is_peft

    model = accelerator.unwrap_model(model)
    if is_peft(model) and merge:
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_files(out) as tmp:  # each file lands whole, beside what the folder already holds
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
