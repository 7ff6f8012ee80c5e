"""The lecture's pipeline: a table of stages, each a method of ``rlhfkit.train`` run on this run's files
(or, for the preferences and the evaluation, the task's judge). Each stage reads the files the earlier
stages wrote in the run directory and writes its own folder, so any stage can run alone; ``STAGES`` names
each stage's method and folder (``rlhfkit pipeline --help`` prints it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlhfkit.atomic import atomic_json, crash_point, remove_leftovers
from rlhfkit.data import write_jsonl
from rlhfkit.pipeline.config import PipelineConfig
from rlhfkit.pipeline.context import Context, prefetch_judging, reward_scorer, sample_responses
from rlhfkit.pipeline.evaluate import _read_rows, stage_eval
from rlhfkit.pipeline.seeds import stream_seed
from rlhfkit.scoring import score_on_processes


def stage_sft(ctx: Context) -> Path:
    from rlhfkit.train.sft import train_sft

    demos = ctx.task.splits["sft"][: ctx.cfg.sft_examples]
    ctx.processes.from_main(lambda: write_jsonl(
        ctx.cfg.sft.data, [{"prompt": ctx.task.format_prompt(d["prompt"]), "completion": d["completion"]} for d in demos]))
    return train_sft(ctx.cfg.sft, progress=ctx.progress)  # on every process: each trains on its share of a batch


def stage_preferences(ctx: Context) -> Path:
    """K responses per preference prompt, drawn from the models in ``pref_sources`` (the lecture: outputs
    from the current and the initial model give diversity and hard negatives), shuffled, and each set
    ranked by one simulated annotator with label noise (AlpacaFarm). Several processes sample a part of the
    prompts each, and run a part of the panel's fluency pass over the samples; the main process ranks them all
    (every random draw of the panel as one process draws it) and writes the files (the others wait)."""
    c = ctx.cfg
    openings = ctx.split("preference", c.pref_prompts)
    prompts = ctx.frame(openings)
    sources = [s.strip() for s in c.pref_sources.split(",") if s.strip()]
    paths = {"sft": ctx.run / "sft", "initial": c.model}
    unknown = [s for s in sources if s not in paths]
    if unknown:
        raise ValueError(f"pref_sources: unknown source(s) {unknown}; use sft and/or initial")
    counts = [c.pref_k // len(sources) + (1 if i < c.pref_k % len(sources) else 0) for i in range(len(sources))]
    drawn = {}
    for src, k in zip(sources, counts):
        if k:
            # each source its own stream: with one seed the SFT and initial models' answers share their draws
            responses = sample_responses(ctx, paths[src], prompts, k, c.temperature, stream_seed(c.seed, f"preferences:{src}"),
                                         f"sampling {k} per preference prompt from {src}")
            drawn[src] = [responses[i * k : (i + 1) * k] for i in range(len(prompts))]
    out = ctx.run / "prefs" / "rankings.jsonl"
    # the fluency of every sample under the initial model, split between the processes (each in the batches
    # one process runs); ranking, with all its random draws, stays whole on the main process
    pairs = [(openings[i], r) for i in range(len(prompts)) for src in drawn for r in drawn[src][i]]
    prefetch_judging(ctx, [o for o, _ in pairs], [r for _, r in pairs])
    if not ctx.processes.is_main:
        return out
    rng = np.random.default_rng(c.seed + 2)
    groups, group_sources = [], []
    for i in range(len(prompts)):
        items = [(r, src) for src in drawn for r in drawn[src][i]]
        order = rng.permutation(len(items))  # the position of a response says nothing about its source
        groups.append([items[j][0] for j in order])
        group_sources.append([items[j][1] for j in order])
    same_draws = copy.deepcopy(rng)  # the same annotators and Gumbel noise, without the label noise
    rankings = ctx.judge.rank(openings, groups, flip_prob=c.flip_prob, rng=rng)
    rows = [{"prompt": p, "responses": g, "ranking": r, "sources": s, "annotator": "simulated-panel",
             "flip_prob": c.flip_prob} for p, g, r, s in zip(prompts, groups, rankings, group_sources)]
    write_jsonl(out, rows)
    # the panel's agreement on pairs of these samples (first two responses of each prompt)
    report = ctx.judge.agreement_report(openings, [g[0] for g in groups], [g[1] for g in groups], rng=np.random.default_rng(c.seed + 3))
    clean = ctx.judge.rank(openings, groups, flip_prob=0.0, rng=same_draws)
    report["label_noise"] = label_noise_report(ctx.judge, openings, groups, rankings, clean, c.flip_prob)
    atomic_json(ctx.run / "prefs" / "agreement.json", report)
    return out


def label_noise_report(panel, openings: list[str], groups: list[list[str]], rankings, clean, flip_prob: float) -> dict:
    """What the label noise did to the rankings, measured on their pairs:
    pairwise_flip_rate (+ stderr, over rankings: the pairs of one ranking flip together): share of pairs
    ordered differently from the same annotator's ranking without label noise (expected: flip_prob);
    disagreement_with_gold: share of pairs ordered differently from the noise-free panel-mean utility
    (label noise + annotator temperature + the annotator's own taste); pairs of identical texts skipped."""
    from rlhfkit.annotators.panel import pairwise_disagreement

    flips = pairwise_disagreement(rankings, clean)
    per = np.asarray(flips["per_ranking"])
    se = float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else None
    gold_u = panel.gold_reward([o for o, g in zip(openings, groups) for _ in g], [r for g in groups for r in g])
    agree = total = 0
    start = 0
    for g, r in zip(groups, rankings):
        u, pos = gold_u[start : start + len(g)], {item: j for j, item in enumerate(r)}
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if g[a] != g[b] and u[a] != u[b]:
                    total += 1
                    agree += (pos[a] < pos[b]) == (u[a] > u[b])
        start += len(g)
    return {"flip_prob": flip_prob, "pairwise_flip_rate": flips["rate"], "stderr": se, "pairs": flips["pairs"],
            "disagreement_with_gold": 1.0 - agree / total if total else None, "gold_pairs": total}


def stage_reward(ctx: Context) -> Path:
    """Bradley-Terry on the rankings, normalised on the SFT model's samples among them (the policy PPO
    starts from, so that its samples score mean 0 at the start), not on every ranked response."""
    import dataclasses

    from rlhfkit.train.reward import train_reward

    cfg = ctx.cfg.reward
    reference = ctx.processes.from_main(lambda: sft_reference(Path(cfg.data), Path(cfg.reference)))
    return train_reward(dataclasses.replace(cfg, reference=reference), progress=ctx.progress)


def sft_reference(rankings: Path, out: Path) -> str | None:
    """Write the ranked responses whose source is "sft" as {prompt, response} rows to ``out``; None (the
    trainer then normalises on every response) when the rankings record no SFT sources."""
    rows = [{"prompt": r["prompt"], "response": x} for r in _read_rows(rankings)
            for x, src in zip(r["responses"], r.get("sources") or []) if src == "sft"]
    return str(write_jsonl(out, rows)) if rows else None


def unlabeled_prompts(ctx: Context) -> list[str]:
    """The task's unlabeled split, framed, also written where PPO's and expert iteration's configs point."""
    prompts = ctx.frame(ctx.split("unlabeled"))
    ctx.processes.from_main(lambda: write_jsonl(ctx.cfg.ppo.prompts, [{"prompt": p} for p in prompts]))
    return prompts


def stage_dpo(ctx: Context) -> Path:
    """DPO from the SFT model (also its reference) on the preference rankings the reward model learns from."""
    from rlhfkit.train.dpo import train_dpo

    return train_dpo(ctx.cfg.dpo, progress=ctx.progress)


def stage_ppo(ctx: Context) -> Path:
    from rlhfkit.train.ppo import train_ppo

    unlabeled_prompts(ctx)
    return train_ppo(ctx.cfg.ppo, gold_fn=ctx.gold if ctx.cfg.log_gold else None, progress=ctx.progress)


def stage_rloo(ctx: Context) -> Path:
    """RLOO from the SFT model against this run's reward model on the unlabeled prompts, as PPO."""
    from rlhfkit.train.rloo import train_rloo

    unlabeled_prompts(ctx)
    return train_rloo(ctx.cfg.rloo, progress=ctx.progress)


def stage_grpo(ctx: Context) -> Path:
    """GRPO from the SFT model against this run's reward model on the unlabeled prompts, as PPO."""
    from rlhfkit.train.grpo import train_grpo

    unlabeled_prompts(ctx)
    return train_grpo(ctx.cfg.grpo, progress=ctx.progress)


def stage_best_of_n(ctx: Context) -> Path:
    """Best-of-n from the SFT model on the first ``bon_prompts`` eval prompts (the evaluation judges them).
    Several processes sample a part of the prompts each and score a part of the candidates (in the batches
    one process would: the same scores to the last bit); the main process picks and writes."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.train.best_of_n import generation_config, sample_grouped_parts, select_best, write_best_of_n

    c, bon = ctx.cfg, ctx.cfg.best_of_n
    prompts = ctx.frame(ctx.split("eval", min(c.bon_prompts or c.eval_prompts, c.eval_prompts)))
    ctx.processes.from_main(lambda: write_jsonl(bon.prompts, [{"prompt": p} for p in prompts]))
    # its own stream: with the seed of the SFT or reference answers its candidates would copy their draws
    drawn = sample_grouped_parts(ctx.processes, lambda: (load_frozen_lm(bon.model, c.bf16), load_tokenizer(bon.model)), prompts,
                                 bon.n, generation_config(bon), stream_seed(c.seed, "eval:best_of_n"), c.bf16,
                                 f"best-of-{bon.n}: sampling", ctx.progress)
    # each process scores a part of the candidates, in the batches one process runs (the same scores)
    scores = score_on_processes(ctx.processes, reward_scorer(ctx), [p for p in prompts for _ in range(bon.n)], drawn.responses)
    if not ctx.processes.is_main:
        return Path(bon.out) / "responses.jsonl"
    picked, rows = select_best(prompts, drawn, scores, bon.n, bon.missing_eos_penalty)
    return write_best_of_n(Path(bon.out), prompts, picked, rows, bon.n)


def stage_expert_iteration(ctx: Context) -> Path:
    """Best-of-n on fresh unlabeled prompts, SFT on the winners, repeated (each round starts from the last)."""
    from rlhfkit.models import load_frozen_lm
    from rlhfkit.train.expert_iteration import expert_iteration

    c = ctx.cfg
    return expert_iteration(c.expert_iteration, unlabeled_prompts(ctx), reward_scorer(ctx),
                            sample_seed=lambda r: stream_seed(c.seed, f"expert_iteration:{r}"),
                            load_lm=lambda path: load_frozen_lm(path, c.bf16), progress=ctx.progress, resume=ctx.resume,
                            processes=ctx.processes)


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline: its name (``stages:``), the method that runs it, the folder it writes."""

    name: str
    method: str
    folder: str
    run: Callable[[Context], Any]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "rlhfkit.train.sft (rlhfkit sft) on the task's demonstrations", "sft/", stage_sft),
    Stage("preferences", "K samples per prompt from pref_sources, ranked by the task's judge with label noise", "prefs/", stage_preferences),
    Stage("reward", "rlhfkit.train.reward (rlhfkit reward) on the rankings, from the SFT model", "reward/", stage_reward),
    Stage("dpo", "rlhfkit.train.dpo (rlhfkit dpo) from SFT on the rankings (off by default: name it in stages)", "dpo/", stage_dpo),
    Stage("ppo", "rlhfkit.train.ppo (rlhfkit ppo) from SFT against the reward model", "ppo/", stage_ppo),
    Stage("rloo", "rlhfkit.train.rloo (rlhfkit rloo) from SFT against the reward model (off by default: name it in stages)", "rloo/", stage_rloo),
    Stage("grpo", "rlhfkit.train.grpo (rlhfkit grpo) from SFT against the reward model (off by default: name it in stages)", "grpo/", stage_grpo),
    Stage("best_of_n", "rlhfkit.train.best_of_n (rlhfkit best-of-n) from SFT on eval prompts", "best_of_n/", stage_best_of_n),
    Stage("expert_iteration", "rlhfkit.train.expert_iteration (rlhfkit expert-iteration) from SFT", "expert_iteration/", stage_expert_iteration),
    Stage("eval", "rlhfkit.pipeline.evaluate: win-rate against the initial model, judged by the task's judge",
          "samples/, winrates.json, report.md, report.html", stage_eval),
)}


def stage_table() -> str:
    """The stage table as text (for --help and the docs)."""
    w = max(len(s.name) for s in STAGES.values())
    f = max(len(s.folder) for s in STAGES.values() if len(s.folder) < 20)
    return "\n".join(f"{s.name:<{w}}  {s.folder:<{f}}  {s.method}" for s in STAGES.values())


def run_pipeline(cfg: PipelineConfig, progress: bool = True, echo=print, resume: bool = False) -> dict:
    """Run the stages named in ``cfg.stages``; returns the win-rate table and writes timings.json.
    ``resume``: continue a run killed part way (``pipeline/resume.py``): stages marked done are skipped,
    an interrupted training stage goes on from its last checkpoint; the config must be the run's own.

    Launched as several processes (``accelerate launch``, ``torchrun``): every process runs every stage (the
    trainers train across them; the sampling stages split their prompts and gather them on the main process);
    the main process alone writes the pipeline's files (pipeline.yaml, timings.json, the stage markers) and
    echoes; all wait for each other after each stage. Returns the win-rates on the main process only."""
    from rlhfkit.config import save_config
    from rlhfkit.pipeline import resume as resuming

    names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    ctx = Context(cfg, progress)
    procs = ctx.processes
    echo = echo if procs.is_main else (lambda *a, **k: None)

    def start() -> bool:
        fresh = not (Path(cfg.out) / "pipeline.yaml").exists()  # nothing there yet: a fresh start
        if resume and not fresh:
            resuming.check_resumable(cfg, Path(cfg.out))
            remove_leftovers(cfg.out)  # temporary files of the killed run: never renamed into place, never read
        save_config(ctx.cfg, ctx.run / "pipeline.yaml")  # with the precision actually used
        return resume and not fresh

    resume = procs.from_main(start)  # one decision for every process, made before anything is rewritten
    ctx.resume = resume
    timings_path = ctx.run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    result = None
    t_all = time.perf_counter()
    for name in names:
        later = list(STAGES)[list(STAGES).index(name) + 1 :]

        def decide(name=name, later=later):  # on the main process: skip, or clear the way and say where to resume
            if resume and resuming.marker(ctx.run, name).exists():
                return "done", None
            return "run", resuming.start_stage(ctx.run, name, later, resume)

        state, resume_from = procs.from_main(decide)
        if state == "done":
            echo(f"== {name}: done before, not rerun")
            if name == "eval" and procs.is_main:
                result = json.loads((ctx.run / "winrates.json").read_text())
            continue
        echo(f"== {name}")
        wired = ctx.cfg
        if resume_from is not None:  # the trainer goes on from its last checkpoint
            echo(f"   resuming from {max(resume_from.glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[1])).name}")
            ctx.cfg = dataclasses.replace(wired, **{name: dataclasses.replace(getattr(wired, name), resume=str(resume_from))})
        t = time.perf_counter()
        try:
            result = STAGES[name].run(ctx)
        finally:
            ctx.cfg = wired
        procs.barrier()  # the main process may still be judging and writing: the stage is done when it is
        timings[name] = round(time.perf_counter() - t, 1)
        if not procs.is_main:
            continue
        atomic_json(timings_path, timings)
        crash_point(f"stage-done:{name}")
        atomic_json(resuming.marker(ctx.run, name), {"stage": name, "seconds": timings[name]})  # last: the stage is done
        echo(f"   {name} done in {timings[name]:.0f} s")
        if name == "preferences":
            a = json.loads((ctx.run / "prefs" / "agreement.json").read_text())
            echo(f"   panel agreement: pairwise {a['mean_pairwise_agreement']:.3f}, Krippendorff alpha {a['krippendorff_alpha']:.3f}, "
                 f"Fleiss kappa {a['fleiss_kappa']:.3f}")
            ln = a.get("label_noise")
            if ln and ln["pairwise_flip_rate"] is not None:
                se = "" if ln["stderr"] is None else f" ± {100 * ln['stderr']:.1f}"
                gold = "" if ln["disagreement_with_gold"] is None else (
                    f"; {100 * ln['disagreement_with_gold']:.1f}% of pairs disagree with the noise-free panel gold")
                echo(f"   label noise: flip_prob {ln['flip_prob']:g} flipped {100 * ln['pairwise_flip_rate']:.1f}% of "
                     f"{ln['pairs']} pairs{se}{gold}")
        if name == "reward":
            ev = json.loads((ctx.run / "reward" / "eval.json").read_text()).get("eval", {})
            if ev:
                echo(f"   reward model held-out accuracy {ev['eval_accuracy']:.3f} on {ev['eval_pairs']} pairs")
        if name == "dpo":
            ev = json.loads((ctx.run / "dpo" / "eval.json").read_text()).get("eval", {})
            if ev:
                echo(f"   DPO held-out implicit-reward accuracy {ev['eval_accuracy']:.3f} on {ev['eval_pairs']} pairs")
    timings["total_this_call"] = round(time.perf_counter() - t_all, 1)
    if procs.is_main:
        atomic_json(timings_path, timings)
    procs.barrier()
    return {"timings": timings, "winrates": result if names and names[-1] == "eval" else None, "config": asdict(cfg)}
