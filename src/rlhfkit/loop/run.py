"""The rounds of ``rlhfkit loop``, built from the pipeline's pieces (its config and sections, ``Context``,
the SFT stage, the trainers of ``rlhfkit.train``).

Round r (r = 1..rounds), with pi_0 = SFT:

  1. sample ``pref_k`` responses per preference prompt (the r-th block of the split) from pi_{r-1};
  2. have them ranked: the task's simulated judge, or people in the feedback app (the loop waits);
  3. mix the new rankings with a share (``old_fraction``) of the earlier rounds' and retrain the reward
     model RM_r from SFT on the mix;
  4. train pi_r against RM_r (from pi_{r-1}, or from SFT with ``policy_init sft``);
  5. measure pi_r on the eval prompts: gold reward, proxy reward (RM_r), KL to SFT, and RM_r's pairwise
     accuracy on pi_r's samples (pairs labelled by the noise-free gold); also RM_r's accuracy on
     pi_{r-1}'s eval samples, where RM_{r-1} was measured: the refresh's effect on the same samples.

With the app, round r+1's tasks are created as soon as pi_r exists, so that people label while pi_r is
measured; with ``label_ahead`` they are created from pi_{r-1} as soon as round r's labels are in, so that
people label while RM_r and pi_r train (the labels are then one round stale: Noukhovitch et al. 2024's
asynchronous, off-policy RLHF). ``compare_single``: one round with the whole budget (rounds x prefs_per_round rankings of SFT
samples) and the same policy updates, measured alike (baseline.json).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from rlhfkit.data import write_jsonl
from rlhfkit.loop.collect import AppCollector, LoopState, PanelCollector
from rlhfkit.loop.config import METHODS, LoopConfig
from rlhfkit.loop.measure import measure, reward_on
from rlhfkit.pipeline.seeds import stream_seed


def check(cfg: LoopConfig) -> None:
    """Refuse bad options before any model loads; each message names the option."""
    if cfg.rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {cfg.rounds}")
    if cfg.method not in METHODS:
        raise ValueError(f"method: {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.policy_init not in ("last", "sft"):
        raise ValueError(f"policy_init must be 'last' or 'sft', got {cfg.policy_init!r}")
    if cfg.prefs_per_round < 1 or cfg.eval_prompts < 1:
        raise ValueError("prefs_per_round and eval_prompts must be at least 1")
    if cfg.eval_samples < 2:
        raise ValueError(f"eval_samples must be at least 2 (the reward-model accuracy is over pairs), got {cfg.eval_samples}")
    if not 0.0 <= cfg.old_fraction <= 1.0:
        raise ValueError(f"old_fraction must be in [0, 1], got {cfg.old_fraction}")
    if cfg.pref_k == 1 or cfg.pref_k < 0:
        raise ValueError(f"pref_k must be 0 (the pipeline's) or at least 2, got {cfg.pref_k}")
    if cfg.pool_factor < 1:
        raise ValueError(f"pool_factor must be at least 1, got {cfg.pool_factor}")
    if cfg.feedback_db:
        if cfg.app_kind not in ("ranking", "pairwise"):
            raise ValueError(f"app_kind must be ranking or pairwise, got {cfg.app_kind!r}")
        if cfg.labels_per_task < 1 or cfg.timeout <= 0 or cfg.poll <= 0:
            raise ValueError("labels_per_task must be at least 1, timeout and poll above 0")
        if cfg.compare_single:
            raise ValueError("compare_single runs its one big round with the simulated judge: run it without --feedback-db")


def pipeline_config(cfg: LoopConfig):
    """The pipeline's config for this loop: ``pipeline_config`` (else the bundled demo config) with
    ``pipeline_preset``, the run directory ``out`` and the task and seed overrides."""
    from rlhfkit.pipeline.config import bundled_config_path, load_pipeline_config, preset_overrides

    over = {"out": cfg.out, **({"task": cfg.task} if cfg.task else {}), **({"seed": cfg.seed} if cfg.seed else {})}
    preset = preset_overrides(cfg.pipeline_preset) if cfg.pipeline_preset else {}
    return load_pipeline_config(cfg.pipeline_config or bundled_config_path(), preset, over)


def block(rows: list, start: int, n: int) -> list:
    """``n`` rows from ``start`` on, wrapping around."""
    return [rows[(start + i) % len(rows)] for i in range(n)]


def mix(old: list[dict], new: list[dict], old_fraction: float, rng: np.random.Generator) -> list[dict]:
    """The new rows and a seeded random ``old_fraction`` of the old ones (in their order)."""
    keep = int(round(old_fraction * len(old)))
    picked = sorted(rng.choice(len(old), size=keep, replace=False).tolist()) if keep < len(old) else range(len(old))
    return [old[i] for i in picked] + new


def load_scorer(path: Path, bf16: bool):
    """A reward-model folder as the trainers score it, centred (an ensemble folder when ``scoring`` knows them)."""
    from rlhfkit import scoring

    load = getattr(scoring, "load_reward_model", scoring.RewardScorer.load)
    return load(path, batch_size=64, bf16=bf16, center=True)


def by_disagreement(scorer, prompts: list[str], groups: list[list[str]]) -> tuple[list[int], list[float]]:
    """(order, values): group indices, the ones the reward-model ensemble disagrees on most first, and each
    group's disagreement (``train.reward_ensemble.rank_by_disagreement``: the mean over a group's pairs of
    ``ops.pair_disagreement``)."""
    from rlhfkit.train.reward_ensemble import rank_by_disagreement

    try:
        return rank_by_disagreement(scorer, prompts, groups)
    except ValueError as e:
        raise ValueError(f"active_learning: {e} (in the pipeline config: reward: {{ensemble: 3}})") from None


def train_policy(ctx, method: str, init: str, reward_dir: Path, out: Path, steps_scale: int, progress: bool) -> Path:
    """One policy run of ``method`` from ``init`` against the reward model at ``reward_dir``, with the
    pipeline section's settings (``steps`` times ``steps_scale``); reinforce takes rloo's without its KL term."""
    from rlhfkit.config import ReinforceConfig
    from rlhfkit.pipeline.stages import unlabeled_prompts

    c = ctx.cfg
    unlabeled_prompts(ctx)  # writes the prompts file every method's section points to
    wired = dict(model=str(init), reward_model=str(reward_dir), out=str(out), save_every=0, resume=None)
    if method == "ppo":
        from rlhfkit.train.ppo import train_ppo

        pc = dataclasses.replace(c.ppo, **wired, steps=c.ppo.steps * steps_scale)
        return train_ppo(pc, gold_fn=ctx.gold if c.log_gold else None, progress=progress)
    section = c.rloo if method == "reinforce" else getattr(c, method)
    if method == "reinforce":
        keep = {f.name for f in dataclasses.fields(ReinforceConfig)} - {"baseline", "kl_coef", "kl_penalty"}
        section = ReinforceConfig(**{k: v for k, v in dataclasses.asdict(section).items() if k in keep})
    pc = dataclasses.replace(section, **wired, steps=section.steps * steps_scale)
    if method == "grpo":
        from rlhfkit.train.grpo import train_grpo

        return train_grpo(pc, progress=progress)
    if method == "rloo":
        from rlhfkit.train.rloo import train_rloo

        return train_rloo(pc, progress=progress)
    from rlhfkit.train.reinforce import train_reinforce

    return train_reinforce(pc, progress=progress)


def train_rm(ctx, rows: list[dict], reference: list[tuple[str, str]], sft: Path, out: Path, progress: bool) -> Path:
    """The reward model from SFT on ``rows``, normalised on ``reference`` (the samples of the policy being
    labelled: it scores them mean 0 and std 1)."""
    from rlhfkit.train.reward import train_reward

    data = write_jsonl(out.parent / "preferences.jsonl", rows)
    ref = write_jsonl(out.parent / "reference.jsonl", [{"prompt": p, "response": r} for p, r in reference])
    rc = dataclasses.replace(ctx.cfg.reward, model=str(sft), data=str(data), reference=str(ref), out=str(out), resume=None)
    return train_reward(rc, progress=progress)


class Sampler:
    """Draws the candidate groups of a round: ``k`` responses per prompt of a block of the preference split."""

    def __init__(self, ctx, k: int, per_round: int):
        self.ctx, self.k, self.per_round = ctx, k, per_round
        self.openings = ctx.split("preference")
        if not self.openings:
            raise ValueError(f"task {ctx.task.name!r} has no preference prompts")

    def __call__(self, policy: Path, start: int, n: int, seed: int, label: str, lm=None):
        from rlhfkit.pipeline.context import sample

        prompts = self.ctx.frame(block(self.openings, start, n))
        ro = sample(self.ctx, policy, prompts, self.k, self.ctx.cfg.temperature, seed, label, lm=lm)
        return prompts, [list(ro.responses[i * self.k : (i + 1) * self.k]) for i in range(len(prompts))]


def run_loop(cfg: LoopConfig, progress: bool = True, echo=print) -> dict:
    """Run the loop (see the module docstring); writes OUT/rounds.jsonl, loop.png, loop_state.json,
    (baseline.json) and returns {"rounds": [...], "baseline": ... or None}."""
    from rlhfkit.config import save_config
    from rlhfkit.loop.report import plot_loop
    from rlhfkit.pipeline.context import Context

    check(cfg)
    ctx = Context(pipeline_config(cfg), progress)
    c, run = ctx.cfg, ctx.run
    save_config(cfg, run / "loop.yaml")
    save_config(c, run / "pipeline.yaml")
    k = cfg.pref_k or c.pref_k
    if cfg.feedback_db and cfg.app_kind == "pairwise" and k != 2:
        raise ValueError(f"app_kind pairwise needs pref_k 2, got {k}")
    engine = None
    if cfg.feedback_db:
        from rlhfkit.feedback.db import make_engine, migrate

        engine = make_engine(cfg.feedback_db)
        migrate(engine)
    t0 = time.perf_counter()
    state = LoopState(run, engine, run=str(run), rounds=cfg.rounds, method=cfg.method,
                      labels="feedback app" if engine is not None else "simulated judge")
    state.update()
    try:
        result = _rounds(cfg, ctx, k, engine, state, progress, echo)
    except Exception as e:
        if state.state.get("status") == "running":
            state.update(status="failed", phase="failed", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        if engine is not None:
            engine.dispose()
    baseline = None
    if cfg.compare_single:
        state.update(phase="one-round baseline")
        baseline = _single_round(cfg, ctx, k, result["sft"], result["eval_prompts"], progress, echo)
        (run / "baseline.json").write_text(json.dumps(baseline, indent=2) + "\n")
    plot_loop(result["rows"], baseline, run / "loop.png")
    state.update(status="done", phase="done", seconds=round(time.perf_counter() - t0, 1))
    return {"rounds": result["rows"], "baseline": baseline}


def _ensure_sft(cfg: LoopConfig, ctx, echo) -> Path:
    from rlhfkit.pipeline.stages import stage_sft

    if cfg.sft:
        if not Path(cfg.sft).is_dir():
            raise FileNotFoundError(f"sft: {cfg.sft} is not a model folder")
        return Path(cfg.sft)
    if (ctx.run / "sft" / "config.json").exists():
        echo(f"   SFT model: {ctx.run / 'sft'} (already trained)")
        return ctx.run / "sft"
    echo("== sft")
    return stage_sft(ctx)


def _rounds(cfg: LoopConfig, ctx, k: int, engine, state: LoopState, progress: bool, echo) -> dict:
    from rlhfkit.models import load_frozen_lm, load_tokenizer

    c, run = ctx.cfg, ctx.run
    sft = _ensure_sft(cfg, ctx, echo)
    sft_lm, tok = load_frozen_lm(sft, c.bf16), load_tokenizer(sft)
    eval_prompts = ctx.frame(ctx.split("eval", cfg.eval_prompts))
    eval_seed = stream_seed(c.seed, "loop:eval")

    def measured(lm, label):
        return measure(ctx, lm, tok, sft_lm, eval_prompts, cfg.eval_samples, eval_seed, label, progress)

    collector = (AppCollector(engine, str(run), cfg.app_kind, cfg.labels_per_task, cfg.timeout, cfg.poll, progress)
                 if engine is not None else PanelCollector(ctx, c.flip_prob, c.seed))
    sampler = Sampler(ctx, k, cfg.prefs_per_round)
    rows_path = run / "rounds.jsonl"
    prev = measured(sft_lm, "loop: SFT policy on the eval prompts")
    rows = [{"round": 0, "policy": str(sft), "new_preferences": 0, **prev.summary(), "proxy": None, "rm_accuracy": None}]
    write_jsonl(rows_path, rows)
    state.update(phase="sampling", curves=rows)
    history: list[dict] = []
    policy, scorer, policy_lm = sft, None, sft_lm
    pending = _post(cfg, ctx, sampler, collector, 1, policy, scorer, sft_lm, policy_round=0)
    for r in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        rdir = run / f"round-{r}"
        state.update(round=r, phase="waiting for labels" if engine is not None else "labelling")
        new = collector.wait(pending, state)
        data = mix(history, new, cfg.old_fraction, np.random.default_rng(stream_seed(c.seed, f"loop:mix:{r}")))
        history += new
        write_jsonl(rdir / "new_preferences.jsonl", new)
        reference = [(p, x) for p, g in zip(pending.prompts, pending.groups) for x in g]
        labelled_policy = pending.policy_round
        if cfg.label_ahead and r < cfg.rounds:  # people label round r+1 (pi_{r-1}'s samples) while RM_r and pi_r train
            pending = _post(cfg, ctx, sampler, collector, r + 1, policy, scorer, policy_lm, policy_round=r - 1)
        state.update(phase="training the reward model")
        rm_dir = train_rm(ctx, data, reference, sft, rdir / "reward", progress)
        scorer = load_scorer(rm_dir, c.bf16)
        on_prev = reward_on(scorer, prev)  # RM_r on pi_{r-1}'s eval samples, where RM_{r-1} was measured
        state.update(phase=f"training the policy ({cfg.method})")
        init = policy if cfg.policy_init == "last" else sft
        policy = train_policy(ctx, cfg.method, init, rm_dir, rdir / "policy", 1, progress)
        lm = policy_lm = load_frozen_lm(policy, c.bf16)
        if r < cfg.rounds and not cfg.label_ahead:  # people label round r+1 while this policy is measured
            pending = _post(cfg, ctx, sampler, collector, r + 1, policy, scorer, lm, policy_round=r)
        state.update(phase="measuring the policy")
        prev = measured(lm, f"loop: round {r} policy on the eval prompts")
        row = {"round": r, "policy": str(policy), "new_preferences": len(new), "preferences_trained_on": len(data),
               "labels_on_policy_round": labelled_policy,
               **prev.summary(), **reward_on(scorer, prev),
               "rm_accuracy_on_previous_policy": on_prev["rm_accuracy"],
               "previous_rm_accuracy_on_previous_policy": rows[-1]["rm_accuracy"],
               "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        write_jsonl(rows_path, rows)
        state.update(curves=rows, labels_in=None, labels_needed=None)
        echo(f"   round {r}: gold {row['gold']:+.3f}, proxy {row['proxy']:+.3f}, KL {row['kl']:.2f}, reward-model accuracy "
             f"on policy samples {_fmt(row['rm_accuracy'])} (on the previous policy's {_fmt(on_prev['rm_accuracy'])}, "
             f"the previous reward model's {_fmt(row['previous_rm_accuracy_on_previous_policy'])})")
    return {"rows": rows, "sft": sft, "eval_prompts": eval_prompts}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _post(cfg: LoopConfig, ctx, sampler: Sampler, collector, r: int, policy: Path, scorer, lm, policy_round: int):
    """Round r's candidate groups from ``policy`` (pi_{policy_round}; 0: SFT), handed to the collector (with
    active learning, from rounds 2 on: ``pool_factor`` times as many drawn, the ones the latest reward-model
    ensemble disagrees on most kept, most-disagreed first)."""
    c = ctx.cfg
    al = cfg.active_learning and scorer is not None
    n = cfg.prefs_per_round * (cfg.pool_factor if al else 1)
    prompts, groups = sampler(policy, (r - 1) * n, n, stream_seed(c.seed, f"loop:candidates:{r}"),
                              f"loop: round {r} candidates, {sampler.k} per prompt", lm=lm)
    if al:
        order, values = by_disagreement(scorer, prompts, groups)
        rank = {i: n for n, i in enumerate(order)}
        # the whole pool with each group's disagreement, so that what active learning chose can be checked
        write_jsonl(ctx.run / f"round-{r}" / "candidates.jsonl",
                    [{"prompt": p, "responses": g, "disagreement": v, "rank": rank[i], "labelled": rank[i] < cfg.prefs_per_round}
                     for i, (p, g, v) in enumerate(zip(prompts, groups, values))])
        order = order[: cfg.prefs_per_round]
        prompts, groups = [prompts[i] for i in order], [groups[i] for i in order]
    source = "sft" if policy_round == 0 else f"policy_round{policy_round}"
    pending = collector.post(r, prompts, groups, [[source] * len(g) for g in groups])
    pending.policy_round = policy_round
    return pending


def _single_round(cfg: LoopConfig, ctx, k: int, sft: Path, eval_prompts: list[str], progress: bool, echo) -> dict:
    """One round with the loop's whole annotation budget, on SFT samples, and the policy updates of the
    loop's final policy (rounds x steps with policy_init last, steps with sft)."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer

    c, out = ctx.cfg, ctx.run / "single-round"
    t = time.perf_counter()
    n = cfg.rounds * cfg.prefs_per_round
    prompts, groups = Sampler(ctx, k, n)(sft, 0, n, stream_seed(c.seed, "loop:single:candidates"),
                                         f"single round: {n} x {k} candidates")
    panel = PanelCollector(ctx, c.flip_prob, stream_seed(c.seed, "loop:single"))
    rows = panel.post(1, prompts, groups, [["sft"] * len(g) for g in groups]).rows
    rm_dir = train_rm(ctx, rows, [(p, x) for p, g in zip(prompts, groups) for x in g], sft, out / "reward", progress)
    scale = cfg.rounds if cfg.policy_init == "last" else 1
    policy = train_policy(ctx, cfg.method, sft, rm_dir, out / "policy", scale, progress)
    sft_lm, tok = load_frozen_lm(sft, c.bf16), load_tokenizer(sft)
    m = measure(ctx, load_frozen_lm(policy, c.bf16), tok, sft_lm, eval_prompts, cfg.eval_samples,
                stream_seed(c.seed, "loop:eval"), "single round: policy on the eval prompts", progress)
    res = {"new_preferences": len(rows), "policy_steps_scale": scale, "policy": str(policy), **m.summary(),
           **reward_on(load_scorer(rm_dir, c.bf16), m), "seconds": round(time.perf_counter() - t, 1)}
    echo(f"   one round, same budget ({n} rankings): gold {res['gold']:+.3f}, proxy {res['proxy']:+.3f}, KL {res['kl']:.2f}, "
         f"reward-model accuracy on policy samples {_fmt(res['rm_accuracy'])}")
    return res
