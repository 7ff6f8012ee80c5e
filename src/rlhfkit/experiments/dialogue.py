"""``rlhfkit experiment dialogue``: reward engineering for dialogue (Li et al. 2016), measured.

MLE (SFT) on the bundled dialogue task's conversations, then REINFORCE (leave-one-out baseline) from that
model against the combined hand-engineered reward of ``rlhfkit.rewards.dialogue`` (dullness, repetition,
coherence; the MLE model is the frozen yardstick). Before and after, both models answer the eval
conversations (the same prompts, each model from its own sampling stream); ``results.json`` holds each term's
mean (and the weighted total) before and after, and ``samples.jsonl`` the turns side by side.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhfkit.atomic import atomic_write
from rlhfkit.config import ReinforceConfig, SFTConfig, opt
from rlhfkit.data import write_jsonl

TASK = "dialogue"


@dataclass
class DialogueExperimentConfig:
    out: str = opt("runs/dialogue", "Experiment directory.")
    model: str = opt("smollm2-135m", "Initial model.")
    seed: int = opt(0, "Seed of every run.")
    mle_steps: int = opt(15, "MLE (SFT) optimiser steps on the task's demonstrations.")
    mle_batch_size: int = opt(8, "MLE examples per step.")
    mle_lr: float = opt(5e-5, "MLE learning rate.")
    rl_steps: int = opt(12, "REINFORCE iterations.")
    rl_batch_size: int = opt(4, "Prompts per REINFORCE iteration.")
    samples_per_prompt: int = opt(4, "K samples per prompt (leave-one-out baseline).")
    rl_lr: float = opt(5e-5, "REINFORCE learning rate.")
    weights: str = opt("dullness=0.25,repetition=0.25,coherence=0.5", "Weights of the reward terms (Li et al.'s by default).")
    max_new_tokens: int = opt(40, "Longest reply.")
    eval_prompts: int = opt(80, "Eval conversations answered before and after.")
    gen_batch_size: int = opt(64, "Sequences per generation batch.")


PRESETS = {
    "full": {},
    "smoke": dict(model="tiny", mle_steps=3, mle_lr=1e-3, rl_steps=2, rl_batch_size=4, samples_per_prompt=2, rl_lr=1e-3,
                  max_new_tokens=8, eval_prompts=6, gen_batch_size=32),
}


def parse_weights(text: str) -> dict[str, float]:
    """'dullness=0.25,repetition=0.25' -> {"dullness": 0.25, "repetition": 0.25}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"weights: expected TERM=NUMBER, got {part!r}") from None
    return out


def answer(model_path, prompts: list, cfg: DialogueExperimentConfig, stream: str) -> list[str]:
    """One sampled reply (temperature 1) per conversation, from the model's own stream."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.pipeline.seeds import stream_seed
    from rlhfkit.rollout import GenerationConfig, generate

    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, batch_size=cfg.gen_batch_size)
    ro = generate(load_frozen_lm(model_path, False), load_tokenizer(model_path), prompts, gen, seed=stream_seed(cfg.seed, stream))
    return [r.strip() for r in ro.responses]


def run_dialogue_experiment(cfg: DialogueExperimentConfig, progress: bool = True, echo=print) -> dict:
    """Run the experiment (see the module docstring); writes and returns ``results.json``."""
    from rlhfkit.rewards.dialogue import make_dialogue_reward
    from rlhfkit.tasks import load_task
    from rlhfkit.train.reinforce import train_reinforce
    from rlhfkit.train.sft import train_sft

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = parse_weights(cfg.weights)
    task = load_task(TASK)
    t0, timings = time.perf_counter(), {}
    sft_data = task.path("sft")
    rl_prompts = write_jsonl(out / "data" / "rl_prompts.jsonl", [{"prompt": p} for p in _plain(task.prompts("unlabeled"))])

    t = time.perf_counter()
    mle = train_sft(SFTConfig(model=cfg.model, data=str(sft_data), out=str(out / "mle"), max_steps=cfg.mle_steps,
                              batch_size=cfg.mle_batch_size, lr=cfg.mle_lr, seed=cfg.seed), progress=progress)
    timings["mle"] = round(time.perf_counter() - t, 1)
    # the frozen MLE model is the yardstick of dullness and coherence, before and after alike
    reward = make_dialogue_reward(mle_model=str(mle), weights=weights)
    t = time.perf_counter()
    rl = train_reinforce(ReinforceConfig(model=str(mle), prompts=str(rl_prompts), out=str(out / "reinforce"), steps=cfg.rl_steps,
                                         batch_size=cfg.rl_batch_size, samples_per_prompt=cfg.samples_per_prompt,
                                         baseline="leave_one_out", lr=cfg.rl_lr, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed),
                         reward_fn=reward, progress=progress)
    timings["reinforce"] = round(time.perf_counter() - t, 1)

    prompts = task.prompts("eval")[: cfg.eval_prompts]  # Conversations: the chat template renders every turn
    replies = {"before": answer(mle, prompts, cfg, "dialogue:mle"), "after": answer(rl, prompts, cfg, "dialogue:reinforce")}
    plain = _plain(prompts)
    terms = {when: reward.terms_of(prompts, r) for when, r in replies.items()}
    results = {"terms": {when: {k: float(np.mean(v)) for k, v in ts.items()} for when, ts in terms.items()}}
    for when, ts in terms.items():
        results["terms"][when]["total"] = float(sum(weights[k] * np.mean(v) for k, v in ts.items()))
    results["weights"] = weights
    write_jsonl(out / "samples.jsonl", [
        {"conversation": p, "before": b, "after": a, **{f"{k}_before": float(terms["before"][k][i]) for k in terms["before"]},
         **{f"{k}_after": float(terms["after"][k][i]) for k in terms["after"]}}
        for i, (p, b, a) in enumerate(zip(plain, replies["before"], replies["after"]))])
    results["samples"] = [{"last_user_turn": p if isinstance(p, str) else p[-1]["content"], "before": b, "after": a}
                          for p, b, a in list(zip(plain, replies["before"], replies["after"]))[:5]]
    results["timings"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    results["settings"] = dataclasses.asdict(cfg)
    atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    echo(f"   mle {timings['mle']:.0f} s, reinforce {timings['reinforce']:.0f} s")
    return results


def _plain(prompts: list) -> list:
    """Conversations as lists of {role, content} dicts (what the prompt files and the rewards take)."""
    return [p if isinstance(p, str) else p.to_messages() for p in prompts]
