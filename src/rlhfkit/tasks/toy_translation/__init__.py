"""The toy translation task: English -> Veltan, a small language made up for this repository, with an
exact reference for every sentence (see README.md here and ``scripts/build_toy_translation.py``).

Rewards and judge are metrics against the reference, not people: ``reward_functions`` "bleu"
(smoothed sentence BLEU, sacrebleu's ``exp`` smoothing) and "chrf" (sentence chrF), both 0-100;
the judge (``MetricJudge``) scores, ranks and compares responses by sentence BLEU. A prompt may be
the raw English sentence or the task's framing of it (``Task.format_prompt``); a prompt of no
file of this folder is an error, since without a reference there is nothing to score against.

Splits: ``sft.jsonl`` holds the training pairs (prompt = English, completion = Veltan);
``eval.jsonl`` is the test set, ``dev.jsonl`` the development set (read it with ``read_dev()``;
the loader reads only the four standard splits), ``unlabeled.jsonl`` the source sentences for RL
and ``preference.jsonl`` those for ranked samples, all four with a "reference".
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rlhfkit.tasks import TaskSpec

INSTRUCTION = "Translate this English sentence into Veltan:"
ROOT = Path(__file__).resolve().parent
_FILES = ("sft", "dev", "eval", "preference", "unlabeled")


def read_dev() -> list[dict]:
    """The development split: ``{"prompt", "reference"}`` rows of ``dev.jsonl`` (200 sentences)."""
    from rlhfkit.tasks import read_split

    return read_split(ROOT / "dev.jsonl", with_completion=False)


@lru_cache(maxsize=1)
def references() -> dict[str, str]:
    """English sentence -> its Veltan reference, over every file of this folder (sentences are unique)."""
    from rlhfkit.tasks import read_split

    out: dict[str, str] = {}
    for name in _FILES:
        for row in read_split(ROOT / f"{name}.jsonl", with_completion=(name == "sft")):
            out[row["prompt"].strip()] = row["completion"] if name == "sft" else row["reference"]
    return out


def source_of(prompt: Any) -> str:
    """The English sentence inside a prompt: the raw sentence, ``Task.format_prompt``'s framing of it,
    or a conversation (``rlhfkit.data.Conversation`` / a list of messages) whose last user turn is one
    of those."""
    if not isinstance(prompt, str):
        turns = [m for m in prompt if (m["role"] if isinstance(m, dict) else m.role) == "user"]
        if not turns:
            raise ValueError(f"toy_translation: a conversation prompt without a user turn: {prompt!r}")
        last = turns[-1]
        prompt = last["content"] if isinstance(last, dict) else last.content
    text = prompt.strip()
    return text[len(INSTRUCTION):].strip() if text.startswith(INSTRUCTION) else text


def reference_of(prompt: Any) -> str:
    """The Veltan reference of a prompt (see ``source_of``); a KeyError names a prompt without one."""
    src = source_of(prompt)
    ref = references().get(src)
    if ref is None:
        raise KeyError(f"toy_translation: no reference for the prompt {src[:80]!r}: the rewards and the judge "
                       f"score only the task's own sentences (files in {ROOT})")
    return ref


def _refs(prompts: Sequence[Any], responses: Sequence[str]) -> list[str]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [reference_of(p) for p in prompts]


def bleu_reward(prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """Smoothed sentence BLEU (0-100, ``exp`` smoothing) of each response against its prompt's reference."""
    from rlhfkit.eval.mt import sentence_bleu

    return sentence_bleu(responses, _refs(prompts, responses))


def chrf_reward(prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """Sentence chrF (0-100) of each response against its prompt's reference."""
    from rlhfkit.eval.mt import sentence_chrf

    return sentence_chrf(responses, _refs(prompts, responses))


class MetricJudge:
    """A deterministic judge: a response's score is a metric against the reference (sentence BLEU).

    There are no annotators, so there is no annotator noise: ``compare`` ignores ``noise`` and
    ``agreement_report`` reports perfect agreement by construction (one deterministic rater always
    agrees with itself; that says nothing about whether BLEU agrees with people). ``rank`` adds only
    the pipeline's label noise (``flip_prob``), drawn as the annotator panel draws it.
    """

    def __init__(self, metric=bleu_reward, name: str = "sentence BLEU"):
        self.metric, self.name = metric, name

    def gold_reward(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        """(N,) the metric of each response against its prompt's reference."""
        return np.asarray(self.metric(list(prompts), list(responses)), dtype=np.float64)

    def rank(self, prompts, responses, *, flip_prob: float, rng) -> list[list[int]]:
        """Best first by the metric (ties: earlier index first); with probability ``flip_prob`` per pair,
        by the panel's label-noise mixture (``annotators.panel.label_noise_mixture``)."""
        from rlhfkit.annotators.panel import label_noise_mixture

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
            order = [int(j) for j in np.argsort(-scores[start : start + k], kind="stable")]
            if lapse[i] < p_reverse:
                order = order[::-1]
            elif lapse[i] < p_reverse + p_shuffle:
                order = [int(j) for j in np.argsort(keys[start : start + k], kind="stable")]
            out.append(order)
            start += k
        return out

    def compare(self, prompts, responses_a, responses_b, *, noise: bool = False) -> np.ndarray:
        """(N,) 1 where A scores higher, 0 where B does, 0.5 on equal scores (``noise`` is ignored)."""
        a, b = self.gold_reward(prompts, responses_a), self.gold_reward(prompts, responses_b)
        return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))

    def agreement_report(self, prompts, responses_a, responses_b, rng=None) -> dict[str, Any]:
        """Perfect agreement by construction (a deterministic metric, no annotators), with the metric's
        verdicts on these pairs."""
        outcome = self.compare(prompts, responses_a, responses_b)
        return {"n_items": len(outcome), "n_annotators": 0, "judge": f"metric: {self.name} against the reference",
                "mean_pairwise_agreement": 1.0, "krippendorff_alpha": 1.0, "fleiss_kappa": 1.0,
                "note": "a deterministic metric agrees with itself by construction; not a measured agreement",
                "prefers_a": float(np.mean(outcome == 1.0)) if len(outcome) else None,
                "ties": float(np.mean(outcome == 0.5)) if len(outcome) else None}


def make_judge(task, model: str, bf16: bool, seed: int) -> MetricJudge:
    """Sentence BLEU against the reference; loads no model and draws nothing from ``seed``."""
    return MetricJudge()


TASK = TaskSpec(instruction=INSTRUCTION, make_judge=make_judge,
                reward_functions={"bleu": bleu_reward, "chrf": chrf_reward})
