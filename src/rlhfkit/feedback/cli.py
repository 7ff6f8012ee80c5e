"""``rlhfkit feedback ...``: serve the app, manage users, import tasks, export labels, run a worker.

Every command takes ``--db URL`` (default: env ``RLHFKIT_FEEDBACK_DB`` or
``sqlite:///rlhfkit-feedback.db``; a bare path means an SQLite file;
``postgresql://user:pw@host/db`` a PostgreSQL server) and migrates the database first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from .db import DEFAULT_DB_URL

feedback_app = typer.Typer(help="Collect human feedback: the annotation web app and its tools.", no_args_is_help=True)
user_app = typer.Typer(help="Manage annotators and admins.", no_args_is_help=True)
feedback_app.add_typer(user_app, name="user")

DB_HELP = "database URL: sqlite:///file.db (default) or postgresql://user:pw@host/db"
PASSWORD_HELP = "password, at least 10 characters (asked for when not given)"


def _db(db: str | None) -> str:
    return db or os.environ.get("RLHFKIT_FEEDBACK_DB") or DEFAULT_DB_URL


def _engine(db: str | None):  # noqa: ANN202
    from .db import make_engine, migrate

    engine = make_engine(_db(db))
    migrate(engine)
    return engine


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@feedback_app.command()
def serve(
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default; 0.0.0.0 for a team behind TLS)"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, help="uvicorn worker processes (PostgreSQL recommended when > 1)"),
) -> None:
    """Serve the annotation web app."""
    import uvicorn

    from .app import create_app

    app = create_app(_db(db))
    typer.echo(f"rlhfkit feedback on http://{host}:{port}  (database {_db(db)})")
    if workers > 1:
        os.environ["RLHFKIT_FEEDBACK_DB"] = _db(db)
        uvicorn.run("rlhfkit.feedback.asgi:app", host=host, port=port, workers=workers, log_level="warning")
    else:
        uvicorn.run(app, host=host, port=port, log_level="warning")


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="user name (no spaces)"),
    role: str = typer.Option("annotator", help="admin | annotator"),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True, help=PASSWORD_HELP),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Add a person who can log in."""
    from . import service as svc

    try:
        svc.create_user(_engine(db), name, role, password)
    except svc.FeedbackError as e:
        _fail(e.message)
    typer.echo(f"added {role} {name}")


@user_app.command("password")
def user_password(
    name: str = typer.Argument(...),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True, help=PASSWORD_HELP),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Set a new password; every session of the user ends (they log in again)."""
    from . import service as svc

    try:
        svc.set_password(_engine(db), name, password)
    except svc.FeedbackError as e:
        _fail(e.message)
    typer.echo(f"password of {name} changed; their sessions have ended")


@user_app.command("list")
def user_list(db: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """List users."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from .db import User

    with Session(_engine(db)) as s:
        for u in s.scalars(sa.select(User).order_by(User.username)):
            typer.echo(f"{u.username}\t{u.role}\t{'onboarded' if u.onboarded_at else 'not onboarded'}")


@feedback_app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="tasks JSONL (see docs/feedback.md)"),
    kind: str = typer.Option("rating", help="rating | ranking | pairwise (a line's own \"kind\" wins)"),
    reference: Optional[str] = typer.Option(None, help="pairwise: the source every other source is compared with"),
    gold: bool = typer.Option(False, help="the file holds gold questions (with \"gold\" answers) for onboarding"),
    sample_from: list[str] = typer.Option([], "--sample-from", help="model(s) the worker samples responses from, for prompt-only lines"),
    num_samples: int = typer.Option(2, help="samples per model for prompt-only lines"),
    max_new_tokens: int = typer.Option(64, help="sampling: max new tokens"),
    temperature: float = typer.Option(1.0, help="sampling temperature"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Import tasks from JSONL (all or nothing)."""
    from . import service as svc

    try:
        with file.open(encoding="utf-8") as f:
            specs = svc.parse_import_lines(f, name=str(file), default_kind=kind, reference=reference, gold=gold)
        ids = svc.add_tasks(_engine(db), specs, sample_from, num_samples, {"max_new_tokens": max_new_tokens, "temperature": temperature})
    except svc.FeedbackError as e:
        _fail(e.message)
    kinds: dict[str, int] = {}
    for sp in specs:
        kinds[sp.kind] = kinds.get(sp.kind, 0) + 1
    waiting = sum(1 for sp in specs if not sp.responses)
    detail = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    typer.echo(f"imported {len(ids)} tasks ({detail}) from {file}" + (f"; {waiting} wait for sampled responses" if waiting else ""))


@feedback_app.command()
def export(
    file: Path = typer.Argument(..., dir_okay=False, help="output JSONL"),
    kind: str = typer.Option("prefs", help="prefs (pairs for `rlhfkit reward`) | eval (pairwise judgments for win-rates) | labels (everything)"),
    include_gold: bool = typer.Option(False, help="prefs: include onboarding gold answers"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Export labels: preference pairs, evaluation judgments, or a full dump."""
    from .export import EXPORT_KINDS
    from .export import export as do_export

    if kind not in EXPORT_KINDS:
        _fail(f"--kind must be one of {', '.join(EXPORT_KINDS)}")
    n = do_export(_engine(db), file, kind, include_gold)
    typer.echo(f"wrote {n} {kind} records to {file}")


@feedback_app.command()
def winrate(source: str = typer.Argument(..., help="eval JSONL from `export --kind eval`, or a database URL")) -> None:
    """Print human win-rates of each method against its reference (JSON)."""
    from .winrate import human_winrates

    typer.echo(json.dumps(human_winrates(source), indent=2))


@feedback_app.command()
def settings(
    overlap: Optional[int] = typer.Option(None, help="annotators per task (k), for agreement"),
    batch_size: Optional[int] = typer.Option(None, help="tasks handed to an annotator at a time"),
    gold_threshold: Optional[float] = typer.Option(None, help="gold agreement needed to pass onboarding (0..1)"),
    seed: Optional[int] = typer.Option(None, help="seed of the per-annotator response shuffles"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Show or change settings."""
    from . import service as svc

    values = {k: v for k, v in dict(overlap=overlap, batch_size=batch_size, gold_threshold=gold_threshold, seed=seed).items() if v is not None}
    try:
        cfg = svc.set_settings(_engine(db), values)
    except svc.FeedbackError as e:
        _fail(e.message)
    typer.echo(json.dumps(cfg, indent=2))


@feedback_app.command()
def worker(
    model: list[str] = typer.Option(..., "--model", help="model(s) to serve: tiny, smollm2, or a checkpoint dir"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    once: bool = typer.Option(False, help="stop when no job is left"),
    poll: float = typer.Option(1.0, help="seconds between polls"),
    seed: int = typer.Option(0, help="sampling seed (plus the job id)"),
) -> None:
    """Run the model worker that samples responses for tasks and chats."""
    from .worker import run_worker

    try:
        n = run_worker(_db(db), model, once=once, poll_s=poll, seed=seed)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"worker done: {n} jobs")


if __name__ == "__main__":
    feedback_app()
