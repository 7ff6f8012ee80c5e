"""The pipeline's evaluation stage: every method answers the eval prompts, the task's judge compares each
answer with the initial model's, and the table, samples and report are written."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from rlhfkit.data import write_jsonl
from rlhfkit.pipeline.context import Context, prefetch_judging, reward_scorer, sample
from rlhfkit.pipeline.seeds import stream_seed
from rlhfkit.scoring import score_on_processes


@torch.no_grad()
def reference_logprobs(model, rollouts: list, temperature: float, bf16: bool, batch_prompts: int = 16) -> list[torch.Tensor]:
    """log pi(y | x) under ``model`` of each rollout's responses ((B,) per rollout). The rollouts answer
    the same prompts in the same order, so each batch holds a few prompts with every rollout's answer to
    them, and each prompt runs once for all of them."""
    from rlhfkit import ops
    from rlhfkit.forward import autocast_context, forward_response, pad_to

    if not rollouts:
        return []
    if any(not torch.equal(ro.prompt_ids, rollouts[0].prompt_ids) for ro in rollouts[1:]):  # other tokenizers
        return [reference_logprobs(model, [ro], temperature, bf16, batch_prompts)[0] for ro in rollouts]
    B, k = len(rollouts[0]), len(rollouts)
    T = max(ro.response_ids.shape[1] for ro in rollouts)
    r_ids = torch.stack([pad_to(ro.response_ids, T, 0, False) for ro in rollouts], 1).flatten(0, 1)  # (B*k, T)
    r_mask = torch.stack([pad_to(ro.response_mask, T, 0, False) for ro in rollouts], 1).flatten(0, 1)
    p_ids = rollouts[0].prompt_ids.repeat_interleave(k, 0)
    p_mask = rollouts[0].prompt_mask.repeat_interleave(k, 0)
    out = []
    for i in range(0, B * k, batch_prompts * k):
        sl = slice(i, i + batch_prompts * k)
        with autocast_context(p_ids.device, bf16):
            lp = forward_response(model, p_ids[sl], p_mask[sl], r_ids[sl], r_mask[sl], temperature=temperature,
                                  share_prompts=True)["logprobs"].float()
        out.append(ops.sequence_logprobs(lp, r_mask[sl]))
    return list(torch.cat(out).view(B, k).unbind(1))


@contextlib.contextmanager
def _phase(ctx: Context, what: str):
    """A line when a silent scoring pass starts and its seconds when it ends (main process, with progress on)."""
    t = time.perf_counter()
    if ctx.progress:
        print(f"eval: {what} ...", flush=True)
    yield
    if ctx.progress:
        print(f"eval: {what}: {time.perf_counter() - t:.0f} s", flush=True)


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def method_models(ctx: Context) -> dict[str, Path | str]:
    c = ctx.cfg
    found: dict[str, Path | str] = {"initial": c.model}
    for name, path in (("sft", ctx.run / "sft"), ("ppo", ctx.run / "ppo"), ("dpo", ctx.run / "dpo"),
                       ("rloo", ctx.run / "rloo"), ("grpo", ctx.run / "grpo"),
                       ("expert_iteration", ctx.run / "expert_iteration" / f"round-{c.expert_iteration.rounds}")):
        if (path / "config.json").exists():
            found[name] = path
    return found


def stage_eval(ctx: Context) -> dict:
    """Every method answers the eval prompts ``eval_samples`` times; the panel (no label noise) compares
    answer j with the initial model's answer j on the same prompt (best-of-n answers the first
    bon_prompts prompts once, and that answer meets each of the reference's answers). Each method, and
    best-of-n's candidates, sample from their own random stream (``seeds.stream_seed``), so a method's
    answer and the reference's are independent draws paired only by prompt. The initial model is the
    reference: its row is its answers against themselves, 50% by definition (marked so, no SE), not a
    second independent draw (that would cost one more sampling pass and, since a noise-free comparison
    is antisymmetric, only show around a known 50% the sampling noise every SE already reports). KL to SFT is
    estimated on the method's own samples at the eval temperature: mean of log pi_M(y|x) -
    log pi_SFT(y|x); for best-of-n, the analytic log n - (n-1)/n.

    Several processes sample (and take the KL of) a part of the prompts each, with the streams one process
    would use for them (``sample_grouped``), and split the forward passes of judging and scoring (the panel's
    fluency, the reward model) in the batches one process runs; the main process judges, writes and returns
    the win-rates, the others return None."""
    from rlhfkit.eval import build_winrates, write_report
    from rlhfkit.models import load_frozen_lm

    c = ctx.cfg
    openings = ctx.split("eval", c.eval_prompts)
    prompts = ctx.frame(openings)
    models = method_models(ctx)
    n = max(1, c.eval_samples)
    lo, hi = ctx.processes.part(len(prompts))  # this process's part of the prompts (all of them on one process)
    sft_lm = load_frozen_lm(models["sft"], c.bf16) if "sft" in models and hi > lo else None
    responses: dict[str, list[str]] = {}
    kls: dict[str, list[float]] = {}
    where: dict[str, list[tuple[int, int]]] = {}  # method -> (prompt index, sample index) of each row
    sampled = {}
    for name, path in models.items():
        lm = sft_lm if name == "sft" else load_frozen_lm(path, c.bf16) if hi > lo else None
        # each method its own stream (pipeline/seeds.py): with one seed, answer j of two methods would share
        # their random draws, and a model identical to the reference would repeat its answers token for token
        sampled[name] = sample(ctx, path, prompts[lo:hi], n, c.eval_temperature, stream_seed(c.seed, f"eval:{name}"),
                               f"eval: {name} ({n} per prompt)", lm=lm, first_prompt=lo)
        responses[name] = sampled[name].responses if sampled[name] is not None else []
        where[name] = [(i, j) for i in range(len(prompts)) for j in range(n)]
    # KL to SFT on each method's own samples: log pi_M(y|x) was recorded while sampling (at the eval
    # temperature); log pi_SFT(y|x) comes from one pass per prompt over all methods' answers. (In bf16 a
    # full pass and the token-by-token sampler differ by ~0.1 nat per sequence: noise next to the KLs here.)
    others = [m for m in sampled if m != "sft"]
    if sft_lm is not None and others:
        with _phase(ctx, f"log-probs under SFT for the KL ({len(others)} x {(hi - lo) * n} answers)"):
            lp_sfts = reference_logprobs(sft_lm, [sampled[m] for m in others], c.eval_temperature, c.bf16)
        for name, lp_sft in zip(others, lp_sfts):
            ro = sampled[name]
            kls[name] = ((ro.logprobs * ro.response_mask).sum(1) - lp_sft).tolist()
    for name in responses:
        kls.setdefault(name, [0.0] * len(responses[name]))
    # every process's part, in prompt order, on every process (the main one alone judges and writes)
    responses = {name: ctx.processes.gather(responses[name]) for name in models}
    kls = {name: ctx.processes.gather(kls[name]) for name in models}
    scorer = reward_scorer(ctx) if (ctx.run / "reward" / "config.json").exists() else None
    bon_rows = _read_rows(ctx.run / "best_of_n" / "candidates.jsonl")
    if bon_rows and [r["prompt"] for r in bon_rows] == prompts[: len(bon_rows)]:
        # best-of-n answers the first bon_prompts eval prompts once (16 samples each are its cost); its answer
        # is judged against each of the reference's answers to the prompt, as the sampled methods' answers are
        responses["best_of_n"] = [r["candidates"][r["best"]] for r in bon_rows for _ in range(n)]
        where["best_of_n"] = [(i, j) for i in range(len(bon_rows)) for j in range(n)]
        k = len(bon_rows[0]["candidates"])
        kls["best_of_n"] = [math.log(k) - (k - 1) / k] * len(where["best_of_n"])
    reference = dict(zip(where["initial"], responses["initial"]))
    samples_dir = ctx.run / "samples"
    # score every method's answers in one pass, grouped by prompt (each prompt then runs once per model):
    # the panel's fluency feature under the initial model (remembered for the comparisons) and the proxy
    flat = sorted(((m, r) for m in responses for r in range(len(responses[m]))), key=lambda t: where[t[0]][t[1]][0])
    flat_r = [responses[m][r] for m, r in flat]
    flat_i = [where[m][r][0] for m, r in flat]
    # the forward passes split between the processes (the panel's fluency, the reward model), each in the
    # batches one process runs: the same numbers as one process; the judging itself on the main process
    with _phase(ctx, f"the judge's forward passes ({len(flat)} answers; the panel: fluency under the initial model)"):
        prefetch_judging(ctx, [openings[i] for i in flat_i], flat_r)
    proxy_flat = [None] * len(flat)
    if scorer is not None:
        with _phase(ctx, f"the reward model ({len(flat)} answers)"):
            proxy_flat = score_on_processes(ctx.processes, scorer, [prompts[i] for i in flat_i], flat_r).tolist()
    if not ctx.processes.is_main:
        return None
    gold_flat = np.asarray(ctx.judge.gold_reward([openings[i] for i in flat_i], flat_r))
    position = {t: j for j, t in enumerate(flat)}
    for name, resp in responses.items():
        at = [position[(name, r)] for r in range(len(resp))]
        opening = [openings[i] for i, _ in where[name]]
        ref = [reference[ij] for ij in where[name]]
        outcome = ctx.judge.compare(opening, resp, ref, noise=False)
        write_jsonl(samples_dir / f"{name}.jsonl", [
            {"prompt": o, "sample": ij[1], "response": r, "gold": float(gold_flat[j]), "proxy": proxy_flat[j], "kl": float(k),
             "length": len(r.split()), "outcome": float(w), "reference_response": rr}
            for o, ij, r, j, k, w, rr in zip(opening, where[name], resp, at, kls[name], outcome, ref)])
    human = None
    if c.human:
        from rlhfkit.feedback.winrate import human_winrates

        human = {k: v for k, v in human_winrates(c.human).items() if k in responses}
    for stale in ("winrates.json",):
        (ctx.run / stale).unlink(missing_ok=True)
    winrates = build_winrates(ctx.run, reference="initial", human=human)
    write_report(ctx.run)
    return winrates
