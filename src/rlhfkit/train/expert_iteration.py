"""Expert iteration: best-of-n on fresh prompts, then SFT on the winners, repeated; each round starts from
the model the last one trained (Anthony et al. 2017; the lecture's "iterated best-of-n").

``rlhfkit expert-iteration`` writes, in its run directory:

  round-R.jsonl     the SFT data of round R: each prompt's winner exactly as it was sampled
  round-R/          the model after round R (an SFT run directory); the last one is the result
  round-R.done      written last in round R (its summary row): a resumed run skips the round
  summary.json      per round: prompts, winners that ended with EOS, mean winner score
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from rlhfkit.atomic import atomic_json
from rlhfkit.config import ExpertIterationConfig, SFTConfig
from rlhfkit.data import load_prompts, write_jsonl
from rlhfkit.scoring import RewardFn, load_reward, score_on_processes
from rlhfkit.train.best_of_n import generation_config, sample_grouped_parts, select_best
from rlhfkit.train.common import resolve_config_precision


def expert_demonstrations(prompts: list[str], picked: list[str], rows: list[dict]) -> list[dict]:
    """The SFT data of an expert-iteration round: each prompt's best-of-n winner exactly as it was sampled.
    A winner cut off at max_new_tokens is marked ``"finished": false``, so SFT learns its tokens but no
    EOS after them (an EOS there would teach the policy to stop mid-sentence)."""
    out = []
    for p, x, row in zip(prompts, picked, rows):
        out.append({"prompt": p, "completion": x} if row["ended"][row["best"]] else {"prompt": p, "completion": x, "finished": False})
    return out


def round_sft_config(cfg: ExpertIterationConfig, model: str, data: Path, out: Path, r: int) -> SFTConfig:
    """The SFT run of round ``r``: the round's winners, from ``model``, seed ``cfg.seed + r``."""
    return SFTConfig(model=model, data=str(data), out=str(out), epochs=cfg.epochs, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                     batch_size=cfg.sft_batch_size, mixed_precision=cfg.mixed_precision, system_prompt=cfg.system_prompt,
                     chat_template=cfg.chat_template, threads=cfg.threads, seed=cfg.seed + r)


def expert_iteration(cfg: ExpertIterationConfig, prompts: list[str], reward_fn: RewardFn, *,
                     sample_seed: Callable[[int], int] | None = None, load_lm: Callable | None = None,
                     progress: bool = True, resume: bool = False, processes=None) -> Path:
    """Run ``cfg.rounds`` rounds on ``prompts`` (round r takes the r-th block of ``cfg.prompts_per_round``);
    returns the last round's model folder.

    Args:
        cfg: the settings (``cfg.model`` is where round 1 starts; ``cfg.out`` the run directory).
        prompts: plain-string prompts, at least ``rounds x prompts_per_round`` of them.
        reward_fn: any ``(prompts, responses) -> scores``.
        sample_seed: round -> seed of that round's sampling stream (default: ``cfg.seed + 1000 * round``).
        load_lm: path -> causal LM to sample from (default: ``models.load_frozen_lm``).
        progress: show progress bars.
        resume: continue a run killed part way: a round whose ``round-R.done`` exists is not rerun, the
            round in progress is (its sampling is seeded, so it draws the same winners) and its SFT goes
            on from its last checkpoint. Without it, earlier runs' round markers are removed first.
        processes: the run's processes (``rlhfkit.processes.Processes``, default: as launched): each samples
            a part of a round's prompts and, for a reward model, scores a part of the samples; the main process
            picks the winners and writes the files; every process trains the round's SFT (each its share of every batch).

    Example::

        expert_iteration(ExpertIterationConfig(model="runs/sft", prompts="p.jsonl", out="runs/ei", rounds=2),
                         prompts, RewardScorer.load("runs/reward"))
    """
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.processes import Processes
    from rlhfkit.train.sft import train_sft

    need = cfg.rounds * cfg.prompts_per_round
    if len(prompts) < need:
        raise ValueError(f"expert iteration needs rounds x prompts_per_round = {need} prompts, got {len(prompts)}")
    load_lm = load_lm or (lambda path: load_frozen_lm(path, cfg.mixed_precision == "bf16"))
    sample_seed = sample_seed or (lambda r: cfg.seed + 1000 * r)
    out = Path(cfg.out)
    bf16 = cfg.mixed_precision == "bf16"
    model, summary = cfg.model, []
    procs = processes or Processes()
    if not resume:
        procs.from_main(lambda: [stale.unlink() for stale in out.glob("round-*.done")])
    for r in range(1, cfg.rounds + 1):
        done = out / f"round-{r}.done"
        if resume and done.exists():
            summary.append(json.loads(done.read_text()))
            model = out / f"round-{r}"
            continue
        chunk = prompts[(r - 1) * cfg.prompts_per_round : r * cfg.prompts_per_round]
        drawn = sample_grouped_parts(procs, lambda m=model: (load_lm(m), load_tokenizer(m)), chunk, cfg.n, generation_config(cfg),
                                     sample_seed(r), bf16, f"expert iteration {r}: best-of-{cfg.n}", progress)

        # a reward model scores split between the processes (in one process's batches: the same scores)
        scores = score_on_processes(procs, reward_fn, [p for p in chunk for _ in range(cfg.n)], drawn.responses)

        def pick_and_write(r=r, chunk=chunk, drawn=drawn, scores=scores):  # the main process
            picked, rows = select_best(chunk, drawn, scores, cfg.n, cfg.missing_eos_penalty)
            demos = expert_demonstrations(chunk, picked, rows)
            write_jsonl(out / f"round-{r}.jsonl", demos)
            return {"round": r, "prompts": len(chunk), "finished_winners": sum(d.get("finished", True) for d in demos),
                    "winner_score": float(np.mean([row["penalised_scores"][row["best"]] for row in rows]))}

        summary.append(procs.from_main(pick_and_write))
        data = out / f"round-{r}.jsonl"
        sft_cfg = round_sft_config(cfg, str(model), data, out / f"round-{r}", r)
        if resume and any((out / f"round-{r}").glob("checkpoint-*")):
            sft_cfg.resume = sft_cfg.out
        model = train_sft(sft_cfg, progress=progress)
        if procs.is_main:
            atomic_json(done, summary[-1])
    if procs.is_main:
        atomic_json(out / "summary.json", summary)
    return Path(model)


def run_expert_iteration(cfg: ExpertIterationConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """``rlhfkit expert-iteration``: load the prompts and the reward a config names and run
    ``expert_iteration``; returns the last round's model folder."""
    from rlhfkit.models import default_device
    from rlhfkit.train.common import write_run_info

    prompts = [r["prompt"] for r in load_prompts(cfg.prompts, cfg.chat_template)]  # malformed lines stop here
    cfg = dataclasses.replace(cfg)  # resolve_config_precision sets mixed_precision in place: not on the caller's
    resolve_config_precision(cfg)
    write_run_info(Path(cfg.out), cfg, model=cfg.model, reward=cfg.reward_model or cfg.reward_fn, prompts=cfg.prompts)
    return expert_iteration(cfg, prompts, reward_fn or load_reward(cfg, default_device()), progress=progress)
