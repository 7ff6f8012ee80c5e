"""The multi-turn dialogue task: small talk about hobbies, for Li et al. (2016)'s dialogue rewards (see README.md
here and ``scripts/build_dialogue.py``).

A prompt is a conversation (a ``rlhfkit.data.Conversation``; in the files a list of ``{"role", "content"}``
messages ending with a user turn), its own framing: ``Task.format_prompt`` returns it as it is. The reward
functions are ``rlhfkit.rewards.dialogue``'s: "reward" (Li et al.'s weighted sum), "dullness", "repetition",
"coherence", with the MLE model of ``$RLHFKIT_DIALOGUE_MLE`` (default smollm2-135m). The judge is the same
weighted sum with the run's initial model as the MLE model: a hand-engineered reward, not people, so the
pipeline's win rates against it say how far a policy optimised that reward, not whether people prefer it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlhfkit.rewards import dialogue as rewards
from rlhfkit.tasks import TaskSpec

# used only for a plain-string opening; a conversation prompt is sent as it is
INSTRUCTION = "Reply to this message in one or two sentences:"


class RewardJudge:
    """A deterministic judge from a ``(prompts, responses) -> scores`` reward: scores are the reward, a ranking is
    by the reward (with the pipeline's label noise, drawn as the annotator panel draws it), and the agreement is
    perfect by construction (one deterministic rater)."""

    def __init__(self, reward, name: str):
        self.reward, self.name = reward, name

    def gold_reward(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        return np.asarray(self.reward(list(prompts), list(responses)), dtype=np.float64)

    def rank(self, prompts, responses, *, flip_prob: float, rng) -> list[list[int]]:
        from rlhfkit.annotators.panel import label_noise_mixture

        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        sizes = [len(g) for g in responses]
        scores = self.gold_reward([p for p, k in zip(prompts, sizes) for _ in range(k)], [r for g in responses for r in g])
        lapse, keys = rng.random(len(prompts)), rng.random(len(scores))  # the same draws whatever flip_prob is
        p_reverse, p_shuffle = label_noise_mixture(flip_prob)
        out, start = [], 0
        for i, k in enumerate(sizes):
            order = [int(j) for j in np.argsort(-scores[start : start + k], kind="stable")]
            if lapse[i] < p_reverse:
                order = order[::-1]
            elif lapse[i] < p_reverse + p_shuffle:
                order = [int(j) for j in np.argsort(keys[start : start + k], kind="stable")]
            out.append(order)
            start += k
        return out

    def compare(self, prompts, responses_a, responses_b, *, noise: bool = False) -> np.ndarray:
        a, b = self.gold_reward(prompts, responses_a), self.gold_reward(prompts, responses_b)
        return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))

    def agreement_report(self, prompts, responses_a, responses_b, rng=None) -> dict[str, Any]:
        outcome = self.compare(prompts, responses_a, responses_b)
        return {"n_items": len(outcome), "n_annotators": 0, "judge": self.name,
                "mean_pairwise_agreement": 1.0, "krippendorff_alpha": 1.0, "fleiss_kappa": 1.0,
                "note": "a deterministic reward agrees with itself by construction; not a measured agreement"}


def make_judge(task, model: str, bf16: bool, seed: int) -> RewardJudge:
    """Li et al.'s weighted reward with ``model`` (the run's initial model) as the MLE model; draws nothing from
    ``seed``."""
    reward = rewards.make_dialogue_reward(mle_model=model, bf16=bf16)
    return RewardJudge(reward, "Li et al. (2016) dialogue reward: " + ", ".join(f"{w} {k}" for k, w in reward.weights.items()))


TASK = TaskSpec(instruction=INSTRUCTION, make_judge=make_judge,
                reward_functions={"reward": rewards.default_reward, "dullness": rewards.dullness,
                                  "repetition": rewards.repetition, "coherence": rewards.coherence})
