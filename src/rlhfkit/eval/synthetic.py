"""A synthetic run directory, for tests and for demonstrating the report.

THE NUMBERS ARE MADE UP. Nothing here trains or evaluates a model: it writes files
shaped exactly like the pipeline's (samples/*.jsonl, ppo/metrics.jsonl, overopt.jsonl)
from a seeded random generator so that the report can be developed and tested without
a run. Every sample carries ``"synthetic": true`` so it can never pass for a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Probability of winning against the reference, per method (ties are drawn separately).
DEFAULT_WIN_P = {
    "initial": None,  # the reference against itself: always a tie
    "sft": 0.52,
    "best_of_n": 0.62,
    "expert_iteration": 0.57,
    "ppo": 0.66,
}


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_synthetic_run(
    run_dir: Path | str,
    seed: int = 0,
    n_prompts: int = 200,
    methods: dict[str, float | None] | None = None,
    ppo_steps: int = 60,
    with_overopt: bool = True,
) -> Path:
    """Writes a fake run to run_dir and returns it.

    methods: {NAME: probability of a win against "initial"} (None = always a tie);
      default DEFAULT_WIN_P. Outcomes share a per-prompt difficulty so that methods are
      correlated across prompts, as real ones are (this is what pairing exploits).
    ppo_steps: rows in ppo/metrics.jsonl (0 writes no PPO metrics at all).
    with_overopt: also write overopt.jsonl (gold rises then falls as KL grows).
    """
    run_dir = Path(run_dir)
    rng = np.random.default_rng(seed)
    methods = DEFAULT_WIN_P if methods is None else methods
    prompts = [f"Prompt {i}: write a short, positive review of product #{i}." for i in range(n_prompts)]
    # One prompt carries markup, to exercise HTML escaping in the report.
    prompts[0] = "Explain what <script>alert('x')</script> does & why it is dangerous."
    difficulty = rng.normal(0.0, 1.0, n_prompts)
    for m_idx, (name, p_win) in enumerate(methods.items()):
        rows = []
        kl_scale = 0.0 if name == "initial" else 2.0 + 3.0 * m_idx
        for i, prompt in enumerate(prompts):
            if p_win is None:
                outcome = 0.5
            else:
                # Shift the win probability by prompt difficulty (shared by all methods).
                p = float(np.clip(p_win - 0.15 * difficulty[i], 0.02, 0.98))
                u = rng.random()
                outcome = 0.5 if u < 0.08 else (1.0 if u < 0.08 + 0.92 * p else 0.0)
            length = int(rng.integers(8, 60))
            response = f"[{name}] response {i}: " + " ".join(["great"] * (length // 6))
            if i == 0:
                response = f"<script>alert('{name}')</script> & <b>not bold</b>"
            rows.append(
                {
                    "prompt": prompt,
                    "response": response,
                    "gold": float(0.3 * (p_win or 0.5) + 0.1 * rng.normal()),
                    "proxy": float((p_win or 0.5) - 0.5 + 0.2 * rng.normal()),
                    "kl": float(abs(kl_scale + rng.normal())) if kl_scale else 0.0,
                    "length": length,
                    "outcome": outcome,
                    "synthetic": True,
                }
            )
        _write_jsonl(run_dir / "samples" / f"{name}.jsonl", rows)

    if ppo_steps > 0:
        rows = []
        for s in range(ppo_steps):
            t = s / max(ppo_steps - 1, 1)
            kl = 12.0 * t**1.5 + 0.05 * rng.random()
            # Gao et al. 2022 shape: gold = d(a - b d) with d = sqrt(KL); proxy keeps rising.
            d = np.sqrt(kl)
            rows.append(
                {
                    "step": s,
                    "score": float(0.6 * d + 0.05 * rng.normal()),
                    "gold": float(d * (0.5 - 0.12 * d) + 0.03 * rng.normal()),
                    "kl_k1": float(kl),
                    "kl_k3": float(kl * 0.9),
                    "entropy": float(2.5 - 1.2 * t + 0.05 * rng.normal()),
                    "policy_loss": float(-0.01 + 0.01 * rng.normal()),
                    "value_loss": float(0.2 * np.exp(-3 * t) + 0.01 * rng.random()),
                    "clip_frac": float(0.05 + 0.1 * t * rng.random()),
                    "approx_kl": float(0.01 * rng.random()),
                    "explained_var": float(0.9 * (1 - np.exp(-5 * t))),
                    "response_length": float(40 + 10 * t + rng.normal()),
                    "eos_rate": float(0.9 - 0.1 * t),
                    "kl_coef": 0.05,
                    "time_generate": 3.0,
                    "time_reward": 0.5,
                    "time_ref_values": 0.8,
                    "time_update": 4.0,
                    "tokens_per_s": float(150 + 5 * rng.normal()),
                }
            )
        _write_jsonl(run_dir / "ppo" / "metrics.jsonl", rows)

    if with_overopt:
        pts = []
        for s in range(0, max(ppo_steps, 10), 5):
            kl = 0.2 * s
            d = np.sqrt(kl)
            pts.append({"kl": kl, "gold": float(d * (0.5 - 0.12 * d)), "proxy": float(0.6 * d), "step": s})
        _write_jsonl(run_dir / "overopt.jsonl", pts)
    return run_dir
