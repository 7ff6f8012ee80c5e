"""What the pipeline's stages share: the config (each method's section wired to this run), the run
directory, the task and its judge, and sampling n responses per prompt from a model of the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rlhfkit.pipeline.config import PipelineConfig, wire


class Context:
    """What the stages share: config, run dir, the task, and lazily the task's judge."""

    def __init__(self, cfg: PipelineConfig, progress: bool = True):
        from rlhfkit.precision import resolve_bf16
        from rlhfkit.tasks import load_task

        # one precision decision for every stage (auto: bf16 only where the device computes it natively)
        cfg = dataclasses.replace(cfg, bf16=resolve_bf16(cfg.bf16))
        from rlhfkit.processes import Processes

        self.run = Path(cfg.out)
        # launched as several processes (accelerate launch, torchrun): the trainers train across them; the
        # sampling stages split their prompts (part/gather); the main process alone judges and writes files
        self.processes = Processes()
        # each method's section with the paths, seed and precision of this run: what its stage runs
        self.cfg = wire(cfg, self.run, "bf16" if cfg.bf16 else "no")
        self.progress = progress and self.processes.is_main
        if self.processes.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
        self.task = load_task(cfg.task)
        self._judge = None
        self._opening: dict[str, str] = {}
        self.resume = False  # run_pipeline(resume=True): stages that keep their own progress (expert iteration) go on

    # prompts: the policy sees the task's framing of an opening; the judge judges the opening itself
    def frame(self, openings: list[str]) -> list[str]:
        out = []
        for o in openings:
            p = self.task.format_prompt(o)
            self._opening[p] = o
            out.append(p)
        return out

    def openings_of(self, prompts: list[str]) -> list[str]:
        return [self._opening.get(p, p) for p in prompts]

    def split(self, name: str, n: int | None = None, start: int = 0) -> list[str]:
        rows = self.task.prompts(name)
        return rows[start : start + n] if n else rows[start:]

    @property
    def judge(self):
        """The task's judge (``rlhfkit.tasks.Judge``), built on first use: it may load the initial model
        (the movie-review panel scores fluency under it)."""
        if self._judge is None:
            self._judge = self.task.make_judge(self.cfg.model, self.cfg.bf16, self.cfg.seed)
        return self._judge

    def gold(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.as_tensor(self.judge.gold_reward(self.openings_of(prompts), responses), dtype=torch.float32)

    @property
    def mp(self) -> str:
        return "bf16" if self.cfg.bf16 else "no"


def gen_config(ctx: Context, temperature: float):
    """The pipeline's sampling settings (one max_new_tokens and generation batch for every method)."""
    from rlhfkit.rollout import GenerationConfig

    c = ctx.cfg
    return GenerationConfig(max_new_tokens=c.max_new_tokens, temperature=temperature, batch_size=c.gen_batch_size,
                            system_prompt=c.system_prompt)


def sample(ctx: Context, model_path, prompts: list[str], n: int, temperature: float, seed: int, label: str, lm=None,
           first_prompt: int = 0):
    """n responses per prompt from the model at ``model_path`` (grouped: prompt i's are rows i*n .. i*n+n-1).
    ``prompts`` may be one process's part of a list, starting at its index ``first_prompt``: its responses are
    those the whole list's sample has for them (each row its own stream: ``sample_grouped``). None when
    ``prompts`` is empty (a process left without a part)."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.train.best_of_n import sample_grouped

    if not prompts:
        return None
    tok = load_tokenizer(model_path)
    lm = lm if lm is not None else load_frozen_lm(model_path, ctx.cfg.bf16)
    return sample_grouped(lm, tok, prompts, n, gen_config(ctx, temperature), seed, ctx.cfg.bf16, label, ctx.progress,
                          first_prompt=first_prompt)


def sample_responses(ctx: Context, model_path, prompts: list[str], n: int, temperature: float, seed: int, label: str) -> list[str]:
    """``sample(...).responses`` of all ``prompts``, each process sampling its part, gathered on every process."""
    lo, hi = ctx.processes.part(len(prompts))
    ro = sample(ctx, model_path, prompts[lo:hi], n, temperature, seed, label, first_prompt=lo)
    return ctx.processes.gather(ro.responses if ro is not None else [])


def prefetch_judging(ctx: Context, openings: list[str], responses: list[str]) -> None:
    """Called by every process with the same pairs before the main process judges them: the judge's costly
    deterministic part (the panel's fluency under the initial model) is computed split between the processes
    (``Judge.prefetch``, where the judge has one). The judging, and every random draw in it, stays whole on
    the main process."""
    prefetch = getattr(ctx.judge, "prefetch", None)
    if prefetch is not None:
        prefetch(openings, responses, ctx.processes)


def reward_scorer(ctx: Context):
    """The reward model as the pipeline uses it: its saved system prompt and token limits, and centred
    (SFT samples score mean 0), so the reported proxy reads as "better or worse than SFT"; an ensemble
    (reward.ensemble K > 1) scores with its members' mean."""
    from rlhfkit.scoring import load_reward_model

    return load_reward_model(ctx.run / "reward", batch_size=64, bf16=ctx.cfg.bf16, center=True)
