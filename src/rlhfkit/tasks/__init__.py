"""Tasks: prompts, demonstrations, references, how to frame a prompt, and the task's judge.

A task is a folder: the four split files (``sft.jsonl``, ``preference.jsonl``,
``unlabeled.jsonl``, ``eval.jsonl``) next to a module that defines ``TASK = TaskSpec(...)``
(its instruction, judge factory and optional reward functions). Bundled tasks are the
subfolders of this package (``<name>/__init__.py``); ``load_task`` also takes the path of a
folder anywhere else (its ``task.py`` or ``__init__.py``), so a task can be added without
editing rlhfkit.

``load_task("movie_reviews")`` returns the movie-review continuation task of Ziegler et al.
(2019): continue the opening of a review so that readers prefer the continuation. Its judge
is the simulated annotator panel in ``rlhfkit.annotators``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from rlhfkit.tasks.judge import Judge, JudgeFactory, RewardFn

__all__ = ["Task", "TaskSpec", "Judge", "JudgeFactory", "RewardFn", "load_task", "available_tasks", "read_split",
           "SPLITS"]

SPLITS = ("sft", "preference", "unlabeled", "eval")
_TASK_DIR = Path(__file__).resolve().parent
_MODULE_FILES = ("task.py", "__init__.py")  # where a task folder outside the package defines its TASK


@dataclass(frozen=True)
class TaskSpec:
    """What a task's module declares as ``TASK``; ``load_task`` adds the folder's splits.

    instruction: the line that frames a prompt for a chat model (``Task.format_prompt``);
    make_judge: ``(task, initial model, bf16, seed) -> Judge``, given the loaded ``Task`` (its
    framing, its references) (None: the task has no judge, and the pipeline stages that need one
    fail naming the task); reward_functions: name ->
    ``(prompts, responses) -> scores`` (rule-based rewards a task may offer, e.g. BLEU).

    Example (a ``task.py`` next to the split files)::

        from rlhfkit.tasks import TaskSpec

        def make_judge(task, model, bf16, seed):
            from rlhfkit.annotators import default_panel
            return default_panel(seed=seed)

        TASK = TaskSpec(instruction="Continue this story in one sentence:", make_judge=make_judge)
    """

    instruction: str
    make_judge: JudgeFactory | None = None
    reward_functions: Mapping[str, RewardFn] = field(default_factory=dict)


def read_split(path: Path, *, with_completion: bool) -> list[dict]:
    """Read and validate one split file.

    Every line must be a JSON object with a non-empty string "prompt" (and "completion"
    when ``with_completion``), or a conversation in ``rlhfkit.data``'s shapes: "prompt" a list of
    messages ending with a user turn, "completion" then one assistant message. A split with
    references gives every line a non-empty string "reference", or none. Errors name the file, the
    line and the field.
    """
    # one reader for every JSONL file (FILE:LINE errors, objects only), and data.py's rules for conversations
    from rlhfkit.data import _prompt, _response, read_jsonl

    rows: list[dict] = []
    fields = ("prompt", "completion") if with_completion else ("prompt",)
    for lineno, row in read_jsonl(path):
        if rows and ("reference" in row) != ("reference" in rows[0]):
            raise ValueError(f'{path}:{lineno}: "reference" must be on every line of a split or on none')
        for key in fields + (("reference",) if "reference" in row else ()):
            val = row.get(key)
            if key == "prompt" and isinstance(val, list):
                _prompt(row, f"{path}:{lineno}")
                continue
            if key == "completion" and isinstance(val, list):
                _response(row, key, f"{path}:{lineno}")
                continue
            if not isinstance(val, str) or not val.strip():
                raise ValueError(f'{path}:{lineno}: "{key}" must be a non-empty string')
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Task:
    """A task: its splits, references, judge and reward functions.

    name: task name (its folder's name); instruction: the line that frames a prompt for a chat
    model; root: folder of the split files; splits: split name -> rows (``{"prompt"}``, and
    ``{"prompt", "completion"}`` for "sft"); references: split name -> one reference output per
    row, for the splits whose rows carry "reference" (None when no split does, as for movie
    reviews); reward_functions: name -> ``(prompts, responses) -> scores`` (may be empty).
    """

    name: str
    instruction: str
    root: Path
    splits: dict[str, list[dict]] = field(repr=False)
    references: dict[str, list[str]] | None = field(default=None, repr=False)
    judge_factory: JudgeFactory | None = field(default=None, repr=False)
    reward_functions: Mapping[str, RewardFn] = field(default_factory=dict, repr=False)

    def format_prompt(self, opening):
        """The user message for a chat model: instruction, blank line, the opening. A conversation
        (a multi-turn task's prompt) is its own framing and comes back as it is."""
        if not isinstance(opening, str):
            return opening
        return f"{self.instruction}\n\n{opening.strip()}"

    def path(self, split: str) -> Path:
        """Path of a split's JSONL file."""
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.root / f"{split}.jsonl"

    def prompts(self, split: str) -> list:
        """The openings of one split, in file order (a conversation as a ``rlhfkit.data.Conversation``)."""
        from rlhfkit.data import as_prompt

        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; expected one of {tuple(self.splits)}")
        return [r["prompt"] if isinstance(r["prompt"], str) else as_prompt(r["prompt"]) for r in self.splits[split]]

    def make_judge(self, model: str, bf16: bool, seed: int) -> Judge:
        """The task's judge. model: the initial model (name or path), which a judge may load (the
        movie-review panel scores fluency under it); bf16: its precision; seed: the judge's seed."""
        if self.judge_factory is None:
            raise ValueError(f"task {self.name!r} ({self.root}) defines no judge: give its TaskSpec a make_judge")
        return self.judge_factory(self, model, bf16, seed)


def _bundled() -> list[str]:
    return sorted(p.name for p in _TASK_DIR.iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file() and not p.name.startswith(("_", ".")))


def _spec_of(module: ModuleType, where: Path) -> TaskSpec | None:
    spec = getattr(module, "TASK", None)
    if spec is not None and not isinstance(spec, TaskSpec):
        raise TypeError(f"{where}: TASK must be a rlhfkit.tasks.TaskSpec, got {type(spec).__name__}")
    return spec


def available_tasks() -> list[str]:
    """Names accepted by ``load_task``: the folders of this package whose module defines ``TASK``."""
    return [name for name in _bundled()
            if _spec_of(importlib.import_module(f"{__name__}.{name}"), _TASK_DIR / name) is not None]


def _import_folder(root: Path) -> tuple[ModuleType, Path]:
    """Import a task folder outside the package: its task.py, else its __init__.py."""
    file = next((root / f for f in _MODULE_FILES if (root / f).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{root}: a task folder needs a task.py or __init__.py that defines TASK")
    # a unique module name per folder, registered so that the module's dataclasses and pickles resolve
    name = f"_rlhfkit_task_{root.name}_{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name], file
    spec = importlib.util.spec_from_file_location(
        name, file, submodule_search_locations=[str(root)] if file.name == "__init__.py" else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module, file


def _is_path(name: str) -> bool:
    # a bundled name is a bare word; anything that looks like a path is a folder
    return any(sep in name for sep in ("/", "\\")) or name.startswith((".", "~"))


def load_task(name: str = "movie_reviews") -> Task:
    """Load a task and validate its files (see the task folder's README.md).

    name: a bundled task (``available_tasks()``) or the path of a task folder (anything with a
    "/" or starting with "." or "~", e.g. ``./my_task``) holding the split files and a task.py
    or __init__.py that defines ``TASK = TaskSpec(...)``.
    """
    if _is_path(name):
        root = Path(name).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"task folder {name!r} does not exist")
        module, where = _import_folder(root)
        task_name = root.name
    else:
        if name not in _bundled():
            raise ValueError(f"unknown task {name!r}; available: {available_tasks()}")
        root, task_name = _TASK_DIR / name, name
        module, where = importlib.import_module(f"{__name__}.{name}"), root / "__init__.py"
    spec = _spec_of(module, where)
    if spec is None:
        raise ValueError(f"{where}: defines no TASK = rlhfkit.tasks.TaskSpec(...); task {task_name!r} cannot load")
    splits = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing split file of task {task_name!r}")
        splits[split] = read_split(path, with_completion=(split == "sft"))
    references = {s: [r["reference"] for r in rows] for s, rows in splits.items() if rows and "reference" in rows[0]}
    return Task(name=task_name, instruction=spec.instruction, root=root, splits=splits, references=references or None,
                judge_factory=spec.make_judge, reward_functions=dict(spec.reward_functions))
