"""RLOO, REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), as a method
of its own: ``train/reinforce.py``'s trainer with the leave-one-out baseline and the per-token KL penalty
inside the sequence reward on by default (``RLOOConfig``). Each of a prompt's K samples is judged against
the mean reward of the other K-1: an unbiased baseline that costs no critic.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.config import RLOOConfig
from rlhfkit.scoring import RewardFn
from rlhfkit.train.reinforce import ReinforceTrainer, check_config, run_trainer


class RLOOTrainer(ReinforceTrainer):
    """``ReinforceTrainer`` under its own name; the method is in the config (``RLOOConfig``)."""

    name = "RLOO"


def train_rloo(cfg: RLOOConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """RLOO of ``cfg.model`` on the prompts in ``cfg.prompts`` against a reward, the KL penalty
    (``cfg.kl_coef``, default 0.05) inside the reward; writes what ``train_reinforce`` writes (policy,
    config.yaml, metrics.jsonl, ``checkpoint-N``) into ``cfg.out``. Returns the run directory.

    Example::

        out = train_rloo(RLOOConfig(model="runs/sft", prompts="prompts.jsonl", reward_model="runs/reward", out="runs/rloo"))
    """
    if cfg.baseline != "leave_one_out":
        raise ValueError(f"--baseline {cfg.baseline!r}: rlhfkit rloo is REINFORCE with the leave_one_out baseline; "
                         "for other baselines use rlhfkit reinforce")
    check_config(cfg, reward_given=reward_fn is not None)
    return run_trainer(RLOOTrainer, cfg, reward_fn, progress)
