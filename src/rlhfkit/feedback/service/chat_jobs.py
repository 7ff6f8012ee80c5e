"""Chat tasks and sampling jobs: an annotator's own prompt, the model workers' heartbeat,
claiming queued jobs (each by exactly one worker) and storing what they sampled."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from ..db import Assignment, Job, Response, Task, User, Worker, as_utc, utcnow, write_session
from .assignment import display_order
from .common import MAX_TEXT, Invalid, TooMany, check_text, show
from .settings import get_settings


def active_models(engine: sa.Engine, within_s: float = 120.0) -> list[str]:
    """Models served by workers seen in the last ``within_s`` seconds."""
    cutoff = utcnow() - dt.timedelta(seconds=within_s)
    with Session(engine) as s:
        models: list[str] = []
        for w in s.scalars(sa.select(Worker)):
            if as_utc(w.heartbeat_at) >= cutoff:
                models += [m for m in w.models if m not in models]
        return models


MAX_MODELS_PER_REQUEST = 4
# what a model name may look like: a hub id or a checkpoint path, relative or absolute (Job.model
# holds 512 characters). A job only ever runs on a worker that announced exactly its name.
MAX_MODEL_NAME = 500
_MODEL_NAME = re.compile(rf"[A-Za-z0-9._/][A-Za-z0-9._/:@+-]{{0,{MAX_MODEL_NAME - 1}}}")


def check_model_names(
    models: Sequence[str], allowed: Sequence[str] | None = None, max_n: int | None = MAX_MODELS_PER_REQUEST
) -> list[str]:
    """Distinct, well-formed model names (in order); with ``allowed``, only those.

    Refuses (:class:`Invalid`) a malformed or unknown name and more than ``max_n`` names.
    """
    if max_n is not None and len(models) > max_n:
        raise Invalid(f"choose at most {max_n} models at a time, got {len(models)} model fields")
    out: list[str] = []
    for m in models:
        if not isinstance(m, str) or not _MODEL_NAME.fullmatch(m):
            raise Invalid(f"model name {show(m)} is not a model name (letters, digits and ._/:@+-, at most {MAX_MODEL_NAME})")
        if allowed is not None and m not in allowed:
            raise Invalid(f"model {show(m)} is not served here; choose one of: {', '.join(allowed) or '(no worker has registered a model yet)'}")
        if m not in out:
            out.append(m)
    return out


def served_models(engine: sa.Engine) -> list[str]:
    """Every model a registered worker has announced (seen recently or not): what a chat may ask for."""
    with Session(engine) as s:
        models: list[str] = []
        for w in s.scalars(sa.select(Worker).order_by(Worker.name)):
            models += [m for m in w.models if m not in models]
        return models


def create_chat_task(
    engine: sa.Engine, user: User, prompt: str, models: Sequence[str], num_samples: int, params: dict | None = None
) -> int:
    """An annotator's own prompt: sampled by the worker, then ranked by that annotator.

    Only models a worker has announced, at most :data:`MAX_MODELS_PER_REQUEST` per prompt, and
    at most the ``max_pending_jobs`` setting of the user's jobs waiting or running (429 beyond).
    """
    prompt = check_text(prompt, "the prompt").strip()
    if not prompt:
        raise Invalid("write a prompt first")
    if len(prompt) > MAX_TEXT:
        raise Invalid(f"the prompt is longer than {MAX_TEXT} characters")
    if not models:
        raise Invalid("choose at least one model")
    models = check_model_names(models, served_models(engine))
    if not 1 <= num_samples <= 8:
        raise Invalid(f"number of replies per model must be 1..8, got {num_samples}")
    if num_samples * len(models) < 2:
        raise Invalid("ask for at least 2 replies in all, to rank them")
    with write_session(engine) as s, s.begin():
        # the user's row locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
        # writers): two requests at once cannot both pass the limit
        s.execute(sa.select(User.id).where(User.id == user.id).with_for_update())
        limit = int(get_settings(s)["max_pending_jobs"])
        pending = s.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.created_by == user.id, Job.status.in_(["queued", "running"]))
        )
        if pending + len(models) > limit:
            raise TooMany(f"you have {pending} model jobs pending (at most {limit}): rank the replies you have, then ask again")
        task = Task(kind="ranking", prompt=prompt, status="waiting", is_gold=False, created_by=user.id, meta={"chat": True}, created_at=utcnow())
        s.add(task)
        s.flush()
        for m in models:
            s.add(Job(task_id=task.id, model=m, num_samples=num_samples, params=params or {}, status="queued", created_by=user.id, created_at=utcnow()))
        s.add(Assignment(task_id=task.id, user_id=user.id, slot=0, attempt=0, status="pending", display_order=[], assigned_at=utcnow()))
        return task.id


def ensure_display_order(engine: sa.Engine, assignment_id: int) -> None:
    """Chat tasks get their responses after being assigned: shuffle them at first view. A
    response added after the shuffle (by an older version's re-sampling) is shuffled in after
    the ones already shown, so that the annotator sees every response they must judge."""
    with write_session(engine) as s, s.begin():
        a = s.get(Assignment, assignment_id)
        task = s.get(Task, a.task_id, options=[selectinload(Task.responses)])
        if not a.display_order:
            a.display_order = display_order(get_settings(s)["seed"], task, a.user_id, a.attempt)
            return
        ids = [r.id for r in task.responses]
        shown = [rid for rid in a.display_order if rid in ids]
        new = [rid for rid in ids if rid not in shown]
        if new or len(shown) != len(a.display_order):
            random.Random(f"{get_settings(s)['seed']}:{a.id}:late").shuffle(new)
            a.display_order = shown + new


def heartbeat(engine: sa.Engine, name: str, models: Sequence[str]) -> None:
    # announced names are shown on the chat and admin pages and offered to annotators
    models = check_model_names(models, max_n=None)
    with write_session(engine) as s, s.begin():
        w = s.get(Worker, name)
        if w is None:
            s.add(Worker(name=name, models=list(models), heartbeat_at=utcnow()))
        else:
            w.models, w.heartbeat_at = list(models), utcnow()


def claim_jobs(engine: sa.Engine, models: Sequence[str], worker: str, limit: int = 16) -> list[dict]:
    """Take up to ``limit`` queued jobs for ``models``.

    A job is claimed by exactly one worker: the conditional UPDATE succeeds for only one
    of several racing workers. Returns plain dicts ``{"id", "task_id", "model",
    "num_samples", "params", "prompt"}``.
    """
    claimed: list[int] = []
    with write_session(engine) as s, s.begin():
        ids = s.scalars(
            sa.select(Job.id).where(Job.status == "queued", Job.model.in_(list(models))).order_by(Job.id).limit(limit)
        ).all()
        for jid in ids:
            res = s.execute(
                sa.update(Job).where(Job.id == jid, Job.status == "queued").values(status="running", worker=worker, started_at=utcnow())
            )
            if res.rowcount == 1:
                claimed.append(jid)
    with Session(engine) as s:
        rows = s.execute(
            sa.select(Job, Task.prompt).join(Task, Task.id == Job.task_id).where(Job.id.in_(claimed)).order_by(Job.id)
        ).all()
        return [
            {"id": j.id, "task_id": j.task_id, "model": j.model, "num_samples": j.num_samples, "params": j.params or {}, "prompt": p}
            for j, p in rows
        ]


def finish_job(engine: sa.Engine, job_id: int, texts: Sequence[str] | None, error: str | None = None) -> None:
    """Store a job's sampled responses (or its error) and mark the task ready when its jobs are done."""
    with write_session(engine) as s, s.begin():
        job = s.get(Job, job_id)
        if job is None or job.status != "running":
            return
        job.finished_at = utcnow()
        if error is not None:
            job.status, job.error = "failed", error[-4000:]
        else:
            pos = s.scalar(sa.select(sa.func.coalesce(sa.func.max(Response.position), -1)).where(Response.task_id == job.task_id))
            for i, text in enumerate(texts or []):
                s.add(Response(task_id=job.task_id, position=pos + 1 + i, text=text if text.strip() else "(empty response)", source=job.model, meta={"sample": i, "job": job.id}))
            job.status = "done"
        s.flush()
        pending = s.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.task_id == job.task_id, Job.status.in_(["queued", "running"]))
        )
        if not pending:
            task = s.get(Task, job.task_id)
            n = s.scalar(sa.select(sa.func.count()).select_from(Response).where(Response.task_id == task.id))
            need = 1 if task.kind == "rating" else 2
            if n >= need:
                task.status = "ready"
