"""What the pipeline needs from a task's judge, and the shape of a task's reward functions.

A judge stands in for the people who would rate a task's outputs: the pipeline asks it to rank
samples for the reward model's training data (``rank``), how much the panel agrees on such pairs
(``agreement_report``), a noise-free score for plots and evaluation (``gold_reward``) and which of
two answers wins (``compare``). Prompts handed to a judge are the task's raw prompts (the opening
of a movie review), not ``Task.format_prompt``'s framing for a chat model.

The movie-review task's judge is the simulated annotator panel (``rlhfkit.annotators.Panel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Judge", "JudgeFactory", "RewardFn"]

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


# (task, initial model name or path, bf16, seed) -> the judge. It may use the task (its framing, its
# references) and load the initial model (the panel's fluency); ``Task.make_judge`` passes the task.
JudgeFactory = Callable[[Any, str, bool, int], Judge]
