"""GRPO, group relative policy optimisation (Shao et al. 2024, DeepSeekMath), on the REINFORCE trainer's
skeleton (``train/reinforce.py``: sampling K responses per prompt, scoring, the reference pass, the
prompt shared by a group's rows in the update, checkpoints and resume).

for iteration = 1, 2, ...:
  1. sample a group of K responses to each prompt of a batch from the current policy pi_old
  2. score them (reward model, callable or a task's metric); no KL inside the reward
  3. advantages A_i = (r_i - mean(r_group)) / (std(r_group) + eps), one per response, at each of its tokens
  4. grpo_epochs passes of minibatch steps (whole groups) on PPO's clipped ratio objective to pi_old, plus
     beta times the k3 estimate of KL(pi || pi_ref) per token in the loss
No value network: a response's group is its baseline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.config import GRPOConfig
from rlhfkit.forward import forward_response
from rlhfkit.rollout import Rollout
from rlhfkit.scoring import RewardFn
from rlhfkit.train.common import Timer
from rlhfkit.train.reinforce import ReinforceTrainer, check_sampling, run_trainer, whole_groups


def check_config(cfg: GRPOConfig, reward_given: bool = False) -> None:
    """Refuse options that cannot work, naming the option, before anything is loaded."""
    if cfg.samples_per_prompt < 2:
        raise ValueError(f"--samples-per-prompt must be >= 2 for GRPO (each reward is normalised within its prompt's "
                         f"group of samples), got {cfg.samples_per_prompt}")
    if cfg.grpo_epochs < 1 or cfg.minibatch_size < 1:
        raise ValueError(f"--grpo-epochs ({cfg.grpo_epochs}) and --minibatch-size ({cfg.minibatch_size}) must be at least 1")
    if not 0.0 < cfg.clip_eps < 1.0:
        raise ValueError(f"--clip-eps must be in (0, 1), got {cfg.clip_eps}")
    if cfg.scale_rewards and cfg.adv_eps <= 0:
        raise ValueError(f"--adv-eps must be > 0 with --scale-rewards (a group of equal rewards has std 0), got {cfg.adv_eps}")
    if cfg.loss_aggregation not in ops.GRPO_AGGREGATIONS:
        raise ValueError(f"--loss-aggregation {cfg.loss_aggregation!r}: expected one of {', '.join(ops.GRPO_AGGREGATIONS)}")
    check_sampling(cfg, reward_given)


class GRPOTrainer(ReinforceTrainer):
    """``ReinforceTrainer``'s policy, reference, sampling, scoring, MLE term and loop, with GRPO's
    advantages and update. ``step()`` is one iteration, ``train()`` the whole run.

    Example::

        trainer = GRPOTrainer(GRPOConfig(model="runs/sft", prompts="prompts.jsonl", out="runs/grpo"),
                              reward_fn=lambda prompts, responses: [len(r) / 100 for r in responses],
                              prompts=["Review a film.", "Describe a play."])
        metrics = trainer.step()["metrics"]
    """

    name = "GRPO"

    def run_info(self) -> dict:
        return {"advantages": "group-normalised" if self.cfg.scale_rewards else "group-centred"}

    def rollout(self, timer: Timer):
        """``ReinforceTrainer.rollout``; in bf16 pi_old's log-probs are recomputed as the update computes them."""
        prompts, ro, scores, old_logp, ref_logp = super().rollout(timer)
        if self.bf16:
            # the ratio compares pi_old with the update's forward (transformers' under autocast, with gradient).
            # In fp32 the sampler's log-probs equal it within rounding, but in bf16 the sampler's rounding differs
            # (by up to a few tenths of a nat per token through the engine), which would start the ratios off 1 and
            # clip them: here pi_old is the update's own function, run once more without gradient (as PPO does)
            with timer("time_old_logprobs"):
                old_logp = self.update_logprobs(ro)
        return prompts, ro, scores, old_logp, ref_logp

    @torch.no_grad()
    def update_logprobs(self, ro: Rollout) -> torch.Tensor:
        """(B, T) log-probs of the sampled tokens under the current policy through the update's own forward
        (the same call, in minibatches of whole groups of the same size), without gradient; 0 at padding."""
        cfg = self.cfg
        per = whole_groups(cfg.minibatch_size, cfg.samples_per_prompt)
        out = [forward_response(self.policy, ro.prompt_ids[i : i + per], ro.prompt_mask[i : i + per],
                                ro.response_ids[i : i + per], ro.response_mask[i : i + per], temperature=cfg.temperature,
                                with_entropy=True, share_prompts=True)["logprobs"].float()
               for i in range(0, len(ro), per)]
        return torch.cat(out) * ro.response_mask.float()

    def update(self, ro: Rollout, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor) -> dict:
        """``cfg.grpo_epochs`` passes over the batch in minibatches of whole groups (in a fresh random
        order each pass), one optimiser step each on ``ops.grpo_loss`` (+ ``mle_coef`` times the MLE term
        on the next reference pairs); the ratio is to ``old_logp``, the log-probs the samples were drawn
        with (in bf16, ``update_logprobs``). Returns the minibatch means of the loss parts and diagnostics."""
        cfg, acc, K = self.cfg, self.accelerator, self.cfg.samples_per_prompt
        mask = ro.response_mask.float()
        groups = len(ro) // K
        per = whole_groups(cfg.minibatch_size, K) // K  # groups per optimiser step
        within = torch.arange(K)
        sums: dict[str, float] = {}
        n = 0
        for epoch in range(cfg.grpo_epochs):
            order = torch.randperm(groups, generator=self.generator)
            for i in range(0, groups, per):
                rows = (order[i : i + per, None] * K + within).flatten().to(mask.device)
                m = mask[rows]
                # each group's prompt runs once, with gradient, for its K responses
                out = forward_response(self.policy, ro.prompt_ids[rows], ro.prompt_mask[rows], ro.response_ids[rows],
                                       ro.response_mask[rows], temperature=cfg.temperature, with_entropy=True,
                                       share_prompts=True)
                logp = out["logprobs"].float()
                loss, parts = ops.grpo_loss(logp, old_logp[rows], ref_logp[rows], advantages[rows], m, cfg.clip_eps,
                                            cfg.kl_coef, cfg.loss_aggregation)
                step = {k: float(v.detach()) for k, v in parts.items()}
                step["kl_loss"] = step.pop("kl")
                if self.mle_batches is not None:
                    mle = self.mle_term()
                    if cfg.mle_coef > 0:
                        loss = loss + cfg.mle_coef * mle
                    step.update(mle_loss=mle.item(), mle_logp=-mle.item())
                if not self.run.finite(f"step {self.step_count + 1} (epoch {epoch + 1}, minibatch {i // per + 1})", loss=loss):
                    continue  # no update on this minibatch
                acc.backward(loss)
                if cfg.max_grad_norm:
                    step["grad_norm"] = float(acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad()
                with torch.no_grad():
                    # k3 estimate of KL(pi_old || pi) after the previous steps on this batch (as PPO logs it)
                    step["approx_kl"] = ops.masked_mean(ops.kl_penalty(old_logp[rows], logp.detach(), "k3"), m).item()
                    step["entropy"] = ops.masked_mean(out["entropy"].float(), m).item()
                step["loss"] = float(loss.detach())
                for k, v in step.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        return {**{k: v / n for k, v in sums.items()}, "grpo_minibatches_done": n}

    def step(self) -> dict:
        """One GRPO iteration on the next batch of prompts. Returns ``{"metrics": ..., "timings": ...}``."""
        cfg, K = self.cfg, self.cfg.samples_per_prompt
        timer = Timer()
        # 1. sample  2. score (the KL term is in the loss, not in the reward)
        prompts, ro, scores, old_logp, ref_logp = self.rollout(timer)
        if (skipped := self.skip_nonfinite(scores, timer)) is not None:
            return skipped
        # 3. group-normalised advantages: each response against its prompt's other responses
        advantages = ops.grpo_advantages(scores.view(-1, K), cfg.adv_eps, cfg.scale_rewards).flatten()
        with timer("time_grad_variance"):
            variance = self.grad_variance(ro, advantages, scores) if cfg.grad_variance_samples else {}
        # 4. grpo_epochs of clipped minibatch steps
        with timer("time_update"):
            stats = self.update(ro, old_logp, ref_logp, advantages)
        self.step_count += 1
        metrics = {**self.sample_metrics(ro, scores, old_logp, ref_logp), "reward": scores.mean().item(),
                   "advantage_std": advantages.std().item() if len(advantages) > 1 else 0.0, **stats, **variance}
        n_tokens = int(ro.response_mask.sum())
        timings = {**timer.t, "tokens_per_s": n_tokens / max(timer.t["time_generate"], 1e-9)}
        self.last_samples = list(zip(prompts, ro.responses, scores.tolist()))
        return {"metrics": metrics, "timings": timings}


def train_grpo(cfg: GRPOConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """GRPO of ``cfg.model`` on the prompts in ``cfg.prompts`` against a reward; writes the policy (LoRA
    merged), config.yaml, metrics.jsonl (score, KL, loss parts, clip fraction, approx KL, entropy, ...) and
    ``checkpoint-N`` folders into ``cfg.out``.

    Args:
        cfg: the run; names the reward when ``reward_fn`` is not given: a reward model folder
            (``cfg.reward_model``), a ``module:function`` (``cfg.reward_fn``) or a task's metric
            (``cfg.reward_task``, 'TASK:METRIC').
        reward_fn: any ``(prompts, responses) -> (B,) scores``; overrides the config's reward.
        progress: show a progress bar.

    Returns the run directory.

    Example::

        out = train_grpo(GRPOConfig(model="runs/sft", prompts="prompts.jsonl", reward_model="runs/reward",
                                    samples_per_prompt=8, out="runs/grpo"))
    """
    check_config(cfg, reward_given=reward_fn is not None)
    return run_trainer(GRPOTrainer, cfg, reward_fn, progress)
