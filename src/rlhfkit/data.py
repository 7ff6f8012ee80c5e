"""JSONL files in the shapes TRL reads, plus rlhfkit's own rankings: read, validate, write.

Shapes (one JSON object per line; extra keys are kept as metadata). A prompt is a string or a
conversation: a list of ``{"role", "content"}`` messages (system, user, assistant) ending with a user turn.
  prompts      {"prompt": str | [messages]}  or {"messages": [...]} (the conversation up to its last user turn)
  sft          {"prompt": str, "completion": str}           (TRL standard prompt-completion)
               {"prompt": [messages], "completion": [messages]}  (TRL conversational prompt-completion)
               {"messages": [..., {"role": "assistant"}]}    (TRL conversational language modelling)
               {"text": str}                                 (language modelling on the whole text, no template)
  preferences  {"prompt": str | [messages], "chosen": str | [one assistant message], "rejected": ..., "margin"?: float}
               {"chosen": [messages], "rejected": [messages]}  (TRL implicit prompt: the turns both share are
               the prompt, the last assistant turn the response)
  rankings     {"prompt": str | [messages], "responses": [str, ...], "ranking": [int, ...]}  (rlhfkit's own;
               ranking: best first; ``rlhfkit data to-pairs`` writes TRL pairs)

A conversation is kept whole (every turn, the given system message); a one-user-message conversation is
the plain string prompt. In memory it is a ``Conversation`` (a tuple of ``Message(role, content)``), so that
it hashes and compares like a string prompt wherever prompts are grouped or used as keys.

A malformed line stops the command before any training with ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Union


class DataError(ValueError):
    """A malformed data file; the message names the file and line."""


class Message(NamedTuple):
    role: str
    content: str


class Conversation(tuple):
    """A prompt that is a conversation: ``Message``s ending with a user turn. A tuple so that it is
    hashable and compares by value, like a string prompt."""

    def __new__(cls, messages: Iterable):
        return super().__new__(cls, (_as_message(m) for m in messages))

    def to_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self]

    def __repr__(self) -> str:
        return f"Conversation({self.to_messages()!r})"


Prompt = Union[str, Conversation]
CHAT_TEMPLATE_CHOICES = ("auto", "never")


def _as_message(m) -> Message:
    if isinstance(m, Message):
        return m
    if isinstance(m, dict):
        return Message(m["role"], m["content"])
    return Message(*m)


def as_prompt(messages) -> Prompt:
    """A conversation, or its text when it is a single user message (the same prompt either way)."""
    conv = Conversation(messages)
    if len(conv) == 1 and conv[0].role == "user":
        return conv[0].content
    return conv


def prompt_json(p):
    """A prompt as JSON: the string, or the list of messages (TRL's conversational shape)."""
    return p.to_messages() if isinstance(p, Conversation) else p


def check_chat_template(value: str) -> str:
    if value not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_CHOICES)}, got {value!r}")
    return value


def _raw_text_ok(prompt: Prompt, where: str, chat_template: str) -> Prompt:
    """With chat_template 'never' the prompt is fed as raw text: a conversation has no raw text."""
    if check_chat_template(chat_template) == "never" and isinstance(prompt, Conversation):
        raise DataError(f"{where}: a conversation (list of messages) needs the chat template; "
                        f"with chat_template 'never' give the prompt as a plain string")
    return prompt


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
    """One JSON object per line (a Conversation value is written as TRL's list of messages)."""
    from rlhfkit.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:  # a killed run leaves no half file
        for r in rows:
            f.write(json.dumps({k: prompt_json(v) for k, v in r.items()}, ensure_ascii=False) + "\n")
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


def _message_list(v, where: str, key: str) -> list[Message]:
    if not isinstance(v, list) or not v:
        raise DataError(f'{where}: "{key}" must be a non-empty list of {{"role", "content"}} messages')
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f'{where}: "{key}"[{i}] must be an object with string "role" and "content"')
        if m["role"] not in ("system", "user", "assistant"):
            raise DataError(f'{where}: "{key}"[{i}].role must be system, user or assistant, got {m["role"]!r}')
    return [Message(m["role"], m["content"]) for m in v]


def _conversation_prompt(msgs: list[Message], where: str, key: str) -> Prompt:
    if msgs[-1].role != "user":
        raise DataError(f'{where}: "{key}" must end with a user message (the turn the model answers), '
                        f'got {msgs[-1].role!r}')
    return as_prompt(msgs)


def _prompt(obj: dict, where: str) -> Prompt:
    """"prompt": a non-empty string, or a list of messages ending with a user turn."""
    if "prompt" not in obj:
        raise DataError(f'{where}: missing "prompt"')
    v = obj["prompt"]
    if isinstance(v, list):
        return _conversation_prompt(_message_list(v, where, "prompt"), where, "prompt")
    if not isinstance(v, str):
        raise DataError(f'{where}: "prompt" must be a string or a list of {{"role", "content"}} messages, '
                        f'got {type(v).__name__}')
    return _str(obj, "prompt", where)


def _prompt_of_messages(obj: dict, where: str) -> Prompt:
    """The conversation of "messages" up to and including its last user turn."""
    msgs = _message_list(obj["messages"], where, "messages")
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=None)
    if last_user is None:
        raise DataError(f'{where}: "messages" has no user message')
    return as_prompt(msgs[: last_user + 1])


def _response(obj: dict, key: str, where: str) -> str:
    """A response: a string, or TRL's conversational form, one assistant message."""
    v = obj.get(key)
    if isinstance(v, list):
        msgs = _message_list(v, where, key)
        if len(msgs) != 1 or msgs[0].role != "assistant":
            raise DataError(f'{where}: "{key}" must be one assistant message; put the earlier turns of a '
                            f'multi-turn answer in "prompt"')
        return msgs[0].content
    return _str(obj, key, where, allow_empty=True)


def _implicit_prompt(obj: dict, where: str) -> tuple[Prompt, str, str]:
    """TRL's implicit-prompt preference: "chosen" and "rejected" conversations that share every turn but
    their last assistant message; the shared turns are the prompt."""
    sides = {}
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise DataError(f'{where}: missing "{key}"')
        if not isinstance(obj[key], list):
            raise DataError(f'{where}: no "prompt": "chosen" and "rejected" must then be conversations (lists of '
                            f'messages, TRL implicit prompt); with plain-string answers give "prompt"')
        msgs = _message_list(obj[key], where, key)
        if msgs[-1].role != "assistant":
            raise DataError(f'{where}: "{key}" must end with the assistant answer')
        sides[key] = msgs
    if sides["chosen"][:-1] != sides["rejected"][:-1]:
        raise DataError(f'{where}: "chosen" and "rejected" must share every turn but their last assistant '
                        f'message (the shared turns are the prompt); otherwise give "prompt" explicitly')
    if len(sides["chosen"]) < 2:
        raise DataError(f'{where}: "chosen" and "rejected" share no turn before the answer: there is no prompt')
    if sides["chosen"][-2].role != "user":
        raise DataError(f'{where}: the turns "chosen" and "rejected" share must end with a user message '
                        f'(the turn they answer)')
    prompt = as_prompt(sides["chosen"][:-1])
    return prompt, sides["chosen"][-1].content, sides["rejected"][-1].content


@dataclass
class SFTExample:
    """``prompt`` then ``completion`` (the last assistant turn); ``prompt`` None: language modelling on
    ``completion`` as raw text ({"text"} lines)."""

    prompt: Prompt | None
    completion: str
    meta: dict = field(default_factory=dict)


@dataclass
class Preference:
    """One comparison: ``chosen`` preferred to ``rejected`` for ``prompt``. The reward trainer groups the
    pairs of a prompt (from one ranking or several pair lines) by the prompt itself."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Ranking:
    prompt: Prompt
    responses: list[str]
    ranking: list[int]
    meta: dict = field(default_factory=dict)


def load_prompts(path, chat_template: str = "auto") -> list[dict]:
    """Prompt records: dicts with at least "prompt" (a string or a Conversation); other keys kept."""
    out = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        if "prompt" in obj:
            prompt = _prompt(obj, where)
        elif "messages" in obj:
            prompt = _prompt_of_messages(obj, where)
        elif "chosen" in obj:
            prompt = _implicit_prompt(obj, where)[0]
        else:
            raise DataError(f'{where}: missing "prompt" (or "messages")')
        rec = {k: v for k, v in obj.items() if k != "messages"}
        rec["prompt"] = _raw_text_ok(prompt, where, chat_template)
        out.append(rec)
    return out


def _sft_example(obj: dict, where: str) -> SFTExample:
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "messages", "text")}
    if not isinstance(meta.get("finished", True), bool):
        raise DataError(f'{where}: "finished" must be true or false')
    if "prompt" not in obj and "messages" not in obj and "text" in obj:
        return SFTExample(None, _str(obj, "text", where), meta)
    if "prompt" in obj:
        if "completion" not in obj and "chosen" in obj:
            raise DataError(f'{where}: a preference pair: SFT reads {{"prompt", "completion"}}, {{"messages"}} '
                            f'or {{"text"}} (train a reward model on preference files)')
        if isinstance(obj["prompt"], str):
            if isinstance(obj.get("completion"), list):
                raise DataError(f'{where}: "prompt" and "completion" must both be strings or both lists of messages')
            return SFTExample(_prompt(obj, where), _str(obj, "completion", where), meta)
        _prompt(obj, where)  # validates "prompt"
        if not isinstance(obj.get("completion"), list):
            if "completion" not in obj:
                raise DataError(f'{where}: missing "completion"')
            raise DataError(f'{where}: "prompt" and "completion" must both be strings or both lists of messages')
        msgs = _message_list(obj["prompt"], where, "prompt") + _message_list(obj["completion"], where, "completion")
    elif "messages" in obj:
        msgs = _message_list(obj["messages"], where, "messages")
    else:
        raise DataError(f'{where}: missing "prompt" (or "messages", or "text")')
    if msgs[-1].role != "assistant":
        raise DataError(f'{where}: the last message must be the assistant reply')
    if len(msgs) < 2 or msgs[-2].role != "user":
        raise DataError(f'{where}: the last assistant reply must follow a user message')
    return SFTExample(as_prompt(msgs[:-1]), msgs[-1].content, meta)


def load_sft(path, chat_template: str = "auto") -> list[SFTExample]:
    out = []
    for n, obj in read_jsonl(path):
        ex = _sft_example(obj, f"{path}:{n}")
        if ex.prompt is not None:
            _raw_text_ok(ex.prompt, f"{path}:{n}", chat_template)
        out.append(ex)
    return out


def _validate_ranking(obj: dict, where: str) -> Ranking:
    prompt = _prompt(obj, where)
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


def _pair(obj: dict, where: str) -> Preference:
    if "completion" in obj and "label" in obj:
        raise DataError(f'{where}: unpaired preference {{"prompt", "completion", "label"}} (TRL\'s KTO shape) is '
                        f'not read: give pairs {{"prompt", "chosen", "rejected"}} or rankings '
                        f'{{"prompt", "responses", "ranking"}}')
    if "prompt" in obj:
        prompt = _prompt(obj, where)
        chosen, rejected = _response(obj, "chosen", where), _response(obj, "rejected", where)
    elif "chosen" in obj or "rejected" in obj:
        prompt, chosen, rejected = _implicit_prompt(obj, where)
    else:
        raise DataError(f'{where}: missing "prompt"')
    margin = obj.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise DataError(f'{where}: "margin" must be a number')
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected", "margin")}
    return Preference(prompt, chosen, rejected, None if margin is None else float(margin), meta)


def load_preferences(path, chat_template: str = "auto") -> list[Preference]:
    """Pairs and rankings, in one file or mixed; rankings expand to all K(K-1)/2 pairs."""
    from rlhfkit.ops import ranking_pairs

    out: list[Preference] = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        if "ranking" in obj or "responses" in obj:
            rk = _validate_ranking(obj, where)
            _raw_text_ok(rk.prompt, where, chat_template)
            for w, l in ranking_pairs(rk.ranking):
                out.append(Preference(rk.prompt, rk.responses[w], rk.responses[l], None, rk.meta))
            continue
        out.append(_pair(obj, where))
        _raw_text_ok(out[-1].prompt, where, chat_template)
    return out


def load_rankings(path) -> list[Ranking]:
    return [_validate_ranking(obj, f"{path}:{n}") for n, obj in read_jsonl(path)]


def pair_rows(prefs: list[Preference]) -> list[dict]:
    """TRL preference rows ``{"prompt", "chosen", "rejected"[, "margin"]}`` (+ metadata). A conversation
    prompt gives TRL's conversational shape (answers as one assistant message each). ``margin`` is on every
    row or on none: TRL's RewardTrainer fails on a column with nulls; a pair without one gets 0 (no margin)."""
    with_margin = any(p.margin is not None for p in prefs)
    rows = []
    for p in prefs:
        conv = isinstance(p.prompt, Conversation)
        answer = (lambda t: [{"role": "assistant", "content": t}]) if conv else (lambda t: t)
        row = {"prompt": prompt_json(p.prompt), "chosen": answer(p.chosen), "rejected": answer(p.rejected)}
        if with_margin:
            row["margin"] = 0.0 if p.margin is None else p.margin
        rows.append({**row, **{k: v for k, v in p.meta.items() if k not in row}})
    return rows


def source_record(**kw: Any) -> dict:
    """Provenance written beside artifacts (model, step, seed, annotator...)."""
    return {k: v for k, v in kw.items() if v is not None}
