"""Database layer of the feedback app: schema (SQLAlchemy models), engines, migrations.

The same schema runs on SQLite (a single file, the default) and PostgreSQL (a team).
The tables, in the order a label is made:

``users``        one row per person; ``role`` is ``admin`` or ``annotator``; argon2 hash.
``tasks``        a prompt to judge; ``kind`` is ``rating`` | ``ranking`` | ``pairwise``;
                 ``status`` is ``waiting`` (responses still being sampled) or ``ready``;
                 ``is_gold`` marks onboarding questions whose known answer is ``gold``.
``responses``    the K texts of a task, each with the ``source`` it came from (a model,
                 a baseline, a reference ...) and its ``position`` in the task.
``assignments``  task x annotator; ``slot`` in ``0..overlap-1`` is unique per task, so the
                 overlap (k annotators per task) holds even under concurrent requests;
                 ``display_order`` is the per-annotator shuffled order of response ids
                 (blind, randomised); ``attempt`` counts onboarding retries.
``labels``       the judgment, exactly one per assignment (unique ``assignment_id``: a
                 repeated submission can never become a second label).
``jobs``         requests to the model worker: sample ``num_samples`` responses of
                 ``model`` for a task.
``workers``      heartbeats of model workers and the models they serve.
``settings``     key -> JSON value (overlap, batch size, gold threshold, seed).
``login_throttle`` failed logins per account and per client address (brute-force lockout).

The key that signs session cookies is not in the database: see ``secretkey.py``.

Nothing here imports torch.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

DEFAULT_DB_URL = "sqlite:///rlhfkit-feedback.db"
ROLES = ("admin", "annotator")
TASK_KINDS = ("rating", "ranking", "pairwise")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC (SQLite gives it back naive: see :func:`as_utc`)."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite drops the tzinfo we wrote; every stored time is UTC, so put it back."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    onboarded_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)
    # Copied into the session cookie at login; logout and a password change add 1, which
    # ends every session of the user (a signed cookie cannot be recalled otherwise).
    session_version: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    __table_args__ = (sa.CheckConstraint("role IN ('admin', 'annotator')", name="ck_users_role"),)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    prompt: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="ready")
    is_gold: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    gold: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    reference_source: Mapped[str | None] = mapped_column(sa.String(255))
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    meta: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)
    responses: Mapped[list[Response]] = relationship(order_by="Response.position", back_populates="task")
    __table_args__ = (
        sa.CheckConstraint("kind IN ('rating', 'ranking', 'pairwise')", name="ck_tasks_kind"),
        sa.CheckConstraint("status IN ('waiting', 'ready')", name="ck_tasks_status"),
        sa.Index("ix_tasks_status_gold", "status", "is_gold"),
    )


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), nullable=False)
    position: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    text: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.String(255), nullable=False, default="unknown")
    meta: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    task: Mapped[Task] = relationship(back_populates="responses")
    __table_args__ = (sa.UniqueConstraint("task_id", "position", name="uq_responses_task_position"),)


class Assignment(Base):
    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), nullable=False)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), nullable=False)
    # 0..overlap-1 while the assignment counts toward the task's overlap; NULL once
    # skipped (NULLs never collide in a unique index, on SQLite and PostgreSQL alike).
    slot: Mapped[int | None] = mapped_column(sa.Integer)
    attempt: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    display_order: Mapped[Any] = mapped_column(sa.JSON, nullable=False)
    assigned_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()
    label: Mapped[Label | None] = relationship(back_populates="assignment", uselist=False)
    __table_args__ = (
        sa.UniqueConstraint("task_id", "user_id", "attempt", name="uq_assignments_task_user_attempt"),
        sa.UniqueConstraint("task_id", "slot", name="uq_assignments_task_slot"),
        sa.CheckConstraint("status IN ('pending', 'done', 'skipped')", name="ck_assignments_status"),
        sa.Index("ix_assignments_user_status", "user_id", "status"),
    )


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(sa.ForeignKey("assignments.id"), nullable=False, unique=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    payload: Mapped[Any] = mapped_column(sa.JSON, nullable=False)
    duration_ms: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)
    assignment: Mapped[Assignment] = relationship(back_populates="label")


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), nullable=False, index=True)
    model: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    num_samples: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    params: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="queued")
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    __table_args__ = (
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="ck_jobs_status"),
        sa.Index("ix_jobs_status_model", "status", "model"),
    )


class Worker(Base):
    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    models: Mapped[Any] = mapped_column(sa.JSON, nullable=False)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, default=utcnow)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


class LoginThrottle(Base):
    """Failed logins of one account (``user:<name>``) or one client address (``addr:<ip>``);
    see ``service/throttle.py``. In the database so that every server process sees them."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    locked_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


# --------------------------------------------------------------------------- engines


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and a bare file path for SQLite.

    SQLAlchemy maps ``postgresql://`` to psycopg2, which is not installed: psycopg (3) is.
    """
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_sqlite(url_or_engine: str | sa.Engine) -> bool:
    name = url_or_engine.dialect.name if isinstance(url_or_engine, sa.Engine) else sa.make_url(normalize_url(url_or_engine)).get_backend_name()
    return name == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for an in-memory database."""
    db = sa.make_url(normalize_url(url)).database
    return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None


def private_sqlite_files(url: str) -> None:
    """Create the SQLite file owner-only (0600) before SQLite opens it; tighten an existing one.

    SQLite gives the -wal and -shm files the mode of the database file, so they follow.
    The database holds password hashes and every label: nobody else on the machine reads it.
    """
    path = sqlite_path(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # mode applies only when it creates the file
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if p.stat().st_mode & 0o077:
                log.warning("%s was readable by others: made it owner-only (0600)", p)
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass
        except PermissionError:  # not ours: say so, do not fail
            log.warning("%s is readable by others and not ours to chmod: run chmod 600 on it", p)


def make_engine(url: str, busy_timeout_s: float = 60.0) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and explicit transactions.

    ``busy_timeout_s``: how long an SQLite statement waits for another writer's lock before
    "database is locked" (the web app uses a few seconds and answers 503: ``limits.py``;
    the CLI and the worker can afford to wait).

    With SQLite, pysqlite's own transaction handling is switched off so that a write
    session can open with ``BEGIN IMMEDIATE`` (see :func:`write_session`): a write
    transaction then takes the write lock at its start instead of failing with
    "database is locked" when a read turns into a write under concurrency.
    """
    url = normalize_url(url)
    if is_sqlite(url):
        private_sqlite_files(url)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a committed label survives a power cut too (WAL + NORMAL could lose it).
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=40)


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def write_session(engine: sa.Engine) -> Session:
    """A session whose transaction takes the write lock up front on SQLite."""
    if is_sqlite(engine):
        return Session(engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False)
    return Session(engine, expire_on_commit=False)


def alembic_config(connection: sa.Connection | None = None):  # noqa: ANN201
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(url_or_engine: str | sa.Engine) -> None:
    """Bring the database to the newest schema (``alembic upgrade head``); a no-op if current.

    On PostgreSQL an advisory lock keeps two processes (server and worker) from migrating
    the same database at once.
    """
    from alembic import command

    engine = url_or_engine if isinstance(url_or_engine, sa.Engine) else make_engine(url_or_engine)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_lock(7261001)")
            conn.commit()
        try:
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_unlock(7261001)")
                conn.commit()
    if engine is not url_or_engine:
        engine.dispose()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
