"""Chat tasks and sampling jobs: an annotator's own prompt, the model workers' heartbeat,
claiming queued jobs (each by exactly one worker) and storing what they sampled."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from ..db import Assignment, Job, Response, Task, User, Worker, as_utc, utcnow, write_session
from .assignment import display_order
from .common import MAX_TEXT, Invalid
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


def create_chat_task(
    engine: sa.Engine, user: User, prompt: str, models: Sequence[str], num_samples: int, params: dict | None = None
) -> int:
    """An annotator's own prompt: sampled by the worker, then ranked by that annotator."""
    prompt = prompt.strip()
    if not prompt:
        raise Invalid("write a prompt first")
    if len(prompt) > MAX_TEXT:
        raise Invalid(f"the prompt is longer than {MAX_TEXT} characters")
    if not models:
        raise Invalid("choose at least one model")
    if not 1 <= num_samples <= 8:
        raise Invalid(f"number of replies per model must be 1..8, got {num_samples}")
    if num_samples * len(models) < 2:
        raise Invalid("ask for at least 2 replies in all, to rank them")
    with write_session(engine) as s, s.begin():
        task = Task(kind="ranking", prompt=prompt, status="waiting", is_gold=False, created_by=user.id, meta={"chat": True}, created_at=utcnow())
        s.add(task)
        s.flush()
        for m in models:
            s.add(Job(task_id=task.id, model=m, num_samples=num_samples, params=params or {}, status="queued", created_by=user.id, created_at=utcnow()))
        s.add(Assignment(task_id=task.id, user_id=user.id, slot=0, attempt=0, status="pending", display_order=[], assigned_at=utcnow()))
        return task.id


def ensure_display_order(engine: sa.Engine, assignment_id: int) -> None:
    """Chat tasks get their responses after being assigned: shuffle them at first view."""
    with write_session(engine) as s, s.begin():
        a = s.get(Assignment, assignment_id)
        if not a.display_order:
            task = s.get(Task, a.task_id, options=[selectinload(Task.responses)])
            a.display_order = display_order(get_settings(s)["seed"], task, a.user_id, a.attempt)


def heartbeat(engine: sa.Engine, name: str, models: Sequence[str]) -> None:
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
