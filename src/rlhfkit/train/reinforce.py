"""REINFORCE for language models, with a baseline and MLE interpolation (Williams 1992; Ranzato et al.
2016; Kool et al. 2019 and Ahmadian et al. 2024 for the leave-one-out baseline, RLOO).

for iteration = 1, 2, ...:
  1. sample K responses to each prompt of a batch from the current policy
  2. score them: R = reward (reward model, callable or a task's metric) - beta * sum_t KL_t to the frozen
     initial policy (the KL penalty inside the reward, as in PPO)
  3. advantages A = R - b with the chosen baseline b (none, constant, moving average, batch mean,
     leave-one-out); measure the gradient estimate's variance with b and without it on the same samples
  4. one gradient step on  -mean_i A_i log p(y_i | x_i)  -  alpha * mean_j log p(y*_j | x_j),
     the second term on a batch of reference pairs (MLE interpolation; alpha = 0: plain REINFORCE)
Every sample is used for one gradient step, on the policy that drew it: no ratios, no clipping, no critic.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.config import PolicyGradientConfig, ReinforceConfig
from rlhfkit.data import SFTExample, load_prompts, load_sft
from rlhfkit.forward import autocast_context, forward_response, prompt_format
from rlhfkit.models import is_peft, load_causal_lm, load_tokenizer
from rlhfkit.rollout import GenerationConfig, Rollout, generate
from rlhfkit.scoring import RewardFn, as_scores, load_reward
from rlhfkit.train.common import Timer, make_optimizer, resolve_config_precision, save_model
from rlhfkit.train.run import TrainingRun
from rlhfkit.train.sft import encode_sft_batch


def check_config(cfg: ReinforceConfig, reward_given: bool = False) -> None:
    """Refuse options that cannot work, naming the option, before anything is loaded. ``reward_given``:
    the caller passes its own reward function (then the config names none)."""
    K = cfg.samples_per_prompt
    if cfg.baseline not in ops.BASELINES:
        raise ValueError(f"--baseline {cfg.baseline!r}: expected one of {', '.join(ops.BASELINES)}")
    check_sampling(cfg, reward_given)
    if cfg.baseline == "leave_one_out" and K < 2:
        raise ValueError(f"--baseline leave_one_out needs --samples-per-prompt >= 2 (each sample's baseline is the "
                         f"mean of the prompt's other samples), got {K}")
    if cfg.baseline == "batch_mean" and K * cfg.batch_size < 2:
        raise ValueError("--baseline batch_mean with one sample per batch makes every advantage 0: "
                         "raise --batch-size or --samples-per-prompt")
    if cfg.baseline == "moving_average" and not 0.0 <= cfg.baseline_decay < 1.0:
        raise ValueError(f"--baseline-decay must be in [0, 1), got {cfg.baseline_decay}")
    if cfg.kl_penalty not in ops.KL_KINDS:
        raise ValueError(f"--kl-penalty {cfg.kl_penalty!r}: expected one of {', '.join(ops.KL_KINDS)}")


def check_sampling(cfg: PolicyGradientConfig, reward_given: bool = False) -> None:
    """The checks every sampled policy-gradient method shares (REINFORCE, RLOO, GRPO): group and batch
    sizes, coefficients, the MLE data, the temperature and exactly one reward."""
    K = cfg.samples_per_prompt
    if K < 1 or cfg.batch_size < 1:
        raise ValueError(f"--samples-per-prompt ({K}) and --batch-size ({cfg.batch_size}) must be at least 1")
    if cfg.kl_coef < 0 or cfg.mle_coef < 0:
        raise ValueError(f"--kl-coef ({cfg.kl_coef}) and --mle-coef ({cfg.mle_coef}) must be >= 0")
    if cfg.mle_coef > 0 and not cfg.mle_data:
        raise ValueError("--mle-coef > 0 needs --mle-data (SFT-format JSONL of reference pairs)")
    if cfg.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 (REINFORCE learns from sampled responses), got {cfg.temperature}")
    named = [f"--{k.replace('_', '-')}" for k in ("reward_model", "reward_fn", "reward_task") if getattr(cfg, k)]
    if not reward_given and not named:
        raise ValueError("a reward is needed: --reward-model DIR, --reward-fn module:function or --reward-task TASK:METRIC")
    if not reward_given and len(named) > 1:
        raise ValueError(f"give one reward, got {' and '.join(named)}")


def whole_groups(n: int, k: int) -> int:
    """``n`` sequences rounded down to whole groups of a prompt's ``k`` samples (at least one group): a
    minibatch that holds all of a prompt's samples runs that prompt once (``share_prompts``)."""
    return max(1, n // k) * k


def last_block_parameters(model) -> list[torch.nn.Parameter]:
    """The trainable parameters of the last transformer block (``layers.N.``, with its LoRA adapters) and
    the final norm: where the policy-gradient variance is measured. A gradient there passes through the
    LM head and the top of the network only, so one sample costs a forward and a short backward; all
    trainable parameters when the names show no numbered blocks."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = [int(m.group(1)) for n, _ in named if (m := re.search(r"layers\.(\d+)\.", n))]
    if not blocks:
        return [p for _, p in named]
    last = f"layers.{max(blocks)}."
    return [p for n, p in named if last in n or ("layers." not in n and "norm" in n)]


class ReinforceTrainer:
    """Holds the policy, the reference, the optimiser and the loop state; ``step()`` is one iteration,
    ``train()`` the whole run. Its plumbing (accelerator, seeds, resume, checkpoints, metrics,
    progress) is ``self.run``, a ``TrainingRun``.

    Args:
        cfg: the policy (model, LoRA), the sampling (samples_per_prompt, max_new_tokens, temperature,
            top_p) and the objective (baseline, kl_coef, mle_coef, lr, ...); ``cfg.resume`` continues a
            run from its last checkpoint.
        reward_fn: any ``(prompts, responses) -> (B,) scores`` (``rlhfkit.scoring``).
        prompts: the prompts a batch is drawn from (as ``load_prompts`` reads them).
        mle_examples: reference pairs for the MLE term (as ``load_sft`` reads them), or None.
        progress: show a progress bar.

    Example::

        trainer = ReinforceTrainer(ReinforceConfig(model="runs/sft", prompts="prompts.jsonl", out="runs/rf"),
                                   reward_fn=lambda prompts, responses: [len(r) / 100 for r in responses],
                                   prompts=["Review a film.", "Describe a play."])
        metrics = trainer.step()["metrics"]  # one iteration; or trainer.train() for cfg.steps of them
    """

    name = "REINFORCE"  # the progress bar's label

    def __init__(self, cfg: PolicyGradientConfig, reward_fn: RewardFn, prompts: list, mle_examples: list[SFTExample] | None = None,
                 progress: bool = True):
        self.cfg, self.reward_fn, self.prompts, self.mle_examples = cfg, reward_fn, prompts, mle_examples or None
        self.run = TrainingRun(cfg, self.name, progress=progress)
        acc = self.accelerator = self.run.accelerator
        self.tokenizer = load_tokenizer(cfg.model)
        lm = self.run.load_lm()
        # the KL reference is cfg.model: with LoRA the same network with adapters off (as in PPO)
        self.ref = None if (cfg.lora_r > 0 and is_peft(lm)) else load_causal_lm(cfg.model, trainable=False)
        self.optimizer, _ = make_optimizer(lm.parameters(), cfg.lr)
        self.policy, self.optimizer = acc.prepare(lm, self.optimizer)
        self.policy.train()
        if self.ref is not None:
            self.ref.to(acc.device)
        if isinstance(getattr(reward_fn, "rm", None), torch.nn.Module):  # a RewardScorer: score where we sample
            reward_fn.rm.to(acc.device)
        # each process samples its own share of a batch (batch_size prompts of batch_size * processes); the
        # shares must be equal, or the processes would take different numbers of minibatch steps
        P = self.run.processes
        if P > 1 and len(prompts) < cfg.batch_size * P:
            raise ValueError(f"{cfg.prompts}: {len(prompts)} prompts, fewer than batch_size {cfg.batch_size} x {P} processes")
        self.batches = self.run.batches(len(prompts), cfg.batch_size, drop_last=len(prompts) >= cfg.batch_size * P)
        self.mle_batches = self.run.batches(len(self.mle_examples), cfg.mle_batch_size, cfg.seed + 1) if self.mle_examples else None
        self.generator = torch.Generator().manual_seed(cfg.seed + 7919 * acc.process_index)
        self.gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                        batch_size=cfg.batch_size * cfg.samples_per_prompt,
                                        system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
        self.bf16 = cfg.mixed_precision == "bf16"
        self.variance_params = last_block_parameters(self.unwrapped)
        self.baseline_state: float | None = None  # the moving average of earlier batches' mean rewards
        self.step_count = self.run.track(self.optimizer, batches=self.batches, generator=self.generator,
                                         save=lambda ckpt: save_model(acc, self.policy, self.tokenizer, ckpt / "model", merge=False))
        if self.run.resumed:
            self.baseline_state = self.run.resumed["baseline_state"]
            if self.mle_batches is not None:
                self.mle_batches.load(self.run.resumed["mle_data"])

    @property
    def unwrapped(self):
        """The policy LM without accelerate's wrapper."""
        return self.accelerator.unwrap_model(self.policy)

    def _state(self) -> dict:
        """What a checkpoint holds besides TrainingRun's: the baseline's state and the reference pairs' position."""
        return {"baseline_state": self.baseline_state,
                "mle_data": self.mle_batches.state() if self.mle_batches is not None else None}

    # ---- the pieces of one iteration ------------------------------------------------------------

    def sample(self, prompts: list) -> Rollout:
        """Responses of the current policy to ``prompts``, drawn with the trainer's generator."""
        return generate(self.unwrapped, self.tokenizer, prompts, self.gen_cfg, generator=self.generator, bf16=self.bf16)

    @torch.no_grad()
    def ref_logprobs(self, ro: Rollout) -> torch.Tensor:
        """(B, T) log-probs of the sampled tokens under the frozen reference, at the sampling temperature;
        the K samples of a prompt share one prompt pass."""
        args = (ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        mb, out = whole_groups(max(self.cfg.minibatch_size, 1) * 2, self.cfg.samples_per_prompt), []
        for i in range(0, len(ro), mb):
            part = [a[i : i + mb] for a in args]
            with autocast_context(self.accelerator.device, self.bf16):
                if self.ref is None:
                    with self.unwrapped.disable_adapter():
                        r = forward_response(self.unwrapped, *part, temperature=self.cfg.temperature, share_prompts=True)
                else:
                    r = forward_response(self.ref, *part, temperature=self.cfg.temperature, share_prompts=True)
            out.append(r["logprobs"].float())
        return torch.cat(out) * ro.response_mask.float()

    def grad_variance(self, ro: Rollout, advantages: torch.Tensor, rewards: torch.Tensor) -> dict:
        """``ops.pg_grad_variance`` of the first ``cfg.grad_variance_samples`` sequences of the batch, on
        ``last_block_parameters``: with the advantages used (``pg_grad_variance``) and with the raw
        rewards, i.e. no baseline (``pg_grad_variance_no_baseline``). One score vector
        ``grad log p(y_n | x_n)`` per sequence serves both, so they compare on the same samples."""
        n = min(self.cfg.grad_variance_samples, len(ro))
        if n < 2:
            return {}
        model, grads = self.unwrapped, []
        for b in range(n):
            row = [x[b : b + 1] for x in (ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)]
            with autocast_context(self.accelerator.device, self.bf16):
                logp = forward_response(model, *row, temperature=self.cfg.temperature)["logprobs"].float()
            g = torch.autograd.grad(ops.sequence_logprobs(logp, row[3]).sum(), self.variance_params, allow_unused=True)
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float()
                                    for x, p in zip(g, self.variance_params)]))
        scores = torch.stack(grads)
        return {"pg_grad_variance": ops.pg_grad_variance(scores, advantages[:n].to(scores.device)).item(),
                "pg_grad_variance_no_baseline": ops.pg_grad_variance(scores, rewards[:n].to(scores.device)).item()}

    def update(self, ro: Rollout, advantages: torch.Tensor) -> dict:
        """One optimiser step on the REINFORCE surrogate (minibatches of ``cfg.minibatch_size`` sequences
        rounded to a prompt's whole K samples, their gradients summed to the batch mean) plus ``mle_coef``
        times the MLE term on the next batch of reference pairs; returns the loss parts and diagnostics.
        Each distinct prompt of a minibatch runs once, with gradient, for its K samples (``share_prompts``)."""
        cfg, acc = self.cfg, self.accelerator
        B, mb = len(ro), whole_groups(max(1, cfg.minibatch_size), cfg.samples_per_prompt)
        mask = ro.response_mask.float()
        pg_loss, ent_sum, bad = 0.0, 0.0, []
        for i in range(0, B, mb):
            j = slice(i, i + mb)
            out = forward_response(self.policy, ro.prompt_ids[j], ro.prompt_mask[j], ro.response_ids[j], ro.response_mask[j],
                                   temperature=cfg.temperature, with_entropy=True, share_prompts=True)
            part = ops.reinforce_loss(out["logprobs"].float(), mask[j], advantages[j])
            n = mask[j].shape[0]
            bad = bad or self.run.nonfinite(loss=part)
            if not bad:  # a non-finite part: no update this step
                acc.backward(part * n / B)  # the minibatches' parts add up to the mean over the batch
            pg_loss += part.item() * n / B
            ent_sum += float((out["entropy"] * mask[j]).sum())
        stats = {"pg_loss": pg_loss, "entropy": ent_sum / max(float(mask.sum()), 1.0)}
        loss = pg_loss
        if self.mle_batches is not None:
            mle = self.mle_term()
            if cfg.mle_coef > 0:
                bad = bad or self.run.nonfinite(mle_loss=mle)
                if not bad:
                    acc.backward(cfg.mle_coef * mle)
                loss += cfg.mle_coef * mle.item()
            stats.update(mle_loss=mle.item(), mle_logp=-mle.item())
        if cfg.max_grad_norm and not bad:
            stats["grad_norm"] = float(acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
        if self.run.record_update(f"step {self.step_count + 1}", bad):
            self.optimizer.step()
        self.optimizer.zero_grad()
        stats["loss"] = loss
        return stats

    def mle_term(self) -> torch.Tensor:
        """-mean log p(y*|x) (sequence sums) on the next ``cfg.mle_batch_size`` reference pairs: the MLE
        term, with gradient when ``cfg.mle_coef`` > 0 (with alpha 0 the pairs' likelihood is only measured)."""
        cfg = self.cfg
        examples = [self.mle_examples[i] for i in self.run.share(self.mle_batches.next())[0]]
        batch = encode_sft_batch(self.tokenizer, examples, cfg, self.accelerator.device)
        with torch.set_grad_enabled(cfg.mle_coef > 0):
            logp = forward_response(self.policy, *batch[:4])["logprobs"].float()
            return ops.mle_loss(logp, batch[4], "sequence")

    def rollout(self, timer: Timer) -> tuple[list, Rollout, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1 and 2 of an iteration on the next batch of prompts, each repeated K times side by side:
        sample, score (less ``missing_eos_penalty`` for responses without EOS), and the sampled tokens'
        log-probs under the policy that drew them and under the reference. Returns ``(prompts, rollout,
        scores (B,), logp (B, T), ref_logp (B, T))``, both log-prob tensors 0 at padding."""
        cfg, K = self.cfg, self.cfg.samples_per_prompt
        idx, _ = self.run.share(self.batches.next())
        prompts = [self.prompts[i] for i in idx for _ in range(K)]  # a prompt's K samples side by side
        with timer("time_generate"):
            ro = self.sample(prompts)
        mask = ro.response_mask.float()
        with timer("time_reward"):
            scores = as_scores(self.reward_fn(prompts, ro.responses), len(prompts)).to(mask.device)
            if cfg.missing_eos_penalty:
                scores = scores - cfg.missing_eos_penalty * (~ro.ended).float()
        with timer("time_ref"):
            ref_logp = self.ref_logprobs(ro)
        # the sampling log-probs are the policy's at the sampling temperature: no second policy pass
        return prompts, ro, scores, ro.logprobs.float() * mask, ref_logp

    def skip_nonfinite(self, scores: torch.Tensor, timer: Timer) -> dict | None:
        """When a reward of the batch is NaN or infinite (``TrainingRun.finite`` warns, and stops the run
        after max_nonfinite_steps in a row): the step's result, no update made, the batch used up."""
        if self.run.finite(f"step {self.step_count + 1}", reward=scores):
            return None
        self.step_count += 1
        return {"metrics": {}, "timings": timer.t, "skipped": True}

    def sample_metrics(self, ro: Rollout, scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor) -> dict:
        """What every sampled method logs of a batch: the score, KL to the reference (k1 and k3, nats per
        sequence), the KL coefficient, response length and EOS rate."""
        mask = ro.response_mask.float()
        return {
            "score": scores.mean().item(), "score_std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl_k1": (ops.kl_penalty(logp, ref_logp, "k1") * mask).sum(1).mean().item(),
            "kl_k3": (ops.kl_penalty(logp, ref_logp, "k3") * mask).sum(1).mean().item(),
            "kl_coef": self.cfg.kl_coef,
            "response_length": mask.sum(1).mean().item(), "eos_rate": ro.ended.float().mean().item(),
        }

    def step(self) -> dict:
        """One iteration on the next batch of prompts. Returns ``{"metrics": ..., "timings": ...}``."""
        cfg, K = self.cfg, self.cfg.samples_per_prompt
        timer = Timer()
        # 1. sample  2. score
        prompts, ro, scores, logp, ref_logp = self.rollout(timer)
        if (skipped := self.skip_nonfinite(scores, timer)) is not None:
            return skipped
        mask = ro.response_mask.float()
        # the KL penalty to the reference inside the sequence reward
        rewards = ops.kl_penalized_scores(scores, logp, ref_logp, mask, cfg.kl_coef, cfg.kl_penalty)
        # 3. advantages: R - b
        advantages, new_state = ops.reinforce_advantages(rewards.view(-1, K), cfg.baseline, self.baseline_state,
                                                         cfg.baseline_value, cfg.baseline_decay)
        advantages = advantages.flatten()
        with timer("time_grad_variance"):
            variance = self.grad_variance(ro, advantages, rewards) if cfg.grad_variance_samples else {}
        # 4. one gradient step: policy gradient + alpha * MLE on reference pairs
        with timer("time_update"):
            stats = self.update(ro, advantages)
        # a moving average of the global batch's mean reward (the mean of the processes' updates is that)
        self.baseline_state = new_state if new_state is None else self.run.weighted_mean({"b": new_state}, 1.0)["b"]
        self.step_count += 1
        metrics = {
            **self.sample_metrics(ro, scores, logp, ref_logp), "reward": rewards.mean().item(),
            "baseline_mean": (rewards - advantages).mean().item(),
            "advantage_std": advantages.std().item() if len(advantages) > 1 else 0.0,
            **stats, **variance,
        }
        timings = {**timer.t, "tokens_per_s": int(mask.sum()) / max(timer.t["time_generate"], 1e-9)}
        self.last_samples = list(zip(prompts, ro.responses, scores.tolist()))
        return {"metrics": metrics, "timings": timings}

    # ---- the loop -----------------------------------------------------------------------------------

    def run_info(self) -> dict:
        """What run_info.json records of the method (besides the model, reward, prompts and data)."""
        return {"baseline": self.cfg.baseline}

    def train(self) -> Path:
        """Run ``step()`` ``cfg.steps`` times, logging and checkpointing; then save the policy (LoRA merged)
        into ``cfg.out``."""
        cfg, run = self.cfg, self.run
        reward = cfg.reward_model or cfg.reward_fn or cfg.reward_task or getattr(self.reward_fn, "__name__", "callable")
        with run.loop(cfg.steps, model=cfg.model, reward=reward, prompts=cfg.prompts, **self.run_info(),
                      mle_data=cfg.mle_data, prompt_format=prompt_format(self.tokenizer, cfg.chat_template)):
            while self.step_count < cfg.steps:
                # equal shares: each process's batch metrics weigh the same
                m = run.weighted_mean((res := self.step())["metrics"], 1.0)
                if res.get("skipped"):  # a non-finite reward (run.finite warned): nothing to log
                    run.advance("update skipped: non-finite reward")
                    run.maybe_checkpoint(self.step_count, **self._state())
                    continue
                run.log(self.step_count, m, res["timings"])
                info = f"score {m['score']:+.3f}  KL {m['kl_k1']:.2f}"
                if "pg_grad_variance" in m:
                    info += f"  var {m['pg_grad_variance']:.3g} (no baseline {m['pg_grad_variance_no_baseline']:.3g})"
                run.advance(info)
                run.maybe_checkpoint(self.step_count, **self._state())
        return run.finish(lambda out: save_model(self.accelerator, self.policy, self.tokenizer, out, merge=True))


def train_reinforce(cfg: ReinforceConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """REINFORCE of ``cfg.model`` on the prompts in ``cfg.prompts`` against a reward, with ``cfg.baseline``,
    an optional KL penalty (``cfg.kl_coef``) and MLE interpolation (``cfg.mle_coef`` on ``cfg.mle_data``);
    writes the policy (LoRA merged), config.yaml, metrics.jsonl (score, KL, entropy, loss parts,
    pg_grad_variance with and without the baseline, ...) and ``checkpoint-N`` folders into ``cfg.out``.

    Args:
        cfg: the run (see ``ReinforceTrainer``); names the reward when ``reward_fn`` is not given: a reward
            model folder (``cfg.reward_model``, scored centred), a ``module:function`` (``cfg.reward_fn``)
            or a task's metric (``cfg.reward_task``, 'TASK:METRIC').
        reward_fn: any ``(prompts, responses) -> (B,) scores``; overrides the config's reward.
        progress: show a progress bar.

    Returns the run directory.

    Example::

        out = train_reinforce(ReinforceConfig(model="runs/mle", prompts="train.jsonl", reward_task="toy_translation:bleu",
                                              baseline="leave_one_out", samples_per_prompt=4,
                                              mle_coef=0.1, mle_data="train_pairs.jsonl", out="runs/rf"))
        out = train_reinforce(ReinforceConfig(model="tiny", prompts="prompts.jsonl", out="runs/rf", steps=20,
                                              baseline="batch_mean"),
                              reward_fn=lambda prompts, responses: [r.count("good") for r in responses])
    """
    check_config(cfg, reward_given=reward_fn is not None)
    return run_trainer(ReinforceTrainer, cfg, reward_fn, progress)


def run_trainer(trainer_cls: type, cfg: PolicyGradientConfig, reward_fn: RewardFn | None = None, progress: bool = True) -> Path:
    """Read the prompts and reference pairs, build the reward the config names (unless ``reward_fn`` is
    given) and train a ``trainer_cls`` (``ReinforceTrainer`` or a method built on it) to the end; the
    caller has checked ``cfg``. Returns the run directory."""
    prompts = [r["prompt"] for r in load_prompts(cfg.prompts, cfg.chat_template)]  # malformed lines stop here
    mle_examples = load_sft(cfg.mle_data, cfg.chat_template) if cfg.mle_data else None
    resolve_config_precision(cfg)  # before the reward scorer is built: it follows the same decision
    reward_fn = reward_fn or load_reward(cfg, device="cpu")
    return trainer_cls(cfg, reward_fn, prompts, mle_examples, progress).train()
