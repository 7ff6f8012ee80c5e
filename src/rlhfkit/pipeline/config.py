"""The pipeline's one flat config (YAML + flags), and its presets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import opt


@dataclass
class PipelineConfig:
    out: str = opt("runs/demo", "Run directory; every stage writes its own folder in it.")
    model: str = opt("smollm2-135m", "Initial model (alias, .gguf or folder).")
    task: str = opt("movie_reviews", "Bundled task.")
    seed: int = opt(0, "Seed of every stage.")
    system_prompt: str | None = opt("You are a helpful assistant.", "System message for the chat template (short: prompts cost tokens).")
    bf16: bool | None = opt(None, "bf16 autocast for sampling, scoring and training. Not given (auto): bf16 only where the device computes it natively (CPUs with AVX-512 BF16 or AMX: ~2x faster; on other CPUs bf16 is many times slower than fp32), fp32 elsewhere.")
    max_new_tokens: int = opt(40, "Longest response, for every method.")
    temperature: float = opt(1.0, "Sampling temperature of the preference samples and of PPO's rollouts.")
    eval_temperature: float = opt(1.0, "Sampling temperature of every method's evaluation responses and of best-of-n's candidates (1.0: each policy's own distribution, the one PPO optimises and KL is measured on).")
    gen_batch_size: int = opt(96, "Sequences per generation batch.")
    stages: str = opt("sft,preferences,reward,ppo,best_of_n,expert_iteration,eval", "Stages to run, in order; a stage reads what the earlier ones wrote.")
    # SFT
    sft_examples: int = opt(160, "Demonstrations used (the task ships 200).")
    sft_epochs: float = opt(1.0, "SFT passes over the demonstrations.")
    sft_lr: float = opt(5e-5, "SFT learning rate.")
    sft_batch_size: int = opt(16, "SFT batch size.")
    # preferences
    pref_prompts: int = opt(160, "Preference prompts to sample K responses for.")
    pref_sources: str = opt("sft,initial", "Models the K responses are drawn from, split evenly (sft, initial).")
    pref_k: int = opt(4, "Responses per preference prompt, ranked by one simulated annotator.")
    flip_prob: float = opt(0.25, "Label noise of the training annotators (AlpacaFarm: 0.25).")
    # reward model
    rm_epochs: float = opt(1.0, "Reward-model passes over the rankings.")
    rm_lr: float = opt(3e-5, "Reward-model learning rate.")
    rm_batch_size: int = opt(8, "Prompts (with all their pairs) per reward-model step.")
    rm_train_top_layers: int = opt(0, "Train only the top N blocks of the reward model (0: all).")
    # PPO
    ppo_steps: int = opt(10, "PPO iterations (at most; see ppo_max_kl).")
    ppo_batch_size: int = opt(32, "Prompts per PPO iteration.")
    ppo_minibatch_size: int = opt(8, "Sequences per PPO gradient step.")
    ppo_epochs: int = opt(1, "PPO epochs per batch.")
    ppo_lr: float = opt(1e-5, "PPO learning rate.")
    ppo_lora_r: int = opt(0, "LoRA rank for PPO (0: all parameters).")
    ppo_kl_coef: float = opt(0.05, "Initial KL coefficient beta.")
    ppo_adaptive_kl: bool = opt(False, "Adaptive KL controller.")
    ppo_kl_target: float = opt(4.0, "Target KL (nats/sequence) of the adaptive controller.")
    ppo_max_kl: float = opt(3.0, "Stop PPO when KL to the reference (nats/sequence, k1) passes this (0: never); gold reward peaked at KL 1-3 in our runs.")
    ppo_target_kl: float = opt(0.0, "Stop a batch's PPO epochs past this approx KL (0: never).")
    ppo_vf_coef: float = opt(0.1, "Value-loss weight.")
    ppo_missing_eos_penalty: float = opt(0.5, "Score penalty for responses without EOS (1.0 made PPO's answers short, and short answers win less often).")
    ppo_whiten_rewards: bool = opt(False, "Whiten rewards before GAE.")
    ppo_log_gold: bool = opt(True, "Log the panel's gold reward of every PPO batch (for the over-optimisation plot).")
    # best-of-n and expert iteration
    bon_n: int = opt(16, "Candidates per prompt for best-of-n.")
    bon_prompts: int = opt(80, "Eval prompts best-of-n answers (the first ones; 0: all eval prompts): n samples each are its cost.")
    ei_rounds: int = opt(2, "Expert-iteration rounds (best-of-n then SFT on the winners).")
    ei_prompts: int = opt(64, "Prompts per expert-iteration round (from the unlabeled split). 32 gave 2 SFT steps a round at lr 5e-5, and expert iteration's verdict against SFT flipped with the arithmetic (bf16 vs fp32).")
    ei_n: int = opt(4, "Candidates per prompt in expert iteration.")
    ei_epochs: float = opt(1.0, "SFT passes over the winners per round.")
    ei_lr: float = opt(2e-5, "Expert-iteration SFT learning rate (Adam's first steps move every weight by about lr whatever the gradient's size: on a few dozen winners a large lr is mostly noise).")
    ei_warmup_steps: int = opt(0, "Linear warmup steps of each expert-iteration SFT round.")
    # evaluation
    eval_prompts: int = opt(224, "Eval prompts (the task ships 300).")
    eval_samples: int = opt(2, "Answers per eval prompt for every sampled method, each judged against its own reference answer (standard errors are taken over prompts).")
    human: str | None = opt(None, "Human judgments (rlhfkit feedback export --kind eval) to add a human win-rate column.")


PRESETS = {
    # the demo: the embedded SmolLM2 on the bundled task (README: 50 min in fp32 on 2 cores without native bf16)
    "demo": {},
    # the same code path on the tiny random model in well under 2 minutes (make test runs it)
    "smoke": dict(model="tiny", bf16=False, max_new_tokens=8, gen_batch_size=32, sft_examples=16, sft_lr=1e-3,
                  pref_prompts=8, rm_epochs=1.0, rm_lr=1e-3, ppo_steps=2, ppo_batch_size=8, ppo_minibatch_size=4,
                  ppo_lr=1e-3, bon_n=4, ei_rounds=2, ei_prompts=8, ei_n=2, ei_lr=1e-3, eval_prompts=12, bon_prompts=8,
                  system_prompt=None),
}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def bundled_config_path() -> Path:
    return Path(__file__).parent / "demo.yaml"
