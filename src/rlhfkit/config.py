"""One flat dataclass per command. Values come from the defaults, then a YAML file (``--config``), then
command-line flags; every field carries its own help text, which the CLI shows in ``--help``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml


def opt(default: Any, help: str, **kw):
    """A config field with its help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    """What every command shares: where it writes, its seed, its arithmetic and how prompts reach the model."""

    out: str = opt("runs/run", "Run directory: checkpoints, metrics.jsonl and the final model go here.")
    seed: int = opt(0, "Seed for data order, initialisation and sampling.")
    mixed_precision: str = opt("auto", "'auto', 'no' (fp32), 'bf16' or 'fp16' (through accelerate). auto: bf16 where the device computes it natively (CPUs with AVX-512 BF16 or AMX, GPUs that support it), fp32 elsewhere; bf16 on a CPU without it runs many times slower than fp32.")
    system_prompt: str | None = opt(None, "System message for chat-templated prompts that have none of their own (None: the template's default).")
    chat_template: str = opt("auto", "How a plain-string prompt reaches the model: 'auto' wraps it as the user turn of the tokenizer's chat template (when it has one); 'never' feeds it as raw text, as TRL does (conversations then are an error).")
    threads: int = opt(0, "torch intra-op threads (0: torch's default).")


@dataclass
class CommonConfig(RunConfig):
    """What every gradient-based trainer adds: checkpoints, resume, LoRA."""

    save_every: int = opt(0, "Write a checkpoint every N optimiser steps and at the end (0: no checkpoint at all; the final model is written either way).")
    resume: str | None = opt(None, "Continue the run in this run directory from its last checkpoint.")
    max_nonfinite_steps: int = opt(3, "A step whose loss or reward is NaN or infinite makes no update (a warning names it); this many in a row stop the run with an error (0: never stop).")
    lora_r: int = opt(0, "LoRA rank (0: train all parameters). With LoRA the reference model is the same network with adapters disabled.")
    lora_alpha: int = opt(32, "LoRA alpha.")
    lora_targets: str = opt("q_proj,k_proj,v_proj,o_proj", "Comma-separated module names that get LoRA adapters.")


@dataclass
class SFTConfig(CommonConfig):
    model: str = opt("smollm2-135m", "Initial model: an alias (smollm2-135m, tiny), a .gguf file or a model folder.")
    data: str = opt("", "SFT JSONL: {prompt, completion} (strings or lists of messages), {messages} or {text} per line.", required=True)
    epochs: float = opt(1.0, "Passes over the data (fractions allowed).")
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: run the epochs).")
    batch_size: int = opt(8, "Examples per optimiser step (per process, before accumulation).")
    grad_accum: int = opt(1, "Gradient accumulation steps.")
    lr: float = opt(2e-5, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    warmup_steps: int = opt(0, "Linear warmup steps.")
    max_prompt_tokens: int = opt(256, "Prompts are cut to their last N tokens.")
    max_completion_tokens: int = opt(128, "Completions are cut to N tokens (EOS included; with loss_on all, each assistant turn).")
    loss_on: str = opt("last", "Conversations: the loss on the last assistant turn ('last') or on every assistant turn ('all').")
    log_every: int = opt(1, "Log metrics every N steps.")


@dataclass
class RewardConfig(CommonConfig):
    # `rlhfkit reward --preset smoke`: the tiny model, a few short steps (data still given)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(model="tiny", out="runs/reward_smoke", mixed_precision="no", max_steps=6, batch_size=4, lr=1e-3,
                      max_prompt_tokens=48, max_completion_tokens=16),
    }

    model: str = opt("runs/sft", "Backbone to start from (an SFT checkpoint by default) or a reward model to continue.")
    data: str = opt("", "Preference JSONL: {prompt, chosen, rejected[, margin]} pairs and/or {prompt, responses, ranking} rankings.", required=True)
    eval_data: str | None = opt(None, "Held-out preference JSONL (default: hold out eval_fraction of the prompts).")
    eval_fraction: float = opt(0.1, "Fraction of the prompts held out (all pairs of a prompt on one side) when eval_data is not given.")
    reference: str | None = opt(None, "JSONL of {prompt, response} whose scores define std 1 (folded into the head) and the reference mean (default: every response in data).")
    epochs: float = opt(1.0, "Passes over the training pairs.")
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: run the epochs).")
    batch_size: int = opt(8, "Prompts per optimiser step, per process (P processes step on P x batch_size); all pairs of a prompt stay in one batch and each prompt weighs the same in the loss.")
    grad_accum: int = opt(1, "Gradient accumulation steps.")
    lr: float = opt(1e-5, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    warmup_steps: int = opt(0, "Linear warmup steps.")
    head_lr_scale: float = opt(10.0, "Learning rate of the (zero-initialised) score head, as a multiple of lr.")
    use_margin: bool = opt(True, "Use a pair's 'margin' field in the Bradley-Terry loss when present.")
    train_top_layers: int = opt(0, "Train only the top N transformer layers, the final norm and the head (0: all).")
    max_prompt_tokens: int = opt(256, "Prompts are cut to their last N tokens (saved with the model; scoring uses it).")
    max_completion_tokens: int = opt(128, "Responses are cut to N tokens, EOS included (saved with the model; scoring uses it).")
    log_every: int = opt(1, "Log metrics every N steps.")
    ensemble: int = opt(1, "K > 1: train K reward models (member-0 .. member-K-1 and ensemble.json in out), each on its own bootstrap resample and data order, one held-out split; --reward-model OUT then scores with their mean (less --reward-std-penalty times their std).")
    bootstrap: bool = opt(True, "With ensemble K > 1: each member trains on a bootstrap resample of the training prompts (as many, drawn with replacement); off: the members differ only in data order.")
    eval_samples: str | None = opt(None, "JSONL of policy samples, {prompt, responses: [...]} (or {prompt, response} lines grouped by prompt): their pairs, labelled by eval_gold, give the accuracy on policy samples in eval.json.")
    eval_gold: str | None = opt(None, "The gold reward that labels eval_samples' pairs: 'module:function', 'TASK:METRIC', or 'samples' (the \"gold\" value each sample line carries, as a pipeline run's samples/*.jsonl do).")


@dataclass
class DPOConfig(CommonConfig):
    """Direct preference optimisation (Rafailov et al. 2023) on preference pairs and rankings."""

    # `rlhfkit dpo --preset NAME`: values over the defaults, under flags (and over a --config file)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(model="tiny", out="runs/dpo_smoke", mixed_precision="no", max_steps=6, batch_size=4, lr=1e-3,
                      beta=0.5, max_prompt_tokens=48, max_completion_tokens=16, eval_every=3),
    }

    model: str = opt("runs/sft", "Policy to start from (an SFT checkpoint by default); also the frozen reference pi_ref of the implicit reward beta * log(pi/pi_ref) (with LoRA: the same network with adapters disabled).")
    data: str = opt("", "Preference JSONL: {prompt, chosen, rejected} pairs and/or {prompt, responses, ranking} rankings (a ranking of K gives its K(K-1)/2 pairs, as for `rlhfkit reward`).", required=True)
    eval_data: str | None = opt(None, "Held-out preference JSONL (default: hold out eval_fraction of the prompts).")
    eval_fraction: float = opt(0.1, "Fraction of the prompts held out (all pairs of a prompt on one side) when eval_data is not given.")
    beta: float = opt(0.1, "beta: strength of the implicit KL constraint to the reference (the implicit reward is beta * log(pi/pi_ref)); smaller lets the policy move further.")
    label_smoothing: float = opt(0.0, "Conservative DPO (cDPO): the assumed probability in [0, 0.5) that a preference label is flipped; the loss is its expectation under that noise.")
    epochs: float = opt(1.0, "Passes over the training prompts.")
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: run the epochs).")
    batch_size: int = opt(8, "Prompts per optimiser step, per process (P processes step on P x batch_size); all pairs of a prompt stay in one batch, each distinct response runs once and each prompt weighs the same in the loss (as for the reward model).")
    grad_accum: int = opt(1, "Gradient accumulation steps.")
    lr: float = opt(1e-6, "Peak learning rate (AdamW); DPO wants a small one (TRL's default is 1e-6).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    warmup_steps: int = opt(0, "Linear warmup steps.")
    max_grad_norm: float = opt(1.0, "Gradient clipping (0: none).")
    max_prompt_tokens: int = opt(256, "Prompts are cut to their last N tokens.")
    max_completion_tokens: int = opt(128, "Responses are cut to N tokens, EOS included.")
    eval_every: int = opt(10, "Held-out loss, accuracy and margins every N steps (0: only at the end, in eval.json).")
    log_every: int = opt(1, "Log metrics every N steps.")


@dataclass
class PPOConfig(CommonConfig):
    model: str = opt("runs/sft", "Policy to start from; also the frozen reference of the KL penalty.")
    reward_model: str | None = opt(None, "Reward model folder (from `rlhfkit reward`; an ensemble folder from `rlhfkit reward --ensemble K` scores with its members' mean).")
    reward_std_penalty: float = opt(0.0, "lambda of the conservative ensemble reward mean - lambda * std over the members of an ensemble --reward-model (Coste et al. 2023; 0: the mean).")
    reward_fn: str | None = opt(None, "Instead of a reward model: 'module:function' taking (prompts, responses) -> scores.")
    prompts: str = opt("", "Prompts JSONL ({prompt} as a string or a list of messages, or {messages} per line).", required=True)
    steps: int = opt(20, "PPO iterations (sample, score, update).")
    batch_size: int = opt(32, "Prompts sampled per iteration, per process (P processes sample P x batch_size; the prompts file needs at least that many).")
    minibatch_size: int = opt(8, "Sequences per gradient step inside an iteration, per process (each process's minibatches of its own samples).")
    ppo_epochs: int = opt(2, "Passes over each rollout batch.")
    lr: float = opt(1e-5, "Learning rate (AdamW) for policy and value head.")
    max_grad_norm: float = opt(1.0, "Gradient clipping.")
    max_new_tokens: int = opt(32, "Longest response.")
    temperature: float = opt(1.0, "Sampling temperature (log-probs are recomputed at the same temperature).")
    top_p: float = opt(1.0, "Nucleus sampling.")
    old_from_sampling: bool = opt(True, "Take pi_old's log-probs and values from the sampling pass, not from one more forward pass, where the sampler keeps them (the CPU engine in fp32, where they equal a recomputation within rounding); off: always recompute.")
    init_kl_coef: float = opt(0.05, "beta: weight of the per-token KL penalty to the reference inside the reward.")
    adaptive_kl: bool = opt(False, "Adapt beta towards kl_target (Ziegler et al. 2019).")
    kl_target: float = opt(6.0, "Target KL (nats per sequence) of the adaptive controller.")
    kl_horizon: int = opt(10000, "Horizon (in samples) of the adaptive controller.")
    kl_penalty: str = opt("k1", "Per-token KL estimator inside the reward: k1, k2 or k3.")
    max_kl: float = opt(0.0, "Stop training when the mean KL to the reference passes this (nats per sequence; 0: never).")
    target_kl: float = opt(0.0, "Stop a batch's PPO epochs when approx KL old->new passes this (0: never).")
    gamma: float = opt(1.0, "Discount.")
    lam: float = opt(0.95, "GAE lambda.")
    clip_eps: float = opt(0.2, "Policy ratio clip.")
    clip_eps_value: float = opt(0.2, "Value clip.")
    vf_coef: float = opt(0.1, "Weight of the value loss.")
    value_lr_scale: float = opt(10.0, "Learning rate of the (zero-initialised) value head, as a multiple of lr.")
    whiten_rewards: bool = opt(False, "Whiten the shaped rewards of a batch before GAE.")
    missing_eos_penalty: float = opt(1.0, "Subtracted from the score of responses that never emit EOS (the reward model scores every response as finished, an EOS appended).")
    reward_batch_size: int = opt(32, "Batch size for scoring with the reward model.")
    ptx_coef: float = opt(0.0, "PPO-ptx (InstructGPT): add ptx_coef * (-mean log p(y*|x) per token) on a batch of reference pairs from ptx_data to each minibatch loss (0: off).")
    ptx_data: str | None = opt(None, "SFT-format JSONL of reference pairs for ptx_coef (as `rlhfkit sft` reads it).")
    ptx_batch_size: int = opt(8, "Reference pairs per PPO minibatch for ptx_coef, per process.")
    log_every: int = opt(1, "Log metrics every N steps.")


@dataclass
class PolicyGradientConfig(CommonConfig):
    """What the sampled policy-gradient methods share (REINFORCE, RLOO, GRPO): K responses per prompt from
    the policy, a reward, an optional MLE term on reference pairs; the KL coefficient's meaning is each
    method's (inside the reward for REINFORCE/RLOO, inside the loss for GRPO)."""

    model: str = opt("runs/sft", "Policy to start from; also the frozen reference of the KL penalty.")
    reward_model: str | None = opt(None, "Reward model folder (from `rlhfkit reward`; an ensemble folder from `rlhfkit reward --ensemble K` scores with its members' mean).")
    reward_std_penalty: float = opt(0.0, "lambda of the conservative ensemble reward mean - lambda * std over the members of an ensemble --reward-model (Coste et al. 2023; 0: the mean).")
    reward_fn: str | None = opt(None, "Instead of a reward model: 'module:function' taking (prompts, responses) -> scores.")
    reward_task: str | None = opt(None, "Instead: 'TASK:METRIC', a task's reward function (rlhfkit.tasks.load_task(TASK).reward_functions[METRIC]).")
    prompts: str = opt("", "Prompts JSONL ({prompt} as a string or a list of messages, or {messages} per line).", required=True)
    steps: int = opt(20, "Iterations (sample, score, one gradient step).")
    batch_size: int = opt(8, "Prompts per iteration, per process (P processes sample P x batch_size; the prompts file needs at least that many).")
    samples_per_prompt: int = opt(4, "K: responses sampled per prompt (leave_one_out needs K >= 2).")
    mle_coef: float = opt(0.0, "alpha of MLE interpolation: loss = -(R - b) log p(y|x) - alpha * mean log p(y*|x) over a batch of mle_data pairs each step.")
    mle_data: str | None = opt(None, "SFT-format JSONL of reference pairs (prompt, completion) for mle_coef; with mle_coef 0 their log-likelihood is only logged.")
    mle_batch_size: int = opt(8, "Reference pairs per iteration for the MLE term, per process.")
    max_prompt_tokens: int = opt(256, "Reference pairs: prompts are cut to their last N tokens.")
    max_completion_tokens: int = opt(128, "Reference pairs: completions are cut to N tokens (EOS included).")
    lr: float = opt(1e-5, "Learning rate (AdamW).")
    max_grad_norm: float = opt(1.0, "Gradient clipping (0: none).")
    minibatch_size: int = opt(16, "Sequences per forward/backward, per process, rounded down to whole groups of a prompt's K samples (at least one group: the group's prompt then runs once); their gradients add up to one step per iteration.")
    max_new_tokens: int = opt(32, "Longest response.")
    temperature: float = opt(1.0, "Sampling temperature (log-probs are computed at the same temperature).")
    top_p: float = opt(1.0, "Nucleus sampling.")
    missing_eos_penalty: float = opt(0.0, "Subtracted from the reward of responses that never emit EOS.")
    reward_batch_size: int = opt(32, "Batch size for scoring with the reward model.")
    grad_variance_samples: int = opt(16, "Measure the policy-gradient variance (with and without the baseline) on this many of a batch's sequences, one extra forward/backward each on the last block's parameters (0: off).")
    log_every: int = opt(1, "Log metrics every N steps.")


@dataclass
class ReinforceConfig(PolicyGradientConfig):
    baseline: str = opt("leave_one_out", "b in -(R - b) log p(y|x): none, constant (baseline_value), moving_average (of earlier batches' mean rewards), batch_mean, leave_one_out (RLOO: the mean of the prompt's other K-1 samples).")
    baseline_value: float = opt(0.0, "constant: the value of b; moving_average: b for the first batch.")
    baseline_decay: float = opt(0.9, "moving_average: b <- decay * b + (1 - decay) * the batch's mean reward.")
    kl_coef: float = opt(0.0, "beta: per-token KL penalty to the reference, summed into the sequence reward (0: none; KL is logged either way).")
    kl_penalty: str = opt("k1", "Per-token KL estimator inside the reward: k1, k2 or k3.")


# `rlhfkit rloo|grpo --preset smoke`: the tiny model, a few short steps (a reward and prompts still given)
_PG_SMOKE = dict(model="tiny", out="runs/pg_smoke", mixed_precision="no", steps=4, batch_size=4, samples_per_prompt=4,
                 minibatch_size=8, max_new_tokens=8, lr=1e-3)


@dataclass
class RLOOConfig(ReinforceConfig):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): `rlhfkit reinforce` with the
    leave-one-out baseline and the per-token KL penalty inside the reward on by default."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": dict(_PG_SMOKE, out="runs/rloo_smoke")}

    baseline: str = opt("leave_one_out", "Fixed: leave_one_out (each sample's baseline is the mean reward of the prompt's other K-1 samples); other baselines: `rlhfkit reinforce`.")
    kl_coef: float = opt(0.05, "beta: per-token KL penalty to the reference, summed into the sequence reward (RLOO keeps it on; 0: none).")
    grad_variance_samples: int = opt(0, "Measure the policy-gradient variance (with and without the baseline) on this many of a batch's sequences, one extra forward/backward each (0: off).")


@dataclass
class GRPOConfig(PolicyGradientConfig):
    """Group relative policy optimisation (Shao et al. 2024, DeepSeekMath)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": dict(_PG_SMOKE, out="runs/grpo_smoke")}

    samples_per_prompt: int = opt(4, "K: the group of responses sampled per prompt, whose rewards normalise each other (K >= 2).")
    minibatch_size: int = opt(16, "Sequences per optimiser step, per process, rounded down to whole groups of K (each group's prompt then runs once); a batch of batch_size * K sequences takes several steps, the later ones off-policy, which is what the clipped ratio is for.")
    grpo_epochs: int = opt(1, "mu: passes over each batch (each pass a round of minibatch steps, the ratio taken to the policy that sampled).")
    clip_eps: float = opt(0.2, "Policy ratio clip: tokens whose ratio left [1 - eps, 1 + eps] in the advantage's direction give no gradient.")
    kl_coef: float = opt(0.04, "beta of the k3 KL term in the loss, exp(ref - logp) - (ref - logp) - 1 per token (DeepSeekMath: 0.04; 0: none; KL is logged either way).")
    scale_rewards: bool = opt(True, "Divide a group's centred rewards by their std (+ adv_eps); off: r - mean only (Dr. GRPO, Liu et al. 2025).")
    adv_eps: float = opt(1e-4, "Added to a group's reward std before dividing (a group of equal rewards gets advantages 0).")
    loss_aggregation: str = opt("sequence", "sequence: each response's token mean, then the mean over responses (DeepSeekMath); token: the mean over all tokens of the minibatch (DAPO).")
    grad_variance_samples: int = opt(0, "Measure the policy-gradient variance (with the group advantages and with the raw rewards) on this many of a batch's sequences, one extra forward/backward each (0: off).")


@dataclass
class BestOfNConfig(RunConfig):
    model: str = opt("runs/sft", "Policy to sample the candidates from.")
    reward_model: str | None = opt(None, "Reward model folder (from `rlhfkit reward`) that picks the best candidate (an ensemble folder: its members' mean).")
    reward_std_penalty: float = opt(0.0, "lambda of the conservative ensemble reward mean - lambda * std over the members of an ensemble --reward-model (Coste et al. 2023; 0: the mean).")
    reward_fn: str | None = opt(None, "Instead of a reward model: 'module:function' taking (prompts, responses) -> scores.")
    prompts: str = opt("", "Prompts JSONL ({prompt} as a string or a list of messages, or {messages} per line).", required=True)
    n: int = opt(16, "Candidates sampled per prompt; the one the reward scores highest is kept (KL to the sampler: log n - (n-1)/n).")
    max_new_tokens: int = opt(32, "Longest candidate.")
    temperature: float = opt(1.0, "Sampling temperature of the candidates.")
    top_p: float = opt(1.0, "Nucleus sampling.")
    batch_size: int = opt(64, "Sequences per generation batch.")
    missing_eos_penalty: float = opt(1.0, "Subtracted from the score of candidates that never emit EOS (as in PPO: the reward model scores every response as finished).")
    reward_batch_size: int = opt(32, "Batch size for scoring with the reward model.")


@dataclass
class ExpertIterationConfig(BestOfNConfig):
    n: int = opt(4, "Candidates sampled per prompt in each round.")
    rounds: int = opt(2, "Rounds of best-of-n on fresh prompts followed by SFT on the winners (each round starts from the last).")
    prompts_per_round: int = opt(64, "Prompts per round, taken in file order (round r uses the r-th block; the file must hold rounds x prompts_per_round).")
    epochs: float = opt(1.0, "SFT passes over a round's winners.")
    lr: float = opt(2e-5, "SFT learning rate of each round (Adam's first steps move every weight by about lr whatever the gradient's size: on a few dozen winners a large lr is mostly noise).")
    sft_batch_size: int = opt(16, "SFT examples per optimiser step of each round, per process (as `rlhfkit sft --batch-size`).")
    warmup_steps: int = opt(0, "Linear warmup steps of each round's SFT.")


def field_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """defaults < YAML file < overrides (keys with value None in overrides are ignored)."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of option: value")
        for k, v in raw.items():
            key = k.replace("-", "_")
            if key not in names:
                raise ValueError(f"{path}: unknown option {k!r} for {cls.__name__}")
            values[key] = v
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and not values.get(f.name)]
    if missing:
        raise ValueError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return cls(**values)


def save_config(cfg, path: str | Path) -> None:
    from rlhfkit.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
