"""JSONL files in TRL-compatible shapes: read, validate, write.

Shapes (one JSON object per line; extra keys are kept as metadata):
  prompts      {"prompt": str}                      or {"messages": [{"role", "content"}, ...]}
  sft          {"prompt": str, "completion": str}   or {"messages": [...]} (last message: assistant)
  preferences  {"prompt": str, "chosen": str, "rejected": str, "margin"?: float}
  rankings     {"prompt": str, "responses": [str, ...], "ranking": [int, ...]}  (ranking: best first)

A malformed line stops the command before any training with ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


class DataError(ValueError):
    """A malformed data file; the message names the file and line."""


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; raises DataError on bad JSON."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((n, obj))
    if not rows:
        raise DataError(f"{path}: the file has no records")
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _str(obj: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DataError(f'{where}: missing "{key}"')
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(f'{where}: "{key}" must be a string, got {type(v).__name__}')
    if not allow_empty and not v.strip():
        raise DataError(f'{where}: "{key}" is empty')
    return v


def _messages(obj: dict, where: str) -> list[dict]:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f'{where}: "messages" must be a non-empty list')
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f'{where}: "messages"[{i}] must be an object with string "role" and "content"')
        if m["role"] not in ("system", "user", "assistant"):
            raise DataError(f'{where}: "messages"[{i}].role must be system, user or assistant, got {m["role"]!r}')
    return msgs


def _prompt_text(obj: dict, where: str, messages_ok: bool = True) -> str:
    """A prompt from "prompt", or the user turns of "messages" (single-turn: the last user message)."""
    if "prompt" in obj:
        return _str(obj, "prompt", where)
    if messages_ok and "messages" in obj:
        msgs = _messages(obj, where)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users:
            raise DataError(f'{where}: "messages" has no user message')
        return users[-1]
    raise DataError(f'{where}: missing "prompt" (or "messages")')


@dataclass
class SFTExample:
    prompt: str
    completion: str
    meta: dict = field(default_factory=dict)


@dataclass
class Preference:
    """One comparison: ``chosen`` preferred to ``rejected`` for ``prompt``; ``group`` ties the pairs that
    came from one ranking, so that a batch can keep them together (InstructGPT)."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    group: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class Ranking:
    prompt: str
    responses: list[str]
    ranking: list[int]
    meta: dict = field(default_factory=dict)


def load_prompts(path) -> list[dict]:
    """Prompt records: dicts with at least "prompt" (str); other keys kept."""
    out = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        rec = {k: v for k, v in obj.items() if k != "messages"}
        rec["prompt"] = _prompt_text(obj, where)
        out.append(rec)
    return out


def load_sft(path) -> list[SFTExample]:
    out = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        if "messages" in obj and "prompt" not in obj:
            msgs = _messages(obj, where)
            if msgs[-1]["role"] != "assistant":
                raise DataError(f'{where}: the last of "messages" must be the assistant reply')
            prompt = _prompt_text({"messages": msgs[:-1]}, where)
            completion = msgs[-1]["content"]
        else:
            prompt = _str(obj, "prompt", where)
            completion = _str(obj, "completion", where)
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "messages")}
        out.append(SFTExample(prompt, completion, meta))
    return out


def _validate_ranking(obj: dict, where: str) -> Ranking:
    prompt = _str(obj, "prompt", where)
    responses = obj.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(f'{where}: "responses" must be a list of at least 2 strings')
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise DataError(f'{where}: "responses"[{i}] must be a string')
    ranking = obj.get("ranking")
    K = len(responses)
    if not isinstance(ranking, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking):
        raise DataError(f'{where}: "ranking" must be a list of integers (indices into "responses", best first)')
    if sorted(ranking) != list(range(K)):
        raise DataError(f'{where}: "ranking" must be a permutation of 0..{K - 1}')
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "responses", "ranking")}
    return Ranking(prompt, list(responses), list(ranking), meta)


def load_preferences(path) -> list[Preference]:
    """Pairs and rankings, in one file or mixed; rankings expand to all K(K-1)/2 pairs (same group)."""
    from rlhfkit.ops import ranking_pairs

    out: list[Preference] = []
    for group, (n, obj) in enumerate(read_jsonl(path)):
        where = f"{path}:{n}"
        if "ranking" in obj or "responses" in obj:
            rk = _validate_ranking(obj, where)
            for w, l in ranking_pairs(rk.ranking):
                out.append(Preference(rk.prompt, rk.responses[w], rk.responses[l], None, group, rk.meta))
            continue
        prompt = _str(obj, "prompt", where)
        chosen = _str(obj, "chosen", where, allow_empty=True)
        rejected = _str(obj, "rejected", where, allow_empty=True)
        margin = obj.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise DataError(f'{where}: "margin" must be a number')
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected", "margin")}
        out.append(Preference(prompt, chosen, rejected, None if margin is None else float(margin), group, meta))
    return out


def load_rankings(path) -> list[Ranking]:
    return [_validate_ranking(obj, f"{path}:{n}") for n, obj in read_jsonl(path)]


def source_record(**kw: Any) -> dict:
    """Provenance written beside artifacts (model, step, seed, annotator...)."""
    return {k: v for k, v in kw.items() if v is not None}
