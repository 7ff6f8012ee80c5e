"""Bundled tasks: prompts, demonstrations, and how to frame a prompt for a chat model.

``load_task("movie_reviews")`` returns the movie-review continuation task of Ziegler et al.
(2019): continue the opening of a review so that readers prefer the continuation. Its
gold judge is the simulated annotator panel in ``rlhfkit.annotators``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Task", "load_task", "available_tasks", "read_split", "SPLITS"]

SPLITS = ("sft", "preference", "unlabeled", "eval")
_TASK_DIR = Path(__file__).resolve().parent

# name -> instruction framing a prompt for a chat model. "one or two sentences" keeps a
# 135M instruct model's continuation short, as in Ziegler et al. (24-token continuations).
_INSTRUCTIONS = {
    "movie_reviews": "Continue this movie review in one or two sentences:",
}


def available_tasks() -> list[str]:
    """Names accepted by ``load_task``."""
    return sorted(_INSTRUCTIONS)


def read_split(path: Path, *, with_completion: bool) -> list[dict]:
    """Read and validate one split file.

    Every line must be a JSON object with a non-empty string "prompt" (and "completion"
    when ``with_completion``). Errors name the file, the line and the field.
    """
    from rlhfkit.data import read_jsonl  # one reader for every JSONL file: FILE:LINE errors, objects only

    rows: list[dict] = []
    fields = ("prompt", "completion") if with_completion else ("prompt",)
    for lineno, row in read_jsonl(path):
        for key in fields:
            val = row.get(key)
            if not isinstance(val, str) or not val.strip():
                raise ValueError(f'{path}:{lineno}: "{key}" must be a non-empty string')
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Task:
    """A bundled task.

    name: task name; instruction: the line that frames an opening for a chat model;
    root: folder of the split files; splits: split name -> rows (``{"prompt"}``, and
    ``{"prompt", "completion"}`` for "sft").
    """

    name: str
    instruction: str
    root: Path
    splits: dict[str, list[dict]] = field(repr=False)

    def format_prompt(self, opening: str) -> str:
        """The user message for a chat model: instruction, blank line, the opening."""
        return f"{self.instruction}\n\n{opening.strip()}"

    def path(self, split: str) -> Path:
        """Path of a split's JSONL file."""
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.root / f"{split}.jsonl"

    def prompts(self, split: str) -> list[str]:
        """The openings of one split, in file order."""
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; expected one of {tuple(self.splits)}")
        return [r["prompt"] for r in self.splits[split]]


def load_task(name: str = "movie_reviews") -> Task:
    """Load a bundled task and validate its files (see the task folder's README.md)."""
    if name not in _INSTRUCTIONS:
        raise ValueError(f"unknown task {name!r}; available: {available_tasks()}")
    root = _TASK_DIR / name
    splits = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing split file of task {name!r}")
        splits[split] = read_split(path, with_completion=(split == "sft"))
    return Task(name=name, instruction=_INSTRUCTIONS[name], root=root, splits=splits)
