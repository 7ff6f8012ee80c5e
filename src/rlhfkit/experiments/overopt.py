"""``rlhfkit overopt``: reward-model over-optimisation measured as Gao et al. (2022) measure it.

From a pipeline run (its SFT policy, its reward model = the proxy, its task's noise-free judge = the gold
reward; the stages it lacks run first), on the task's first eval prompts:

  best-of-n   N = max_n candidates per prompt from the SFT policy, drawn once; n = 1, 2, 4, ..., N each pick
              by the proxy among disjoint blocks of n of them (``eval.overopt.bon_curve``); KL analytic
  RL          PPO from SFT against the proxy, once per KL coefficient (0 and the run's default); every
              ``eval_every`` updates the policy answers the eval prompts: KL to SFT estimated on those
              samples, gold and proxy reward

Rewards are reported as gains over the initial (SFT) policy (the R(d) of Gao et al.), each curve against the
initial policy as that curve measures it: best-of-n against the mean of all N candidates of every prompt (its
n = 1 point), RL against the RL runs' shared step-0 measurement (the same prompts and sampling seed as every
RL point: common random numbers, so sampling noise largely cancels in the differences); fitted against
d = sqrt(KL) (``eval.overopt``). ``refit`` recomputes gains, fits and figure from a study's points.jsonl
without a model. Writes, in ``out``:

  fits.json        {"bon": {"alpha","beta","r2",...}, "rl": {...}, "rl_runs", "proxy", "baseline", ...}
  points.jsonl     one row per point (also points.csv): method, n or run/step, kl, d, gold, proxy, their
                   standard errors over prompts, gold_gain, proxy_gain
  candidates.jsonl the best-of-n candidates per prompt with their gold, proxy and EOS flag (refits need no model)
  overopt.png      the figure: points and fitted curves, gold solid, proxy dashed
  rl/<run>/        each PPO run (metrics.jsonl logs the training batches' gold too)

With ``out`` inside the run (the default, RUN/overopt) the run's report (report.md/html) is rewritten with
the study's section.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import click

from rlhfkit.atomic import atomic_path, atomic_write
from rlhfkit.cli_options import dataclass_options, quiet_libraries, run_reporting_errors
from rlhfkit.config import opt


@dataclass
class OverOptConfig:
    run: str = opt("runs/demo", "Pipeline run directory with sft/ and reward/ (from `rlhfkit demo` or `rlhfkit pipeline`); the stages it lacks (sft, preferences, reward) run first.")
    out: str = opt("", "Study directory (empty: RUN/overopt, where the run's report finds it).")
    pipeline_preset: str = opt("demo", "Pipeline preset (demo, smoke) for a RUN without pipeline.yaml, whose stages must run first.")
    prompts: int = opt(32, "Eval prompts (the task's first ones) every point is measured on.")
    max_n: int = opt(64, "Candidates per prompt drawn for best-of-n; n runs over 1, 2, 4, ... up to it.")
    kl_coefs: str = opt("0,default", "KL coefficients (beta) of the RL runs, comma-separated: numbers, or 'default' for the run's ppo.init_kl_coef.")
    rl_steps: int = opt(20, "PPO iterations of each RL run (no max_kl stop: the study needs the policy to go far).")
    eval_every: int = opt(4, "Measure the PPO policy on the eval prompts after every N iterations (and before the first, and after the last).")
    rl_samples: int = opt(2, "Answers per eval prompt at each RL point.")
    rl_lr: float = opt(0.0, "PPO learning rate of the RL runs (0: the run's ppo.lr).")
    proxy: str = opt("reward", "The proxy reward that picks best-of-n's candidate and that PPO optimises: 'reward' (the run's reward model, centred) or 'conservative' (an ensemble of `ensemble` reward models trained as reward/ is, in RUN/reward_ensemble: mean - std_penalty * std over the members, Coste et al. 2023).")
    ensemble: int = opt(3, "proxy conservative: K, the reward models of the ensemble (RUN/reward_ensemble, trained when missing or of another K).")
    std_penalty: float = opt(1.0, "proxy conservative: lambda of mean - lambda * std over the ensemble's members.")
    seed: int = opt(0, "Seed of the sampling streams and the PPO runs (0: the run's seed).")
    refit: bool = opt(False, "Recompute the gains, fits, fits.json, plot and report from the study's points.jsonl in --out (or RUN/overopt) without running a model (e.g. after a change of the fitting rules).")
    candidates: str = opt("", "Best-of-n candidates to reuse instead of sampling them again: the candidates.jsonl of an earlier study of this run (the same prompts, at least max_n candidates each: the first max_n are taken, independent draws as the rest); their gold is reused and the proxy scores them anew (e.g. a --proxy conservative study after the plain one).")


PRESETS = {
    # best-of-64 on 32 prompts, 2 x 20 PPO steps of 32 prompts: 82 min on 2 AMD EPYC cores in fp32 (best-of-n
    # 21 min, RL 61 min; measured on the demo run); run it on a quiet machine
    "full": {},
    # the tiny model in well under 2 minutes (tests)
    "smoke": dict(run="runs/smoke", pipeline_preset="smoke", prompts=4, max_n=8, rl_steps=2, eval_every=1, rl_samples=1),
}

# name -> what it is; ``proxy_reward`` builds it
PROXIES = {"reward": "the run's reward model (reward/), centred so that SFT samples score mean 0",
           "conservative": "an ensemble of K reward models trained as reward/ is (RUN/reward_ensemble), each centred; "
                           "mean - lambda * std over the members (Coste et al. 2023)"}


def ensemble_dir(ctx, k: int) -> Path:
    """RUN/reward_ensemble: ``k`` reward models trained on the run's preferences with its reward section's
    settings and normalisation (its SFT samples), as reward/ is; trained when missing or of another K."""
    from rlhfkit.pipeline.stages import sft_reference
    from rlhfkit.train.reward import train_reward

    d = ctx.run / "reward_ensemble"
    spec = d / "ensemble.json"
    if not spec.exists() or json.loads(spec.read_text()).get("k") != k:
        rc = ctx.cfg.reward
        reference = sft_reference(Path(rc.data), Path(rc.reference)) if rc.reference else None
        train_reward(dataclasses.replace(rc, reference=reference, out=str(d), ensemble=k, resume=None), progress=ctx.progress)
    return d


def proxy_reward(ctx, name: str, ensemble: int = 3, std_penalty: float = 1.0):
    """The proxy reward ``name`` of the run in ``ctx``: a ``(prompts, responses) -> (B,) scores`` callable
    (``ensemble`` and ``std_penalty``: K and lambda of the conservative proxy)."""
    from rlhfkit.pipeline.context import reward_scorer

    if name == "reward":
        return reward_scorer(ctx)
    if name == "conservative":
        from rlhfkit.scoring import load_reward_model

        if ensemble < 2:
            raise ValueError(f"ensemble: the conservative proxy needs at least 2 reward models, got {ensemble}")
        return load_reward_model(ensemble_dir(ctx, ensemble), batch_size=64, bf16=ctx.cfg.bf16, center=True,
                                 std_penalty=std_penalty)
    raise ValueError(f"proxy: unknown proxy reward {name!r}; available: {', '.join(PROXIES)}")


def kl_coefficients(text: str, default: float) -> list[float]:
    """'0,default' -> [0.0, default]; distinct values, in order."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            v = default if part == "default" else float(part)
        except ValueError:
            raise ValueError(f"kl_coefs: expected numbers or 'default', got {part!r}") from None
        if v < 0:
            raise ValueError(f"kl_coefs: a KL coefficient must be >= 0, got {v}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("kl_coefs: give at least one KL coefficient")
    return out


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself when it is not a power of two."""
    if n < 1:
        raise ValueError(f"max_n must be at least 1, got {n}")
    ns = [2**k for k in range(n.bit_length()) if 2**k <= n]
    return ns + ([n] if ns[-1] != n else [])


def pipeline_config(cfg: OverOptConfig, echo=print):
    """The run's pipeline config (its saved pipeline.yaml, else the bundled config with ``pipeline_preset``),
    after running the stages the run lacks: sft, preferences, reward."""
    from rlhfkit.pipeline.config import bundled_config_path, load_pipeline_config, preset_overrides

    run = Path(cfg.run)
    saved = run / "pipeline.yaml"
    if saved.exists():  # its wired paths are wired again for this directory
        pcfg = load_pipeline_config(saved, {"out": str(run)}, allow_wired=True)
    else:
        pcfg = load_pipeline_config(bundled_config_path(), preset_overrides(cfg.pipeline_preset), {"out": str(run)})
    if not (run / "sft" / "config.json").exists():
        missing = ["sft", "preferences", "reward"]
    elif not (run / "reward" / "config.json").exists():
        missing = ([] if (run / "prefs" / "rankings.jsonl").exists() else ["preferences"]) + ["reward"]
    else:
        missing = []
    if missing:
        from rlhfkit.pipeline.stages import run_pipeline

        echo(f"{run} lacks {', '.join(missing)}: running the pipeline's stages first")
        run_pipeline(dataclasses.replace(pcfg, stages=",".join(missing)), echo=echo)
    if cfg.seed:
        pcfg = dataclasses.replace(pcfg, seed=cfg.seed)
    return pcfg


def measure(ctx, lm, tokenizer, prompts: list[str], k: int, seed: int, sft_lm, proxy, label: str, progress: bool) -> dict:
    """A policy on the eval prompts, ``k`` answers each at the eval temperature: KL to SFT (sampled: mean of
    log pi(y|x) - log pi_SFT(y|x) over its own samples), gold and proxy reward; means over prompts with
    standard errors over prompts (a prompt's answers averaged first); and the proxy's pairwise accuracy on
    pairs of one prompt's answers labelled by the gold (``proxy_accuracy``, over ``proxy_pairs``): how well
    the reward being optimised still orders the policy's own samples as it moves away from SFT."""
    import numpy as np

    from rlhfkit.pipeline.context import gen_config
    from rlhfkit.pipeline.evaluate import reference_logprobs
    from rlhfkit.scoring import as_scores
    from rlhfkit.train.best_of_n import sample_grouped

    c = ctx.cfg
    ro = sample_grouped(lm, tokenizer, prompts, k, gen_config(ctx, c.eval_temperature), seed, c.bf16, label, progress)
    expanded = [p for p in prompts for _ in range(k)]
    lp_sft = reference_logprobs(sft_lm, [ro], c.eval_temperature, c.bf16)[0]
    kl = ((ro.logprobs * ro.response_mask).sum(1) - lp_sft).cpu().numpy()
    gold = ctx.gold(expanded, ro.responses).cpu().numpy()
    prox = as_scores(proxy(expanded, ro.responses), len(expanded)).cpu().numpy()
    out = {}
    for key, v in (("kl", kl), ("gold", gold), ("proxy", prox)):
        per_prompt = np.asarray(v, dtype=np.float64).reshape(len(prompts), k).mean(1)
        out[key] = float(per_prompt.mean())
        out[f"{key}_se"] = float(per_prompt.std(ddof=1) / math.sqrt(per_prompt.size)) if per_prompt.size > 1 else None
    out["eos_rate"] = float(ro.ended.float().mean())
    if k >= 2:
        from rlhfkit.loop.measure import group_pair_accuracy

        acc = group_pair_accuracy(prox, gold, k)
        out["proxy_accuracy"], out["proxy_pairs"] = acc["accuracy"], acc["pairs"]
    return out


def candidate_accuracy(proxy, gold) -> dict:
    """The proxy's pairwise accuracy on pairs of one prompt's best-of-n candidates (SFT samples) labelled by the
    gold; ``proxy``, ``gold``: (prompts, candidates). {"proxy_accuracy", "proxy_pairs"}."""
    import numpy as np

    from rlhfkit.loop.measure import group_pair_accuracy

    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    acc = group_pair_accuracy(proxy.reshape(-1), gold.reshape(-1), proxy.shape[1])
    return {"proxy_accuracy": acc["accuracy"], "proxy_pairs": acc["pairs"]}


def reused_candidates(path: Path, run: Path, prompts: list[str], n: int):
    """(responses, gold (P, N), ended (P, N)) from an earlier study's candidates.jsonl: it must be of this
    run (its fits.json, when beside it, names the run) and hold at least ``n`` candidates for each of
    ``prompts``, in order; the first ``n`` of each are taken (each candidate is an independent draw, so a
    prefix is a sample of the same kind)."""
    import numpy as np

    from rlhfkit.data import prompt_json, read_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"candidates: {path} is not a file (an earlier study's candidates.jsonl)")
    fits = path.parent / "fits.json"
    if fits.exists():
        was = json.loads(fits.read_text()).get("settings", {}).get("run")
        if was and Path(was).resolve() != run.resolve():
            raise ValueError(f"candidates: {path} are samples of {was}'s SFT policy, not of {run}'s")
    rows = [r for _, r in read_jsonl(path)]
    if [r["prompt"] for r in rows] != [prompt_json(p) for p in prompts] or any(len(r["candidates"]) < n for r in rows):
        raise ValueError(f"candidates: {path} holds {len(rows)} prompts x {sorted({len(r['candidates']) for r in rows})} candidates; "
                         f"this study needs the same {len(prompts)} prompts (--prompts as in that study) x at least {n} (--max-n)")
    return ([c for r in rows for c in r["candidates"][:n]], np.array([r["gold"][:n] for r in rows], dtype=np.float64),
            np.array([r["ended"][:n] for r in rows], dtype=bool))


def run_overopt(cfg: OverOptConfig, progress: bool = True, echo=print) -> dict:
    """Run the study (see the module docstring); writes and returns fits.json's content."""
    if cfg.refit:  # before the imports below: a refit loads no model, so it needs neither torch nor the trainers
        return refit(cfg, echo)
    import numpy as np

    from rlhfkit.data import write_jsonl
    from rlhfkit.eval.overopt import bon_curve, distance
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.pipeline.context import Context, sample
    from rlhfkit.pipeline.seeds import stream_seed
    from rlhfkit.scoring import as_scores
    from rlhfkit.train.ppo import PPOTrainer

    if cfg.proxy not in PROXIES:
        raise ValueError(f"proxy: unknown proxy reward {cfg.proxy!r}; available: {', '.join(PROXIES)}")
    if cfg.prompts < 1 or cfg.rl_samples < 1 or cfg.eval_every < 1 or cfg.rl_steps < 0:
        raise ValueError("prompts, rl_samples and eval_every must be at least 1, rl_steps at least 0")
    ns = powers_of_two(cfg.max_n)
    t0, timings = time.perf_counter(), {}
    pcfg = pipeline_config(cfg, echo)
    betas = kl_coefficients(cfg.kl_coefs, pcfg.ppo.init_kl_coef)
    ctx = Context(pcfg, progress)
    c, run = ctx.cfg, ctx.run
    out = Path(cfg.out) if cfg.out else run / "overopt"
    out.mkdir(parents=True, exist_ok=True)
    proxy = proxy_reward(ctx, cfg.proxy, cfg.ensemble, cfg.std_penalty)
    prompts = ctx.frame(ctx.split("eval", cfg.prompts))
    P, N = len(prompts), cfg.max_n
    sft_path = run / "sft"
    sft_lm, tok = load_frozen_lm(sft_path, c.bf16), load_tokenizer(sft_path)

    # 1. best-of-n. One pass draws N candidates per prompt and every n reuses them: block 0 of n is "the
    # first n candidates", and each further disjoint block is one more draw of best-of-n (bon_curve). That
    # needs the candidates to be independent draws from the SFT policy: sample_grouped repeats each prompt N
    # times, and each row draws its own random numbers (its own stream, apart from the RL measurements').
    t = time.perf_counter()
    expanded = [p for p in prompts for _ in range(N)]
    if cfg.candidates:
        responses, gold, ended = reused_candidates(Path(cfg.candidates), run, prompts, N)
        echo(f"   best-of-n: reusing {P} x {N} candidates and their gold from {cfg.candidates}; the proxy scores them")
    else:
        ro = sample(ctx, sft_path, prompts, N, c.eval_temperature, stream_seed(c.seed, "overopt:best_of_n"),
                    f"overopt: {N} candidates per prompt", lm=sft_lm)
        responses = list(ro.responses)
        gold = ctx.gold(expanded, responses).cpu().numpy().astype(np.float64).reshape(P, N)
        ended = ro.ended.cpu().numpy().reshape(P, N)
    prox = as_scores(proxy(expanded, responses), P * N).cpu().numpy().astype(np.float64).reshape(P, N)
    # the pipeline's one rule for selection and optimisation: a candidate that never ended loses the penalty
    select = prox - c.ppo.missing_eos_penalty * (~ended)
    # the initial policy's expected reward: every candidate is a sample of it
    baseline = {"gold": float(gold.mean()), "proxy": float(prox.mean()), "samples": P * N, **candidate_accuracy(prox, gold),
                "what": "mean gold and proxy reward of all best-of-n candidates (samples of the SFT policy) on these prompts; "
                        "the proxy's pairwise accuracy on pairs of one prompt's candidates labelled by the gold"}
    write_jsonl(out / "candidates.jsonl", [
        {"prompt": p, "candidates": responses[i * N : (i + 1) * N], "gold": gold[i].tolist(), "proxy": prox[i].tolist(),
         "ended": ended[i].tolist()} for i, p in enumerate(prompts)])
    points = bon_curve(select, gold, prox, ns)
    timings["best_of_n"] = round(time.perf_counter() - t, 1)
    echo(f"   best-of-n: {P} prompts x {N} candidates, n = {', '.join(map(str, ns))} ({timings['best_of_n']:.0f} s)")

    # 2. RL: PPO against the proxy, measured on the eval prompts along the way. Every measurement uses one
    # seed (common random numbers: the curve shows the policy moving, not fresh sampling noise at each point);
    # the initial policy is measured once and is every run's step-0 point.
    train_prompts = ctx.frame(ctx.split("unlabeled"))
    unlabeled = write_jsonl(out / "data" / "unlabeled.jsonl", [{"prompt": p} for p in train_prompts])
    rl_seed = stream_seed(c.seed, "overopt:rl")
    t = time.perf_counter()
    initial = measure(ctx, sft_lm, tok, prompts, cfg.rl_samples, rl_seed, sft_lm, proxy, "overopt: initial policy", progress)
    echo(f"   initial policy: KL {initial['kl']:.2f}, gold {initial['gold']:+.3f}, proxy {initial['proxy']:+.3f}")
    for beta in betas:
        name = f"kl_coef={beta:g}"
        pc = dataclasses.replace(c.ppo, init_kl_coef=beta, max_kl=0.0, steps=cfg.rl_steps, save_every=0, resume=None,
                                 out=str(out / "rl" / name), prompts=str(unlabeled), lr=cfg.rl_lr or c.ppo.lr)
        rows = [{"method": "rl", "run": name, "kl_coef": beta, "step": 0, **initial}]

        def on_step(trainer, rows=rows, name=name, beta=beta):
            s = trainer.step_count
            if s % cfg.eval_every == 0 or s == cfg.rl_steps:
                # no progress bar of its own: PPO's is live (rich shows one live display at a time)
                m = measure(ctx, trainer.unwrapped.lm, trainer.tokenizer, prompts, cfg.rl_samples, rl_seed, sft_lm, proxy,
                            f"overopt: {name} after {s} updates", progress=False)
                rows.append({"method": "rl", "run": name, "kl_coef": beta, "step": s, **m})
                echo(f"   {name} step {s}: KL {m['kl']:.2f}, gold {m['gold']:+.3f}, proxy {m['proxy']:+.3f}")

        PPOTrainer(pc, proxy, train_prompts, gold_fn=ctx.gold, progress=progress).train(on_step=on_step)
        for r in rows:
            r["d"] = float(distance(r["kl"]))
        points += rows
    timings["rl"] = round(time.perf_counter() - t, 1)

    # 3. fits of the gains over the initial policy, files, figure
    result = {"baseline": baseline, "kl_coefs": betas,
              "timings": {**timings, "total": round(time.perf_counter() - t0, 1)},
              "settings": {**dataclasses.asdict(cfg), "run": str(run), "out": str(out), "task": c.task, "model": c.model,
                           "eval_temperature": c.eval_temperature, "missing_eos_penalty": c.ppo.missing_eos_penalty}}
    return write_study(out, run, points, result, echo)


NOTES = {"gains": "gold_gain/proxy_gain = reward minus the initial policy's, as each curve measures it: best-of-n's "
                  "baseline (the mean of all candidates), RL's rl_baseline (the RL runs' shared step-0 measurement, on "
                  "the same prompts and sampling seed as every RL point); the fits are of these",
         "kl": "best-of-n: log n - (n-1)/n; RL: sampled, log pi(y|x) - log pi_SFT(y|x) on the policy's own samples at the eval temperature",
         "rl": "rl pools every RL run's points; rl_runs fits each run alone"}


def write_study(out: Path, run: Path, points: list[dict], result: dict, echo=print) -> dict:
    """Gains (best-of-n over ``result["baseline"]``, RL over its step-0 point), fits, fits.json, points.jsonl/csv,
    the figure, and the run's report when ``out`` is RUN/overopt. Returns fits.json's content."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.eval.overopt import fit_all, plot_overopt, with_gains

    bon = [p for p in points if p["method"] == "bon"]
    rl = [p for p in points if p["method"] == "rl"]
    starts = [p for p in rl if p["step"] == 0]
    rl_baseline = {"gold": starts[0]["gold"], "proxy": starts[0]["proxy"],
                   "what": "the initial policy measured as every RL point is (same prompts, samples per prompt and seed)"} if starts else None
    points = with_gains(bon, result["baseline"]) + (with_gains(rl, rl_baseline) if rl_baseline else [])
    fits = fit_all(points)
    result = {**fits, **{k: v for k, v in result.items() if k not in fits}, "rl_baseline": rl_baseline, "notes": NOTES}
    write_jsonl(out / "points.jsonl", points)
    _write_csv(out / "points.csv", points)
    atomic_write(out / "fits.json", json.dumps(result, indent=2) + "\n")
    plot_overopt(points, fits, out / "overopt.png")
    if out.resolve() == (run / "overopt").resolve() and ((run / "winrates.json").exists() or (run / "samples").is_dir()):
        from rlhfkit.eval import write_report

        write_report(run)
        echo(f"   report rewritten with the study: {run / 'report.md'}")
    return result


def refit(cfg: OverOptConfig, echo=print) -> dict:
    """``--refit``: the study in ``cfg.out`` (or RUN/overopt) fitted again from its points.jsonl and fits.json
    (baseline, settings), with no model run."""
    from rlhfkit.data import read_jsonl

    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "overopt"
    if not (out / "points.jsonl").exists() or not (out / "fits.json").exists():
        raise FileNotFoundError(f"refit: {out} holds no study (points.jsonl and fits.json); run `rlhfkit overopt` first")
    old = json.loads((out / "fits.json").read_text())
    points = [r for _, r in read_jsonl(out / "points.jsonl")]
    if (out / "candidates.jsonl").exists() and "proxy_accuracy" not in old.get("baseline", {}):
        # a study from before the proxy's accuracy was recorded: its candidates hold what it needs
        cands = [r for _, r in read_jsonl(out / "candidates.jsonl")]
        old["baseline"] = {**old["baseline"], **candidate_accuracy([r["proxy"] for r in cands], [r["gold"] for r in cands])}
    run = Path(old.get("settings", {}).get("run") or cfg.run)
    echo(f"   refitting {len(points)} points in {out}")
    return write_study(out, run, points, old, echo)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _summary(fits: dict) -> str:
    def one(name, f):
        if f.get("alpha") is None:
            return f"{name}: no fit ({f.get('note')})"
        r2 = "n/a" if f["r2"] is None else f"{f['r2']:.3f}"
        return f"{name}: R(d) = {f['form']}, alpha {f['alpha']:.4g}, beta {f['beta']:.4g}, R² {r2} ({f['points']} points)"

    return "\n".join([one("best-of-n (gold)", fits["bon"]), one("RL (gold, runs pooled)", fits["rl"])]
                     + [one(f"RL {k} (gold)", v) for k, v in fits["rl_runs"].items()])


def command() -> click.Command:
    """``rlhfkit overopt``: --preset and one option per ``OverOptConfig`` field."""

    def callback(preset, **kw):
        quiet_libraries()
        cfg = OverOptConfig(**{**PRESETS[preset], **{k: v for k, v in kw.items() if v is not None}})
        fits = run_reporting_errors(run_overopt, cfg)
        click.echo(_summary(fits))
        click.echo(f"fits, points and plot written to {fits['settings']['out']}")

    params = [click.Option(["--preset"], type=click.Choice(list(PRESETS)), default="full", show_default=True,
                           help="full: the measured study (best-of-64, 2 x 20 PPO steps on SmolLM2; 82 min on a 2-core AVX2 CPU in fp32); "
                                "smoke: the tiny model, well under 2 minutes.")]
    return click.Command("overopt", params=params + dataclass_options(OverOptConfig), callback=callback,
                         help="Reward-model over-optimisation (Gao et al. 2022): gold and proxy reward gain over SFT against "
                              "d = sqrt(KL) for best-of-n (n = 1..max_n) and PPO with and without a KL penalty; least-squares "
                              "fits of d(alpha - beta d) and d(alpha - beta log d); fits.json, points.jsonl/csv, overopt.png.")
