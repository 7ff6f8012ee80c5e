"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022; Huang et al. 2024, "The N+
implementation details of RLHF with PPO").

for iteration = 1, 2, ...:
  1. sample responses from the current policy pi_old (left-padded prompts, rows stop at EOS)
  2. score them: reward model (or any callable) at the last token, minus beta * KL to the frozen
     initial policy at every token -- the KL penalty lives inside the reward
  3. estimate advantages with GAE from the critic's values; whiten them
  4. optimise the clipped objective for K epochs of minibatches; pi_old <- pi
The actor and critic share one backbone (a value head on the last hidden state). With ``ptx_coef`` each
minibatch loss also gets ``ptx_coef * (-mean log p(y*|x))`` on a batch of reference pairs (PPO-ptx,
Ouyang et al. 2022), which keeps the policy close to the demonstrations it was fine-tuned on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from rlhfkit import ops
from rlhfkit.atomic import atomic_json, atomic_path
from rlhfkit.config import PPOConfig
from rlhfkit.data import load_prompts, load_sft
from rlhfkit.forward import autocast_context, forward_response, prompt_format
from rlhfkit.models import PolicyWithValue, is_peft, load_causal_lm, load_tokenizer
from rlhfkit.rollout import GenerationConfig, Rollout, generate
from rlhfkit.scoring import RewardFn, as_scores, load_reward
from rlhfkit.train.common import Timer, make_optimizer, resolve_config_precision, save_model
from rlhfkit.train.run import TrainingRun
from rlhfkit.train.sft import encode_sft_batch


class KLController:
    """Fixed beta, or Ziegler et al.'s adaptive controller:
    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n / horizon).

    Args:
        init: the starting beta (``value``).
        adaptive: adapt beta towards ``target``; otherwise ``update`` leaves it alone.
        target: the KL to the reference (nats per sequence) the controller steers to.
        horizon: samples over which a full step of +-20% accumulates.

    Example::

        kl_ctl = KLController(0.05, adaptive=True, target=6.0)
        kl_ctl.update(kl=9.0, n_samples=64)  # KL over target: beta *= 1 + 0.2 * 64 / 10000
        beta = kl_ctl.value
    """

    def __init__(self, init: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value, self.adaptive, self.target, self.horizon = init, adaptive, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        """After a batch of ``n_samples`` whose measured KL (nats per sequence) was ``kl``."""
        if self.adaptive:
            err = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + err * n_samples / self.horizon


class PPOTrainer:
    """Holds the policy+value model, the reference, the optimiser and the loop state; ``step()`` is one
    PPO iteration, ``train()`` the whole run. Its plumbing (accelerator, seeds, resume, checkpoints,
    metrics, progress) is ``self.run``, a ``TrainingRun``.

    Args:
        cfg: the policy (model, LoRA), the sampling (max_new_tokens, temperature, top_p) and PPO's
            settings (steps, batch_size, minibatch_size, ppo_epochs, KL coefficient and controller, clip
            ranges, max_kl, ...); ``cfg.resume`` continues a run from its last checkpoint.
        reward_fn: any ``(prompts, responses) -> (B,) scores`` (``rlhfkit.scoring``).
        prompts: the prompts a batch is drawn from (as ``load_prompts`` reads them).
        gold_fn: optional, same shape; only logged, never optimised -- it draws the over-optimisation curve.
        progress: show a progress bar.

    Example::

        trainer = PPOTrainer(PPOConfig(model="runs/sft", prompts="prompts.jsonl", out="runs/ppo", steps=50),
                             reward_fn=lambda prompts, responses: torch.tensor([len(r) / 100 for r in responses]),
                             prompts=["Review a film.", "Describe a play."])
        metrics = trainer.step()["metrics"]  # one iteration; or trainer.train() for cfg.steps of them
    """

    def __init__(self, cfg: PPOConfig, reward_fn: RewardFn, prompts: list[str], gold_fn: RewardFn | None = None,
                 progress: bool = True):
        self.cfg, self.reward_fn, self.gold_fn, self.prompts = cfg, reward_fn, gold_fn, prompts
        if cfg.ptx_coef < 0 or (cfg.ptx_coef > 0 and not cfg.ptx_data):
            raise ValueError(f"--ptx-coef {cfg.ptx_coef}: must be >= 0, and > 0 needs --ptx-data (SFT-format JSONL of reference pairs)")
        # PPO-ptx's reference pairs, read before any model loads (a malformed line stops here)
        self.ptx = load_sft(cfg.ptx_data, cfg.chat_template) if cfg.ptx_coef > 0 else None
        self.run = TrainingRun(cfg, "PPO", progress=progress)
        self.out, self.accelerator, resume_ckpt = self.run.out, self.run.accelerator, self.run.resume_from
        self.tokenizer = load_tokenizer(cfg.model)
        lm = self.run.load_lm()
        self.policy = PolicyWithValue(lm)
        # the KL reference is cfg.model: with LoRA (adapters added on top of it) the same network with
        # adapters off; otherwise a frozen copy. Not "is_peft": a policy loaded from an adapter folder is a
        # peft model whose adapters-off network is the base *under* cfg.model (the pre-SFT model).
        self.ref = None if (cfg.lora_r > 0 and is_peft(lm)) else load_causal_lm(cfg.model, trainable=False)
        if resume_ckpt:
            self.policy.value_head.load_state_dict(load_file(str(resume_ckpt / "value_head.safetensors")))
        self.optimizer, _ = make_optimizer(self.policy.parameters(), cfg.lr, head=self.policy.value_head,
                                           head_lr=cfg.lr * cfg.value_lr_scale)
        self.policy, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        if self.ref is not None:
            self.ref.to(self.accelerator.device)
        if isinstance(getattr(reward_fn, "rm", None), torch.nn.Module):  # a RewardScorer: score where we sample
            reward_fn.rm.to(self.accelerator.device)
        self.kl_ctl = KLController(cfg.init_kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon)
        # each process samples its own share of a batch: batch_size prompts of batch_size * processes; the
        # shares must be equal, or the processes would take different numbers of minibatch steps
        P = self.run.processes
        if P > 1 and len(prompts) < cfg.batch_size * P:
            raise ValueError(f"{cfg.prompts}: {len(prompts)} prompts, fewer than batch_size {cfg.batch_size} x "
                             f"{P} processes")
        self.batches = self.run.batches(len(prompts), cfg.batch_size, drop_last=len(prompts) >= cfg.batch_size * P)
        self.generator = torch.Generator().manual_seed(cfg.seed + 7919 * self.accelerator.process_index)
        # its own order of the reference pairs: with ptx off nothing here draws a random number
        self.ptx_batches = self.run.batches(len(self.ptx), cfg.ptx_batch_size, cfg.seed + 1) if self.ptx else None
        self.gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                        batch_size=cfg.batch_size, system_prompt=cfg.system_prompt,
                                        chat_template=cfg.chat_template)
        self.bf16 = cfg.mixed_precision == "bf16"
        self.stopped: dict | None = None  # {reason, saved} of a run resumed after it had stopped at max_kl
        self.step_count = self.run.track(self.optimizer, batches=self.batches, generator=self.generator,
                                         save=lambda ckpt: self._save_model(ckpt / "model", ckpt, merge=False))
        if self.run.resumed:
            self.kl_ctl.value = self.run.resumed["kl_coef"]
            if self.ptx_batches is not None:
                self.ptx_batches.load(self.run.resumed["ptx_data"])
            if self.run.resumed.get("kl_snapshot") is not None:
                self._last_within_budget = self.run.resumed["kl_snapshot"]
            self.stopped = self.run.resumed.get("stopped")

    # ---- the pieces of one iteration ------------------------------------------------------------

    @property
    def unwrapped(self) -> PolicyWithValue:
        """The policy+value model without accelerate's wrapper."""
        return self.accelerator.unwrap_model(self.policy)

    def sample(self, prompts: list[str]) -> Rollout:
        """Responses of the current policy to ``prompts``, drawn with the trainer's generator."""
        return generate(self.unwrapped.lm, self.tokenizer, prompts, self.gen_cfg, generator=self.generator, bf16=self.bf16,
                        keep_hidden=self.cfg.old_from_sampling and not self.bf16)

    @torch.no_grad()
    def score_logprobs_values(self, ro: Rollout):
        """pi_old log-probs and values, and the reference's log-probs, at the sampling temperature.

        With ``old_from_sampling`` and hidden states kept by the sampler, pi_old's log-probs are the
        sampler's own (the same temperature, before top-p truncation, as a recomputation) and the values
        the value head on the sampler's hidden states: one policy forward pass fewer per iteration."""
        args = (ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        mb = max(self.cfg.minibatch_size, 1) * 2
        old_logp, values, ref_logp = [], [], []
        policy = self.unwrapped
        from_sampling = self.cfg.old_from_sampling and ro.hidden is not None
        policy.eval()
        for i in range(0, len(ro), mb):
            part = [a[i : i + mb] for a in args]
            with autocast_context(self.accelerator.device, self.bf16):
                if from_sampling:
                    o = {"logprobs": ro.logprobs[i : i + mb], "values": policy.value_head(ro.hidden[i : i + mb])}
                else:
                    o = forward_response(policy, *part, temperature=self.cfg.temperature, with_values=True)
                if self.ref is None:
                    with policy.lm.disable_adapter():
                        r = forward_response(policy.lm, *part, temperature=self.cfg.temperature)
                else:
                    r = forward_response(self.ref, *part, temperature=self.cfg.temperature)
            old_logp.append(o["logprobs"].float())
            values.append(o["values"].float())
            ref_logp.append(r["logprobs"].float())
        policy.train()
        mask = ro.response_mask.float()
        return torch.cat(old_logp) * mask, torch.cat(values) * mask, torch.cat(ref_logp) * mask

    def step(self) -> dict:
        """One PPO iteration on the next batch of prompts. Returns ``{"metrics": ..., "timings": ...}``,
        with ``"over_kl_budget": True`` (and no update made) when the batch's KL passed ``cfg.max_kl``."""
        cfg, acc = self.cfg, self.accelerator
        timer = Timer()
        idx, _ = self.run.share(self.batches.next())
        prompts = [self.prompts[i] for i in idx]
        # 1. sample
        with timer("time_generate"):
            ro = self.sample(prompts)
        mask = ro.response_mask.float()
        # 2. score (reward model or callable), then the per-token KL penalty inside the reward
        with timer("time_reward"):
            scores = as_scores(self.reward_fn(prompts, ro.responses), len(prompts)).to(mask.device)
            if cfg.missing_eos_penalty:
                scores = scores - cfg.missing_eos_penalty * (~ro.ended).float()
            gold = as_scores(self.gold_fn(prompts, ro.responses), len(prompts)) if self.gold_fn else None
        if not self.run.finite(f"step {self.step_count + 1}", reward=scores):
            self.step_count += 1  # the batch is used up, no update made on it
            return {"metrics": {}, "timings": timer.t, "skipped": True}
        with timer("time_ref_values"):
            old_logp, old_values, ref_logp = self.score_logprobs_values(ro)
        # KL to the reference (nats per sequence), both estimators, of the policy that drew this batch
        kl_k1 = (ops.kl_penalty(old_logp, ref_logp, "k1") * mask).sum(1).mean().item()
        kl_k3 = (ops.kl_penalty(old_logp, ref_logp, "k3") * mask).sum(1).mean().item()
        measured = {"score": scores.mean().item(), "kl_k1": kl_k1, "kl_k3": kl_k3,
                    "response_length": mask.sum(1).mean().item(), "eos_rate": ro.ended.float().mean().item()}
        if gold is not None:
            measured["gold"] = gold.mean().item()
        measured = self._reduce(measured)
        if cfg.max_kl and measured["kl_k1"] > cfg.max_kl:
            # the policy that drew these samples is past the KL budget: stop before updating it further
            # (train() then restores the last policy whose measured KL was within the budget)
            return {"metrics": {**measured, "updated": 0}, "timings": timer.t, "over_kl_budget": True}
        beta = self.kl_ctl.value
        rewards = ops.kl_shaped_rewards(scores, old_logp, ref_logp, mask, beta, kind=cfg.kl_penalty)
        if cfg.whiten_rewards:
            rewards = ops.masked_whiten(rewards, mask, shift_mean=False) * mask
        # 3. advantages (GAE), whitened over the batch
        advantages, returns = ops.gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = ops.masked_whiten(advantages, mask) * mask
        # 4. K epochs of minibatch updates (keeping pi_old's weights when a KL budget may call it back)
        if cfg.max_kl:
            self._snapshot_policy(measured["kl_k1"])
        with timer("time_update"):
            stats = self.update(ro, old_logp, old_values, advantages, returns)
        # the KL of the whole batch (reduced over processes), so that every process keeps the same beta
        self.kl_ctl.update(measured["kl_k1"], len(prompts) * acc.num_processes)
        self.step_count += 1
        n_tokens = int(mask.sum())
        metrics = {
            "score_std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl_coef": beta,
            "non_score_reward": (rewards.sum(1) - scores).mean().item(),
            "advantage_mean_raw": ops.masked_mean(returns - old_values, mask).item(),
            **stats,
        }
        metrics = {**measured, **self._reduce(metrics)}
        timings = {**timer.t, "tokens_per_s": n_tokens / max(timer.t["time_generate"], 1e-9)}
        self.last_samples = list(zip(prompts, ro.responses, scores.tolist()))
        return {"metrics": metrics, "timings": timings}

    def update(self, ro: Rollout, old_logp, old_values, advantages, returns) -> dict:
        """``cfg.ppo_epochs`` passes of clipped policy and value updates over minibatches of the rollout
        (all (B, T) but ``ro``); returns the minibatch-mean losses and diagnostics."""
        cfg, acc = self.cfg, self.accelerator
        mask = ro.response_mask.float()
        B = len(ro)
        mb = max(1, min(cfg.minibatch_size, B))
        sums: dict[str, float] = {}
        n_mb, epochs_done, stopped = 0, 0, False
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator).tolist()
            for i in range(0, B, mb):
                j = torch.tensor(perm[i : i + mb])
                m = mask[j]
                out = forward_response(self.policy, ro.prompt_ids[j], ro.prompt_mask[j], ro.response_ids[j],
                                       ro.response_mask[j], temperature=cfg.temperature, with_values=True, with_entropy=True)
                logp, values = out["logprobs"].float(), out["values"].float()
                with torch.no_grad():
                    log_ratio = (logp - old_logp[j]) * m
                    # k3 estimate of KL(pi_old || pi): unbiased and never negative (Schulman, "Approximating KL")
                    approx_kl = ops.masked_mean(torch.exp(log_ratio) - 1 - log_ratio, m).item()
                    if acc.num_processes > 1:  # one decision for all: a process that stopped alone would hang DDP
                        approx_kl = self.run.weighted_mean({"kl": approx_kl}, float(m.sum()))["kl"]
                # early stop per minibatch, before stepping on it (the N+ details; Stable-Baselines3): checked
                # only at epoch ends it never acts with one PPO epoch. The first minibatch always updates
                # (pi == pi_old there, approx KL 0).
                if cfg.target_kl and n_mb > 0 and approx_kl > cfg.target_kl:
                    stopped = True
                    break
                pg_loss, pg_clip = ops.ppo_policy_loss(logp, old_logp[j], advantages[j], m, cfg.clip_eps)
                vf_loss, vf_clip = ops.ppo_value_loss(values, old_values[j], returns[j], m, cfg.clip_eps_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if self.ptx_batches is not None:
                    ptx_loss = self.ptx_loss()
                    loss = loss + cfg.ptx_coef * ptx_loss
                    sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + float(ptx_loss.detach())
                if not self.run.finite(f"step {self.step_count + 1} (epoch {epoch + 1}, minibatch {i // mb + 1})", loss=loss):
                    continue  # no update on this minibatch
                acc.backward(loss)
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_frac", pg_clip),
                             ("value_clip_frac", vf_clip), ("entropy", ops.masked_mean(out["entropy"], m)),
                             ("approx_kl", approx_kl),
                             ("explained_var", ops.explained_variance(values.detach(), returns[j], m))):
                    v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                    if math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + v
                n_mb += 1
            epochs_done += 1
            if stopped:
                break  # the policy moved far enough from pi_old for this batch
        stats = {k: v / n_mb for k, v in sums.items()}
        stats["ppo_epochs_done"] = epochs_done
        stats["ppo_minibatches_done"] = n_mb
        return stats

    def ptx_loss(self) -> torch.Tensor:
        """PPO-ptx's term: -mean log p(y*|x) per token (the scale of SFT's loss and of the token-mean policy
        loss) on the next ``cfg.ptx_batch_size`` reference pairs, encoded as `rlhfkit sft` encodes them by
        default."""
        from types import SimpleNamespace

        from rlhfkit.config import SFTConfig

        cfg = self.cfg
        enc = SimpleNamespace(system_prompt=cfg.system_prompt, chat_template=cfg.chat_template,
                              max_prompt_tokens=SFTConfig.max_prompt_tokens, max_completion_tokens=SFTConfig.max_completion_tokens)
        batch = encode_sft_batch(self.tokenizer, [self.ptx[i] for i in self.run.share(self.ptx_batches.next())[0]], enc, self.accelerator.device)
        logp = forward_response(self.policy, *batch[:4], with_values=True)["logprobs"].float()
        return ops.mle_loss(logp, batch[4], "token")

    def _extra_state(self, stopped: dict | None = None) -> dict:
        """What a checkpoint holds besides TrainingRun's: the reference pairs' position; with max_kl the
        snapshot of pi_old's weights (a run resumed right before a max_kl stop goes back to them, as one
        that never stopped does); ``stopped``: why and with which policy a run stopped at max_kl."""
        return {"ptx_data": self.ptx_batches.state() if self.ptx_batches is not None else None,
                "kl_snapshot": getattr(self, "_last_within_budget", None), "stopped": stopped}

    def _snapshot_policy(self, kl: float) -> None:
        """Keep pi_old's trainable weights (on the CPU) and its measured KL: if the next batch shows the
        update went past max_kl, the saved policy is this one, the last whose KL was measured within it."""
        params = {n: p.detach().to("cpu", copy=True) for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        self._last_within_budget = {"step": self.step_count, "kl_k1": kl, "params": params}

    def _restore_snapshot(self) -> dict | None:
        snap = getattr(self, "_last_within_budget", None)
        if snap is None:
            return None
        with torch.no_grad():
            for n, p in self.unwrapped.named_parameters():
                if n in snap["params"]:
                    p.copy_(snap["params"][n].to(p.device))
        return {"step": snap["step"], "kl_k1": snap["kl_k1"]}

    def _reduce(self, metrics: dict) -> dict:
        acc = self.accelerator
        if acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], device=acc.device)
        t = acc.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))

    # ---- saving ---------------------------------------------------------------------------------------

    def _save_model(self, lm_dir: Path, head_dir: Path, merge: bool) -> None:
        """The policy LM (``from_pretrained``-loadable; a LoRA model merged when ``merge``, else an adapter
        folder) and the value head, value_head.safetensors in ``head_dir``."""
        save_model(self.accelerator, self.unwrapped.lm, self.tokenizer, lm_dir, merge=merge)
        with atomic_path(head_dir / "value_head.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.unwrapped.value_head.state_dict().items()}, str(tmp))

    # ---- the loop -----------------------------------------------------------------------------------

    def train(self, on_step: Callable[["PPOTrainer"], None] | None = None) -> Path:
        """Run ``step()`` until ``cfg.steps`` (or until a batch's KL passes ``cfg.max_kl``), logging and
        checkpointing; then save the policy, value head and ppo_summary.json into ``cfg.out``.
        ``on_step(trainer)`` runs after each update (``trainer.step_count`` updates done): a measurement of
        the policy along the way, e.g. the over-optimisation study's (``rlhfkit overopt``)."""
        cfg, run = self.cfg, self.run
        stop_reason = "steps"
        # which policy is saved, and what is known of its KL: the KL of pi_s is measured on the samples
        # of step s+1, so the policy after the last update has no measured KL unless a later batch saw it
        saved = None
        with run.loop(cfg.steps, model=cfg.model, reward=cfg.reward_model or cfg.reward_fn, prompts=cfg.prompts,
                      prompt_format=prompt_format(self.tokenizer, cfg.chat_template)):
            while self.step_count < cfg.steps and self.stopped is None:
                res = self.step()
                m = res["metrics"]
                if res.get("skipped"):  # a non-finite reward (run.finite warned): nothing to log
                    run.advance("update skipped: non-finite reward")
                    run.maybe_checkpoint(self.step_count, kl_coef=self.kl_ctl.value, **self._extra_state())
                    continue
                info = f"score {m['score']:+.3f}  KL {m['kl_k1']:.2f}"
                if "gold" in m:
                    info += f"  gold {m['gold']:+.3f}"
                if res.get("over_kl_budget"):
                    # the samples of this batch came from pi_s (s = step_count): its KL is over the budget;
                    # log the measurement (no update was made) and go back to pi_{s-1}
                    run.log(self.step_count + 1, m, res["timings"], always=True)
                    over_step = self.step_count
                    restored = self._restore_snapshot()
                    stop_reason = f"KL {m['kl_k1']:.2f} of the policy after update {over_step} passed max_kl {cfg.max_kl}"
                    if restored is not None:
                        saved = {"policy_after_update": restored["step"], "kl_k1": restored["kl_k1"],
                                 "kl_measured": True, "note": "the last policy whose measured KL is within max_kl"}
                    else:  # resumed right before the stop: the earlier weights were not kept
                        saved = {"policy_after_update": over_step, "kl_k1": m["kl_k1"], "kl_measured": True,
                                 "note": "over max_kl: the previous policy was not kept across the resume"}
                    run.advance(info + "  (over max_kl: stopped)", steps=0)
                    break
                run.log(self.step_count, m, res["timings"])
                run.advance(info)
                run.maybe_checkpoint(self.step_count, kl_coef=self.kl_ctl.value, **self._extra_state())
                if on_step is not None:
                    on_step(self)
        if self.stopped is not None:  # resumed from the checkpoint of a run that had stopped at max_kl
            stop_reason, saved = self.stopped["reason"], self.stopped["saved"]
        if saved is None:
            saved = {"policy_after_update": self.step_count, "kl_k1": None, "kl_measured": False,
                     "note": "the policy after the last update; its KL was not measured (the last measured KL, "
                             "in metrics.jsonl, is that of the policy before it)"}
        stopped = {"reason": stop_reason, "saved": saved} if stop_reason != "steps" else None
        run.maybe_checkpoint(self.step_count, last=True, kl_coef=self.kl_ctl.value, **self._extra_state(stopped))  # a run stopped by max_kl

        def save_final(out: Path) -> None:
            self._save_model(out, out, merge=True)
            summary = {"steps": self.step_count, "stopped": stop_reason, "saved": saved}
            atomic_json(out / "ppo_summary.json", summary, indent=None)

        return run.finish(save_final)


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None, gold_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """PPO of ``cfg.model`` on the prompts in ``cfg.prompts`` against a reward; writes the policy (LoRA
    merged), value_head.safetensors, ppo_summary.json (steps, why it stopped, which policy was saved),
    config.yaml, metrics.jsonl and ``checkpoint-N`` folders into ``cfg.out``.

    Args:
        cfg: the run (see ``PPOTrainer``); names the reward when ``reward_fn`` is not given: a reward model
            folder (``cfg.reward_model``, scored centred) or a ``module:function`` (``cfg.reward_fn``).
        reward_fn: any ``(prompts, responses) -> (B,) scores``; overrides the config's reward.
        gold_fn: optional, logged as ``gold`` beside the optimised score, never optimised.
        progress: show a progress bar.

    Returns the run directory.

    Example::

        out = train_ppo(PPOConfig(model="runs/sft", prompts="prompts.jsonl", reward_model="runs/rm", out="runs/ppo"))
        out = train_ppo(PPOConfig(model="tiny", prompts="prompts.jsonl", out="runs/ppo", steps=20),
                        reward_fn=lambda prompts, responses: [r.count("good") for r in responses])
    """
    prompts = [r["prompt"] for r in load_prompts(cfg.prompts, cfg.chat_template)]  # malformed lines stop here
    resolve_config_precision(cfg)  # before the reward scorer is built: it follows the same decision
    # a reward model scores with its own system prompt and token limits, centred on its reference responses;
    # loaded on the CPU, the trainer moves it to its own device
    reward_fn = reward_fn or load_reward(cfg, device="cpu")
    return PPOTrainer(cfg, reward_fn, prompts, gold_fn, progress).train()
