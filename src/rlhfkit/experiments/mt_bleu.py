"""``rlhfkit experiment mt-bleu``: the lecture's RL-for-text point on machine translation, measured.

MLE (SFT) on the toy translation task's training pairs, then, from the same MLE checkpoint and at equal
sample budgets (steps x prompts x K samples), REINFORCE with sentence BLEU as the reward:

  reinforce_no_baseline    -R log p(y|x)
  reinforce_baseline       -(R - b) log p(y|x), b = leave-one-out mean of the prompt's other samples (RLOO)
  reinforce_baseline_mle   the same, plus alpha * MLE on reference pairs each step (the lecture's interpolation)

and the same two baseline variants from a weak start (an MLE model trained for a few steps only). Every model
translates the test set greedily; corpus BLEU and chrF (sacrebleu) go to ``results.json``, with the
policy-gradient variance measured on the same batches with and without the baseline (the baseline run's
``pg_grad_variance`` and ``pg_grad_variance_no_baseline``, averaged over its steps), dev BLEU over steps
(each checkpoint translates the dev set) and ``dev_bleu.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.atomic import atomic_path, atomic_write
from rlhfkit.config import ReinforceConfig, SFTConfig, opt
from rlhfkit.data import write_jsonl

TASK = "toy_translation"


@dataclass
class MTExperimentConfig:
    out: str = opt("runs/mt_bleu", "Experiment directory.")
    model: str = opt("smollm2-135m", "Initial model.")
    seed: int = opt(0, "Seed of every run.")
    mle_steps: int = opt(60, "MLE (SFT) optimiser steps of the MLE start.")
    weak_mle_steps: int = opt(15, "MLE steps of the weak start.")
    mle_batch_size: int = opt(16, "MLE examples per step.")
    mle_lr: float = opt(5e-4, "MLE learning rate.")
    rl_steps: int = opt(16, "REINFORCE iterations of each variant (equal sample budgets).")
    rl_batch_size: int = opt(4, "Prompts per REINFORCE iteration.")
    samples_per_prompt: int = opt(4, "K samples per prompt.")
    rl_lr: float = opt(5e-5, "REINFORCE learning rate.")
    mle_coef: float = opt(10.0, "alpha of the MLE interpolation variants. The reward is in BLEU points (0-100), so the leave-one-out advantages are ~10 in size; alpha 10 weighs the MLE term like the policy-gradient term.")
    grad_variance_samples: int = opt(16, "Sequences of each batch on which the baseline run (from the MLE start) measures the "
                                         "policy-gradient variance with and without its baseline; the other runs skip it.")
    max_new_tokens: int = opt(32, "Longest translation.")
    eval_every: int = opt(8, "Translate the dev set with every eval_every-th checkpoint (the dev BLEU curve).")
    dev_sentences: int = opt(100, "Dev sentences translated per curve point.")
    test_sentences: int = opt(200, "Test sentences translated per model.")
    gen_batch_size: int = opt(64, "Sequences per generation batch.")
    system_prompt: str | None = opt(None, "System message of the chat template.")


PRESETS = {
    "full": {},
    "smoke": dict(model="tiny", mle_steps=8, weak_mle_steps=1, mle_batch_size=8, mle_lr=1e-3, rl_steps=4, rl_batch_size=4,
                  samples_per_prompt=2, rl_lr=1e-3, max_new_tokens=12, eval_every=2, dev_sentences=8, test_sentences=8,
                  gen_batch_size=32),
}

VARIANTS = {  # name -> (baseline, mle interpolation)
    "reinforce_no_baseline": ("none", False),
    "reinforce_baseline": ("leave_one_out", False),
    "reinforce_baseline_mle": ("leave_one_out", True),
}


def translate(model_path, sources: list[str], cfg: MTExperimentConfig) -> list[str]:
    """Greedy translations of ``sources`` by the model at ``model_path`` (framed by the task's instruction)."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks import load_task

    task = load_task(TASK)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, batch_size=cfg.gen_batch_size,
                           system_prompt=cfg.system_prompt)
    ro = generate(load_frozen_lm(model_path, False), load_tokenizer(model_path), [task.format_prompt(s) for s in sources], gen, seed=cfg.seed)
    return [r.strip() for r in ro.responses]


def scores(model_path, rows: list[dict], cfg: MTExperimentConfig) -> dict:
    """Corpus BLEU and chrF of the model's greedy translations of ``rows`` ({prompt, reference})."""
    from rlhfkit.eval.mt import corpus_bleu, corpus_chrf

    hyps = translate(model_path, [r["prompt"] for r in rows], cfg)
    refs = [r["reference"] for r in rows]
    return {"bleu": corpus_bleu(hyps, refs), "chrf": corpus_chrf(hyps, refs)}


def _mle(cfg: MTExperimentConfig, out: Path, data: Path, steps: int, progress: bool) -> Path:
    from rlhfkit.train.sft import train_sft

    return train_sft(SFTConfig(model=cfg.model, data=str(data), out=str(out), max_steps=steps, batch_size=cfg.mle_batch_size,
                               lr=cfg.mle_lr, system_prompt=cfg.system_prompt, seed=cfg.seed, mixed_precision="auto"),
                     progress=progress)


def _reinforce(cfg: MTExperimentConfig, start: Path, out: Path, baseline: str, mle: bool, prompts: Path, data: Path,
               progress: bool, variance: bool = False) -> Path:
    from rlhfkit.train.reinforce import train_reinforce

    rc = ReinforceConfig(model=str(start), reward_task=f"{TASK}:bleu", prompts=str(prompts), out=str(out), steps=cfg.rl_steps,
                         batch_size=cfg.rl_batch_size, samples_per_prompt=cfg.samples_per_prompt, baseline=baseline,
                         mle_coef=cfg.mle_coef if mle else 0.0, mle_data=str(data), lr=cfg.rl_lr,
                         max_new_tokens=cfg.max_new_tokens, system_prompt=cfg.system_prompt, seed=cfg.seed,
                         save_every=cfg.eval_every, mixed_precision="auto",
                         grad_variance_samples=cfg.grad_variance_samples if variance else 0)
    return train_reinforce(rc, progress=progress)


def dev_curve(run: Path, start_scores: dict, dev: list[dict], cfg: MTExperimentConfig) -> list[dict]:
    """Dev BLEU at step 0 (``start_scores``: the start model's, shared by the runs from it) and at each saved
    checkpoint of a REINFORCE run."""
    points = [{"step": 0, **start_scores}]
    for ckpt in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        if (ckpt / "model" / "config.json").exists():  # a checkpoint's model folder (full parameters, no LoRA)
            points.append({"step": int(ckpt.name.split("-")[1]), **scores(ckpt / "model", dev, cfg)})
    return points


def _mean_metric(run: Path, key: str) -> float | None:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([p["step"] for p in pts], [p["bleu"] for p in pts], marker="o", label=name)
    ax.set_xlabel("REINFORCE step")
    ax.set_ylabel("dev BLEU (greedy)")
    ax.set_title("toy translation: REINFORCE with a BLEU reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def run_mt_experiment(cfg: MTExperimentConfig, progress: bool = True, echo=print) -> dict:
    """Run the experiment (see the module docstring); writes and returns ``results.json``."""
    from rlhfkit.tasks import load_task
    from rlhfkit.tasks.toy_translation import read_dev

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(TASK)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # MLE data: the training pairs framed as the policy sees them; RL prompts: the unlabeled split
    data = write_jsonl(out / "data" / "mle.jsonl", [{"prompt": task.format_prompt(r["prompt"]), "completion": r["completion"]}
                                                     for r in task.splits["sft"]])
    prompts = write_jsonl(out / "data" / "rl_prompts.jsonl", [{"prompt": task.format_prompt(r["prompt"])} for r in task.splits["unlabeled"]])
    dev = read_dev()[: cfg.dev_sentences]
    test = [{"prompt": r["prompt"], "reference": r["reference"]} for r in task.splits["eval"]][: cfg.test_sentences]

    def timed(name, fn):
        t = time.perf_counter()
        res = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        echo(f"   {name} done in {timings[name]:.0f} s")
        return res

    starts = {"mle": timed("mle", lambda: _mle(cfg, out / "mle", data, cfg.mle_steps, progress)),
              "weak": timed("weak_mle", lambda: _mle(cfg, out / "weak_mle", data, cfg.weak_mle_steps, progress))}
    results: dict = {"variants": {"mle": scores(starts["mle"], test, cfg)}, "weak_start": {"mle": scores(starts["weak"], test, cfg)}}
    curves: dict[str, list[dict]] = {}
    runs: dict[str, Path] = {}
    for start_name, start in starts.items():
        start_dev = scores(start, dev, cfg)  # step 0 of every curve from this start
        for name, (baseline, mle) in VARIANTS.items():
            if start_name == "weak" and baseline == "none":
                continue  # the weak start compares interpolation, with the baseline
            label = name if start_name == "mle" else f"weak_{name}"
            variance = label == "reinforce_baseline"  # the variances reported come from this run's batches
            runs[label] = timed(label, lambda: _reinforce(cfg, start, out / label, baseline, mle, prompts, data, progress, variance))
            table = results["variants"] if start_name == "mle" else results["weak_start"]
            table[name] = scores(runs[label], test, cfg)
            curves[label] = dev_curve(out / label, start_dev, dev, cfg)
    results["grad_variance"] = {
        "no_baseline": _mean_metric(out / "reinforce_baseline", "pg_grad_variance_no_baseline"),
        "baseline": _mean_metric(out / "reinforce_baseline", "pg_grad_variance"),
    }
    results["dev_bleu"] = curves
    results["timings"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    results["settings"] = dataclasses.asdict(cfg)
    atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    plot(curves, out / "dev_bleu.png")
    return results
