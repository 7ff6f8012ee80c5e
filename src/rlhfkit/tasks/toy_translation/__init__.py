"""The toy translation task: English -> Veltan, a small language made up for this repository, with an
exact reference for every sentence (see README.md here and ``scripts/build_toy_translation.py``).

Rewards and judge are metrics against the reference, not people: ``reward_functions`` "bleu"
(smoothed sentence BLEU, sacrebleu's ``exp`` smoothing) and "chrf" (sentence chrF), both 0-100;
the judge (``tasks.judge.RewardJudge`` of BLEU) scores, ranks and compares responses by sentence BLEU. A prompt may be
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

from rlhfkit.tasks import TaskSpec
from rlhfkit.tasks.judge import RewardJudge

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


def make_judge(task, model: str, bf16: bool, seed: int) -> RewardJudge:
    """Sentence BLEU against the reference; loads no model and draws nothing from ``seed``."""
    return RewardJudge(bleu_reward, "metric: sentence BLEU against the reference")


TASK = TaskSpec(instruction=INSTRUCTION, make_judge=make_judge,
                reward_functions={"bleu": bleu_reward, "chrf": chrf_reward})
