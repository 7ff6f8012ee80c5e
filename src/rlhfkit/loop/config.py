"""``rlhfkit loop``'s options (one dataclass: flags, ``--config FILE.yaml`` and ``--preset``, as every command)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rlhfkit.config import opt

METHODS = ("ppo", "rloo", "grpo", "reinforce")


@dataclass
class LoopConfig:
    """Iterated RLHF: rounds of preferences on current-policy samples, a refreshed reward model, more policy training."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # the tiny model on the bundled task in about a minute (the pipeline's smoke settings)
        "smoke": dict(out="runs/loop_smoke", pipeline_preset="smoke", rounds=2, prefs_per_round=8, eval_prompts=4,
                      eval_samples=2),
    }

    out: str = opt("runs/loop", "Run directory: sft/ (unless --sft), round-N/ (rankings, reward model, policy), rounds.jsonl, loop.png, loop_state.json.")
    pipeline_config: str = opt("", "Pipeline YAML (`rlhfkit pipeline`'s: model, task, flip_prob, pref_k and the method sections sft/reward/ppo/rloo/grpo); empty: the bundled demo config.")
    pipeline_preset: str = opt("demo", "Pipeline preset over that config (demo, smoke; empty: none, the config as it is).")
    task: str = opt("", "Task (bundled name or folder) instead of the pipeline config's.")
    sft: str = opt("", "SFT model to start from (a folder); empty: the pipeline's sft stage trains one into OUT/sft.")
    rounds: int = opt(3, "Rounds: each collects preferences on the current policy's samples, retrains the reward model from SFT on the mix, then trains the policy against it.")
    method: str = opt("ppo", f"Policy optimiser of every round: {', '.join(METHODS)} (the pipeline section of that name holds its settings; reinforce takes rloo's, without its KL penalty).")
    policy_init: str = opt("last", "Where each round's policy starts: 'last' (the previous round's policy, which is also the KL reference of that round's trainer) or 'sft' (from SFT against each refreshed reward model).")
    prefs_per_round: int = opt(32, "Preference prompts labelled per round (the round's annotation budget); round r takes the r-th block of the task's preference split (wrapping around).")
    pref_k: int = opt(0, "Responses per preference prompt, ranked together (0: the pipeline's pref_k); the app's pairwise tasks need 2.")
    old_fraction: float = opt(1.0, "Share of the earlier rounds' rankings kept (a seeded random subset) beside the new ones when the reward model is retrained: 1 keeps all, 0 trains on this round's only.")
    eval_prompts: int = opt(32, "Eval prompts (the task's first) every policy is measured on: gold and proxy reward, KL to SFT, reward-model accuracy on pairs of its samples labelled by the noise-free gold.")
    eval_samples: int = opt(4, "Samples per eval prompt (>= 2: the reward-model accuracy is over pairs of one prompt's samples).")
    compare_single: bool = opt(False, "Also run the one-round baseline with the same total annotation budget (rounds x prefs_per_round rankings of SFT samples) and the same policy updates; written beside the rounds (baseline.json) and in the plot.")
    feedback_db: str = opt("", "Feedback app database URL: each round's preferences come from people labelling blind tasks in the app (the loop waits for them); empty: the task's simulated judge ranks them.")
    app_kind: str = opt("ranking", "Task kind in the app: ranking (of pref_k responses) or pairwise (pref_k must be 2).")
    labels_per_task: int = opt(1, "App: labels needed per task before the round goes on (more that arrive are used too).")
    timeout: float = opt(3600.0, "App: seconds to wait for a round's labels; then the loop stops cleanly (state 'timed_out', the rounds so far kept).")
    poll: float = opt(2.0, "App: seconds between counts of the labels in.")
    label_ahead: bool = opt(False, "Post round r+1's candidate groups (sampled from the policy round r starts from) as soon as round r's labels are in, so that people label while round r's reward model and policy train; the labels are one round stale (on pi_{r-1}'s samples, not pi_r's). Off: round r+1's groups come from pi_r, and people label while pi_r is measured.")
    active_learning: bool = opt(False, "Label first the candidate groups the reward-model ensemble disagrees on most (needs an ensemble reward model: reward.ensemble >= 2 in the pipeline config); from rounds 2 on.")
    pool_factor: int = opt(2, "Active learning: candidate groups sampled per group labelled; the most-disagreed prefs_per_round are kept (the app shows them most-disagreed first); round-N/candidates.jsonl lists the pool with each group's disagreement.")
    seed: int = opt(0, "Seed (0: the pipeline's).")
