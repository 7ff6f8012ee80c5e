"""Tasks in: parse a tasks JSONL (errors name file:line:field), create the tasks, queue
sampling jobs for tasks that wait for their responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..db import TASK_KINDS, Assignment, Job, Label, Response, Task, utcnow, write_session
from .common import Conflict, Invalid, NotFound, check_text, show
from .labels import RATING_MAX, RATING_MIN, normalize_tiers


@dataclass
class TaskSpec:
    """One task to create; ``responses`` are ``(text, source, meta)``; none means "to sample"."""

    kind: str
    prompt: str
    responses: list[tuple[str, str, dict]] = field(default_factory=list)
    is_gold: bool = False
    gold: Any = None
    reference_source: str | None = None
    meta: dict = field(default_factory=dict)
    where: str = ""  # file:line, for messages


class ImportFileError(Invalid):
    pass


def _err(where: str, msg: str) -> ImportFileError:
    return ImportFileError(f"{where}: {msg}")


def _parse_responses(obj: dict, where: str) -> list[tuple[str, str, dict]]:
    raw = obj.get("responses", [])
    if not isinstance(raw, list):
        raise _err(where, '"responses" must be a list')
    sources = obj.get("sources")
    if sources is not None and (not isinstance(sources, list) or len(sources) != len(raw)):
        raise _err(where, f'"sources" must be a list as long as "responses" ({len(raw)})')
    out = []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            text, source, meta = r, (sources[i] if sources else f"response_{i}"), {}
        elif isinstance(r, dict):
            text = r.get("text", r.get("response"))
            source = r.get("source", sources[i] if sources else f"response_{i}")
            meta = {k: v for k, v in r.items() if k not in ("text", "response", "source")}
            _json_text(meta, where, f'"responses"[{i}]')
        else:
            raise _err(where, f'"responses"[{i}] must be a string or an object with "text"')
        if not isinstance(text, str) or not text.strip():
            raise _err(where, f'"responses"[{i}] has no text')
        if not isinstance(source, str) or not source or len(source) > 255:
            raise _err(where, f'"responses"[{i}]: "source" must be a non-empty string of at most 255 characters')
        _text(text, where, f'"responses"[{i}]')
        _text(source, where, f'"responses"[{i}]."source"')
        out.append((text, source, meta))
    return out


def _text(value: str, where: str, what: str) -> None:
    try:
        check_text(value, what)
    except Invalid as e:
        raise _err(where, e.message) from None


def _source_name(value: Any, what: str) -> str:
    """A response source or reference source: text that fits its column (255 characters)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise Invalid(f"{what} must be a non-empty string of at most 255 characters, got {show(value)}")
    return check_text(value, what)


def _json_text(value: Any, where: str, what: str) -> None:
    """Every key and string inside ``value`` (imported ``meta``) is valid text: PostgreSQL
    refuses NUL and lone surrogates in JSON too. Walked without recursion: json.loads already
    went as deep as Python's recursion limit allows."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                _text(k, where, f"{what} key {show(k)}")
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            _text(v, where, what)


def _check_gold(kind: str, gold: Any, n: int, where: str) -> Any:
    """Gold answers are given in response positions (0-based, import order)."""
    if not isinstance(gold, dict):
        raise _err(where, '"gold" must be an object: {"scores": [...]}, {"ranking": [...]} or {"winner": i|"tie"}')
    if kind == "rating":
        scores = gold.get("scores")
        if not isinstance(scores, list) or len(scores) != n or not all(
            isinstance(x, int) and not isinstance(x, bool) and RATING_MIN <= x <= RATING_MAX for x in scores
        ):
            raise _err(where, f'"gold"."scores" must be {n} integers from 1 to 7')
        return {"scores": scores}
    if kind == "ranking":
        tiers = gold.get("ranking")
        try:
            tiers = normalize_tiers(tiers, list(range(n)))
        except Invalid as e:
            raise _err(where, f'"gold"."ranking": {e.message}') from None
        return {"ranking": tiers}
    winner = gold.get("winner")
    if winner != "tie" and winner not in range(n):
        raise _err(where, f'"gold"."winner" must be 0..{n - 1} or "tie", got {winner!r}')
    return {"winner": winner}


def _expand_pairwise(spec: TaskSpec, where: str) -> list[TaskSpec]:
    """A pairwise task compares one method with the reference: split K responses into pairs."""
    if spec.is_gold or (len(spec.responses) == 2 and spec.reference_source is None):
        if len(spec.responses) != 2:
            raise _err(where, f"a pairwise task needs exactly 2 responses, got {len(spec.responses)}")
        return [spec]
    ref = spec.reference_source
    if ref is None:
        raise _err(where, 'pairwise tasks with more than 2 responses need a reference source ("reference" or --reference)')
    refs = [r for r in spec.responses if r[1] == ref]
    others = [r for r in spec.responses if r[1] != ref]
    if not refs:
        raise _err(where, f"no response from the reference source {ref!r} (sources: {sorted({r[1] for r in spec.responses})})")
    if not others:
        raise _err(where, f"only responses from the reference source {ref!r}: nothing to compare")
    out = []
    for i, r in enumerate(others):
        out.append(
            TaskSpec(
                kind="pairwise", prompt=spec.prompt, responses=[r, refs[i % len(refs)]], reference_source=ref,
                meta=dict(spec.meta), where=spec.where,
            )
        )
    return out


def parse_import_lines(
    lines: Iterable[str],
    name: str = "<input>",
    default_kind: str = "rating",
    reference: str | None = None,
    gold: bool = False,
) -> list[TaskSpec]:
    """Parse a tasks JSONL into task specs; raises :class:`ImportFileError` naming file:line:field.

    Accepted lines (see docs/feedback.md):

    * ``{"prompt", "responses": [str | {"text", "source", ...}], "sources"?, "kind"?, "reference"?, "gold"?, "meta"?}``
    * ``{"prompt", "response", "source", "sample"}`` (``rlhfkit generate`` output): lines with
      the same prompt (and kind) are grouped into one task;
    * ``{"prompt"}`` alone: a task whose responses the model worker samples later.
    """
    if default_kind not in TASK_KINDS:
        raise Invalid(f"kind must be one of {', '.join(TASK_KINDS)}, got {default_kind!r}")
    if reference is not None:
        _source_name(reference, "the reference source")
    specs: list[TaskSpec] = []
    grouped: dict[tuple[str, str], TaskSpec] = {}
    for lineno, line in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(where, f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise _err(where, "JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise _err(where, "each line must be a JSON object")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _err(where, '"prompt" must be a non-empty string')
        _text(prompt, where, '"prompt"')
        kind = obj.get("kind", default_kind)
        if kind not in TASK_KINDS:
            raise _err(where, f'"kind" must be one of {", ".join(TASK_KINDS)}, got {kind!r}')
        ref = obj.get("reference", reference)
        if ref is not None and "reference" in obj:
            try:
                _source_name(ref, '"reference"')
            except Invalid as e:
                raise _err(where, e.message) from None
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise _err(where, '"meta" must be an object')
        _json_text(meta, where, '"meta"')
        if "response" in obj and "responses" not in obj:
            text = obj["response"]
            if not isinstance(text, str) or not text.strip():
                raise _err(where, '"response" must be a non-empty string')
            _text(text, where, '"response"')
            source = obj.get("source", "unknown")
            if not isinstance(source, str) or not source or len(source) > 255:
                raise _err(where, '"source" must be a non-empty string of at most 255 characters')
            _text(source, where, '"source"')
            rmeta = {k: obj[k] for k in ("sample",) if k in obj}
            key = (kind, prompt)
            if key not in grouped:
                grouped[key] = TaskSpec(kind=kind, prompt=prompt, reference_source=ref, meta=meta, where=where, is_gold=gold)
                specs.append(grouped[key])
            grouped[key].responses.append((text, str(source), rmeta))
            continue
        responses = _parse_responses(obj, where)
        is_gold = bool(obj.get("gold") is not None or gold)
        spec = TaskSpec(kind=kind, prompt=prompt, responses=responses, reference_source=ref, meta=meta, where=where, is_gold=is_gold)
        if is_gold:
            if not responses:
                raise _err(where, "a gold question needs its responses")
            if obj.get("gold") is None:
                raise _err(where, 'a gold question needs "gold" (its known answer)')
            spec.gold = _check_gold(kind, obj["gold"], len(responses), where)
        specs.append(spec)
    out: list[TaskSpec] = []
    for spec in specs:
        n = len(spec.responses)
        if spec.is_gold and spec.gold is None:
            raise _err(spec.where, 'a gold question needs "gold" (its known answer)')
        if n == 0:
            out.append(spec)  # waits for the worker
        elif spec.kind == "pairwise":
            out.extend(_expand_pairwise(spec, spec.where))
        elif spec.kind == "ranking" and n < 2:
            raise _err(spec.where, f"a ranking task needs at least 2 responses, got {n}")
        else:
            out.append(spec)
    return out


def add_tasks(
    engine: sa.Engine,
    specs: Sequence[TaskSpec],
    sample_models: Sequence[str] = (),
    num_samples: int = 2,
    params: dict | None = None,
) -> list[int]:
    """Create tasks (one transaction); tasks without responses get sampling jobs when models are given."""
    ids = []
    with write_session(engine) as s, s.begin():
        for spec in specs:
            task = Task(
                kind=spec.kind, prompt=spec.prompt, status="ready" if spec.responses else "waiting",
                is_gold=spec.is_gold, gold=spec.gold, reference_source=spec.reference_source,
                meta=spec.meta or {}, created_at=utcnow(),
            )
            s.add(task)
            s.flush()
            for pos, (text, source, meta) in enumerate(spec.responses):
                s.add(Response(task_id=task.id, position=pos, text=text, source=source, meta=meta or {}))
            if not spec.responses:
                for model in sample_models:
                    s.add(Job(task_id=task.id, model=model, num_samples=num_samples, params=params or {}, status="queued", created_at=utcnow()))
            ids.append(task.id)
    return ids


def request_samples(
    engine: sa.Engine, task_ids: Sequence[int], models: Sequence[str], num_samples: int, params: dict | None = None,
    user_id: int | None = None,
) -> list[int]:
    """Queue sampling jobs for tasks that nobody holds yet; returns job ids.

    A task already assigned (pending or answered) is refused: its new responses would be
    missing from what its annotators were shown, and their answers could never be complete.
    """
    from .chat_jobs import check_model_names

    if not models:
        raise Invalid("name at least one model to sample from")
    models = check_model_names(models, max_n=None)
    if not 1 <= num_samples <= 16:
        raise Invalid(f"number of samples must be 1..16, got {num_samples}")
    job_ids = []
    with write_session(engine) as s, s.begin():
        for tid in task_ids:
            task = s.get(Task, tid)
            if task is None:
                raise NotFound(f"no task {tid}")
            if s.scalar(sa.select(sa.func.count()).select_from(Label).where(Label.task_id == tid)):
                raise Conflict(f"task {tid} already has labels: new responses would change what was judged")
            if s.scalar(sa.select(sa.func.count()).select_from(Assignment).where(Assignment.task_id == tid, Assignment.status != "skipped")):
                raise Conflict(f"task {tid} is assigned to annotators: new responses would be missing from what they were shown")
            task.status = "waiting"
            for model in models:
                job = Job(task_id=tid, model=model, num_samples=num_samples, params=params or {}, status="queued", created_by=user_id, created_at=utcnow())
                s.add(job)
                s.flush()
                job_ids.append(job.id)
    return job_ids
