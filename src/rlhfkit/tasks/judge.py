"""What the pipeline needs from a task's judge, and the shape of a task's reward functions.

A judge stands in for the people who would rate a task's outputs: the pipeline asks it to rank
samples for the reward model's training data (``rank``), how much the panel agrees on such pairs
(``agreement_report``), a noise-free score for plots and evaluation (``gold_reward``) and which of
two answers wins (``compare``). Prompts handed to a judge are the task's raw prompts (the opening
of a movie review), not ``Task.format_prompt``'s framing for a chat model.

The movie-review task's judge is the simulated annotator panel (``rlhfkit.annotators.Panel``); a task
scored by a reward or a metric (translation, dialogue) uses ``RewardJudge``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Judge", "JudgeFactory", "RewardFn", "RewardJudge"]

# (prompts, responses) -> one score per response, higher is better (a task's optional reward functions)
RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@runtime_checkable
class Judge(Protocol):
    """The four calls the pipeline makes; any object with them can judge a task."""

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(N,) noise-free score of each response to its prompt."""
        ...

    def rank(self, prompts: Sequence[str], responses: Sequence[Sequence[str]], *, flip_prob: float,
             rng: np.random.Generator | int | None) -> list[list[int]]:
        """One best-first ranking (indices into that prompt's responses) per prompt; every pair of a
        ranking comes out reversed with probability ``flip_prob`` (label noise for training data).
        Equally seeded generators must give the same draws whatever ``flip_prob`` is."""
        ...

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], *,
                noise: bool = False) -> np.ndarray:
        """(N,) outcome per pair: 1 = A wins, 0.5 = tie, 0 = B wins."""
        ...

    def agreement_report(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                         rng: np.random.Generator | int | None = None) -> dict[str, Any]:
        """JSON-ready agreement of the raters on these pairs; the pipeline prints its
        "mean_pairwise_agreement", "krippendorff_alpha" and "fleiss_kappa"."""
        ...


# Optional: ``prefetch(prompts, responses, processes)``, called by every process of a run with the same pairs
# before the main process judges them: the judge may compute its costly deterministic part of them (the
# panel's fluency under the initial model) split between the processes and keep it for the calls above.

# (task, initial model name or path, bf16, seed) -> the judge. It may use the task (its framing, its
# references) and load the initial model (the panel's fluency); ``Task.make_judge`` passes the task.
JudgeFactory = Callable[[Any, str, bool, int], Judge]


class RewardJudge:
    """A deterministic judge from a ``(prompts, responses) -> scores`` reward or metric (a translation's
    sentence BLEU, a hand-engineered dialogue reward): a response's score is the reward.

    There are no annotators, so there is no annotator noise: ``compare`` ignores ``noise`` and
    ``agreement_report`` reports perfect agreement by construction (one deterministic rater always
    agrees with itself; that says nothing about whether the reward agrees with people). ``rank`` adds only
    the pipeline's label noise (``flip_prob``), drawn as the annotator panel draws it.
    """

    def __init__(self, reward: RewardFn, name: str):
        self.reward, self.name = reward, name

    def gold_reward(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        """(N,) the reward of each response to its prompt."""
        return np.asarray(self.reward(list(prompts), list(responses)), dtype=np.float64)

    def rank(self, prompts, responses, *, flip_prob: float, rng) -> list[list[int]]:
        """Best first by the reward (ties: earlier index first); with probability ``flip_prob`` per pair,
        by the panel's label-noise mixture (``annotators.panel.label_noise_mixture``)."""
        from rlhfkit.annotators.panel import label_noise_mixture, ranked_with_lapse

        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        sizes = [len(g) for g in responses]
        scores = self.gold_reward([p for p, k in zip(prompts, sizes) for _ in range(k)], [r for g in responses for r in g])
        # the same draws whatever flip_prob is, so equally seeded calls differ only where a lapse happened
        lapse, keys = rng.random(len(prompts)), rng.random(len(scores))
        p_reverse, p_shuffle = label_noise_mixture(flip_prob)
        out, start = [], 0
        for i, k in enumerate(sizes):
            out.append(ranked_with_lapse(scores[start : start + k], lapse[i], keys[start : start + k], p_reverse, p_shuffle))
            start += k
        return out

    def compare(self, prompts, responses_a, responses_b, *, noise: bool = False) -> np.ndarray:
        """(N,) 1 where A scores higher, 0 where B does, 0.5 on equal scores (``noise`` is ignored)."""
        a, b = self.gold_reward(prompts, responses_a), self.gold_reward(prompts, responses_b)
        return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))

    def agreement_report(self, prompts, responses_a, responses_b, rng=None) -> dict[str, Any]:
        """Perfect agreement by construction (a deterministic reward, no annotators), with the reward's
        verdicts on these pairs."""
        outcome = self.compare(prompts, responses_a, responses_b)
        return {"n_items": len(outcome), "n_annotators": 0, "judge": self.name,
                "mean_pairwise_agreement": 1.0, "krippendorff_alpha": 1.0, "fleiss_kappa": 1.0,
                "note": "a deterministic reward agrees with itself by construction; not a measured agreement",
                "prefers_a": float(np.mean(outcome == 1.0)) if len(outcome) else None,
                "ties": float(np.mean(outcome == 0.5)) if len(outcome) else None}
