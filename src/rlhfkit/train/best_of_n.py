"""Best-of-n (rejection sampling): draw n responses per prompt from a policy and keep the one the reward
scores highest. No gradient step; its cost is n samples per prompt at inference time, and its KL to the
sampling policy is analytic: log n - (n-1)/n (Stiennon et al. 2020; Gao et al. 2022).

The reward model scores every candidate as finished (an EOS appended); a candidate cut off at
``max_new_tokens`` loses ``missing_eos_penalty``, as it does in PPO, so selection and optimisation follow
one rule. ``rlhfkit best-of-n`` writes, in its run directory:

  candidates.jsonl  per prompt: every candidate, its score, whether it ended, the penalised score, the pick
  responses.jsonl   per prompt: {prompt, response}, the picked candidate
  summary.json      n, prompts, mean picked score, share of picked candidates that ended, KL bound
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhfkit.atomic import atomic_json
from rlhfkit.config import BestOfNConfig
from rlhfkit.data import load_prompts, write_jsonl
from rlhfkit.rollout import GenerationConfig, Rollout, generate, row_stream
from rlhfkit.scoring import RewardFn, as_scores, load_reward
from rlhfkit.train.common import progress_bar, resolve_config_precision, seed_everything, write_run_info


def sample_grouped(lm, tokenizer, prompts: list[str], n: int, gen: GenerationConfig, seed: int, bf16: bool = False,
                   label: str = "sampling", progress: bool = True, first_prompt: int = 0) -> Rollout:
    """``n`` responses per prompt, grouped: prompt i's responses are rows ``i*n .. i*n+n-1``.

    Each row draws from its own stream (``rollout.row_stream(seed, row)``, row counted from ``first_prompt * n``),
    so a prompt's responses do not depend on the batch it is sampled in: a part of the prompts sampled with
    ``first_prompt`` = its start (one process's share) draws what the whole sample draws for them.

    Args:
        lm, tokenizer: the policy (a causal LM, in eval mode or not) and its tokenizer.
        prompts: plain-string prompts (chat-templated by ``gen.chat_template``).
        n: responses per prompt.
        gen: sampling settings (``gen.batch_size`` sequences per batch).
        seed: seed of the sampling stream (the same seed gives the same responses).
        bf16: sample under bf16 autocast.
        label: the progress bar's text; ``progress=False`` hides it.
        first_prompt: the index of ``prompts[0]`` in the whole list these prompts are a part of.
    """
    expanded = [p for p in prompts for _ in range(n)]
    streams = [row_stream(seed, first_prompt * n + k) for k in range(len(expanded))]
    with progress_bar(len(expanded), label, disable=not progress) as bar:
        task = bar.add_task(label, total=len(expanded), info="")
        return generate(lm, tokenizer, expanded, gen, generator=streams, bf16=bf16, progress=lambda k: bar.update(task, advance=k))


@dataclass
class Drawn:
    """Grouped samples gathered from several processes (``sample_grouped_parts``): what ``select_best`` reads
    of a Rollout. responses: B texts; ended: (B,) True where EOS was emitted."""

    responses: list[str]
    ended: torch.Tensor


def sample_grouped_parts(processes, load: Callable[[], tuple], prompts: list[str], n: int, gen: GenerationConfig, seed: int,
                         bf16: bool = False, label: str = "sampling", progress: bool = True) -> Drawn:
    """``sample_grouped`` of ``prompts`` with each of ``processes`` (``rlhfkit.processes.Processes``) sampling its
    part of them: every process gets all the responses, in order, as one process draws them (each row keeps
    its own stream). ``load()`` -> (lm, tokenizer), called only by a process with a part to sample."""
    lo, hi = processes.part(len(prompts))
    mine: list[tuple[str, bool]] = []
    if hi > lo:
        lm, tok = load()
        ro = sample_grouped(lm, tok, prompts[lo:hi], n, gen, seed, bf16, label, progress, first_prompt=lo)
        mine = list(zip(ro.responses, ro.ended.tolist()))
    drawn = processes.gather(mine)
    return Drawn([r for r, _ in drawn], torch.tensor([e for _, e in drawn], dtype=torch.bool))


def select_best(prompts: list[str], rollout: Rollout, scores, n: int, missing_eos_penalty: float) -> tuple[list[str], list[dict]]:
    """Pick each prompt's best candidate from a grouped rollout (``sample_grouped``, or a ``Drawn``) and its ``scores``.

    A candidate that never emitted EOS loses ``missing_eos_penalty`` before the argmax (ties: the first).
    Returns (picked responses, one row per prompt with candidates, scores, ended, penalised_scores, best).
    """
    scores = as_scores(scores, len(prompts) * n).view(len(prompts), n)
    ended = rollout.ended.view(len(prompts), n).cpu()
    penalised = scores - missing_eos_penalty * (~ended).float()
    best = penalised.argmax(1).tolist()
    picked = [rollout.responses[i * n + b] for i, b in enumerate(best)]
    rows = [{"prompt": p, "candidates": rollout.responses[i * n : (i + 1) * n], "scores": scores[i].tolist(),
             "ended": ended[i].tolist(), "penalised_scores": penalised[i].tolist(), "best": best[i]}
            for i, p in enumerate(prompts)]
    return picked, rows


def best_of_n(lm, tokenizer, prompts: list[str], reward_fn: RewardFn, n: int, gen: GenerationConfig, seed: int, *,
              missing_eos_penalty: float = 1.0, bf16: bool = False, label: str | None = None,
              progress: bool = True) -> tuple[list[str], list[dict]]:
    """Best-of-``n`` answers to ``prompts`` under ``reward_fn``: ``n`` samples each, the best kept.

    Args:
        lm, tokenizer: the policy to sample from.
        prompts: plain-string prompts.
        reward_fn: any ``(prompts, responses) -> scores`` (a ``RewardScorer``, a python function).
        n: candidates per prompt.
        gen: sampling settings.
        seed: seed of the sampling stream.
        missing_eos_penalty: subtracted from the score of candidates that never emitted EOS.
        bf16: sample under bf16 autocast.

    Returns:
        (picked responses, rows) as ``select_best``.

    Example::

        lm, tok = load_causal_lm("tiny", trainable=False), load_tokenizer("tiny")
        picked, rows = best_of_n(lm, tok, ["Hello"], lambda p, r: [len(x) for x in r], n=4,
                                 gen=GenerationConfig(max_new_tokens=8), seed=0)
    """
    ro = sample_grouped(lm, tokenizer, prompts, n, gen, seed, bf16, label or f"best-of-{n}: sampling", progress)
    scores = reward_fn([p for p in prompts for _ in range(n)], ro.responses)
    return select_best(prompts, ro, scores, n, missing_eos_penalty)


def generation_config(cfg) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            batch_size=cfg.batch_size, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)


def write_best_of_n(out: Path, prompts: list[str], picked: list[str], rows: list[dict], n: int) -> Path:
    """candidates.jsonl, responses.jsonl and summary.json of a best-of-n run in ``out``."""
    write_jsonl(out / "candidates.jsonl", rows)
    path = write_jsonl(out / "responses.jsonl", [{"prompt": p, "response": r} for p, r in zip(prompts, picked)])
    ended = [row["ended"][row["best"]] for row in rows]
    summary = {"n": n, "prompts": len(rows),
               "picked_score": sum(row["penalised_scores"][row["best"]] for row in rows) / max(len(rows), 1),
               "picked_ended": sum(ended) / max(len(ended), 1), "kl_bound": math.log(n) - (n - 1) / n}
    atomic_json(out / "summary.json", summary)
    return path


def run_best_of_n(cfg: BestOfNConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """``rlhfkit best-of-n``: best-of-``cfg.n`` answers to every prompt of ``cfg.prompts``; returns the path of
    responses.jsonl (see the module docstring for the files).

    Example::

        run_best_of_n(BestOfNConfig(model="runs/sft", reward_model="runs/reward", prompts="prompts.jsonl",
                                    n=16, out="runs/best_of_n"))
    """
    from rlhfkit.models import default_device, load_frozen_lm, load_tokenizer

    if cfg.n < 1:
        raise ValueError(f"n must be at least 1, got {cfg.n}")
    prompts = [r["prompt"] for r in load_prompts(cfg.prompts, cfg.chat_template)]  # malformed lines stop here
    precision = resolve_config_precision(cfg)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = default_device()
    reward_fn = reward_fn or load_reward(cfg, device)
    lm = load_frozen_lm(cfg.model, precision == "bf16")
    tok = load_tokenizer(cfg.model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, model=cfg.model, reward=cfg.reward_model or cfg.reward_fn, prompts=cfg.prompts, precision=precision)
    picked, rows = best_of_n(lm, tok, prompts, reward_fn, cfg.n, generation_config(cfg), cfg.seed,
                             missing_eos_penalty=cfg.missing_eos_penalty, bf16=precision == "bf16", progress=progress)
    return write_best_of_n(out, prompts, picked, rows, cfg.n)


__all__ = ["best_of_n", "select_best", "sample_grouped", "sample_grouped_parts", "Drawn", "run_best_of_n", "write_best_of_n", "generation_config"]
