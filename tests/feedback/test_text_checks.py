"""Every text that reaches a page, an export or the terminal is checked on the way in, as notes
are (issue 13 section 3, item 4 carried over): user names (CLI and admin form), the reference
source of imported tasks, the strings inside imported ``meta``, and the model names a worker
announces. A bad one is refused (422, or a clear CLI error), so it can never break a page,
an export or ``user list`` later.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.cli import feedback_app
from rlhfkit.feedback.db import Task, User, Worker
from rlhfkit.feedback.worker import run_worker

from .conftest import FAST_HASHER, PASSWORD, RATING_TASK, Client, add_user, import_tasks

LONE = "\ud83d"  # a lone UTF-16 surrogate: UTF-8 cannot encode it (JSON "\ud83d")
BAD_NAMES = [f"bad{LONE}", "nul\x00x", "esc\x1b[31mred", "bell\x07", "tab\tx", "nbsp\u00a0x", "rtl\u202egnp.exe"]


def _usernames(engine) -> list[str]:
    with Session(engine) as s:
        return list(s.scalars(sa.select(User.username)))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_user_names_are_refused_by_the_service(sqlite_url, name):
    from rlhfkit.feedback.db import make_engine, migrate

    engine = make_engine(sqlite_url)
    migrate(engine)
    try:
        with pytest.raises(svc.Invalid, match="user name"):
            svc.create_user(engine, name, "annotator", PASSWORD, hasher=FAST_HASHER)
        assert _usernames(engine) == []
        # names people really have still work: letters of any script, dots, dashes, @
        for ok in ("josé", "李雷", "a.b-c_d@lab"):
            svc.create_user(engine, ok, "annotator", PASSWORD, hasher=FAST_HASHER)
    finally:
        engine.dispose()


def test_bad_user_name_from_the_admin_form_is_422_and_pages_still_work(app, engine):
    add_user(engine, "root", "admin")
    root = Client(app, "root")
    for name in ("nul\x00x", "esc\x1b[31m", "ctl\x7fx"):
        r = root.post("/admin/users", {"username": name, "role": "annotator", "password": PASSWORD})
        assert r.status_code == 422 and "user name" in r.text, (name, r.status_code)
    assert _usernames(engine) == ["root"]
    assert root.get("/admin/users").status_code == 200
    # a login under such a name is just a wrong login (never a 500, also on PostgreSQL)
    anon = Client(app)
    r = anon.post("/login", {"username": "nul\x00x", "password": PASSWORD}, headers={"accept": "application/json"})
    assert r.status_code == 401


def test_cli_user_add_with_a_non_utf8_name_is_a_clear_error(tmp_path):
    # argv bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    r = CliRunner().invoke(feedback_app, ["user", "add", "caf\udce9", "--password", PASSWORD, "--db", db])
    assert r.exit_code == 1, r.output
    assert "error: user name" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(feedback_app, ["user", "list", "--db", db])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(feedback_app, ["user", "password", "caf\udce9", "--password", PASSWORD, "--db", db])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("field,value", [
    ("reference", LONE), ("reference", "a\x00b"), ("reference", {"a": 1}), ("reference", "x" * 300),
    ("meta", {"note": LONE}), ("meta", {"a\x00": 1}), ("meta", {"deep": [{"x": "\x00"}]}),
])
def test_imported_reference_and_meta_are_checked(app, engine, field, value):
    """What the admin upload gave before: 500 (UnicodeEncodeError, a dict bound to a text
    column) or a stored value that PostgreSQL refuses or a page cannot show."""
    add_user(engine, "root", "admin")
    root = Client(app, "root")
    line = json.dumps({**RATING_TASK, field: value})
    r = root.http.post(
        "/admin/import", data={"kind": "rating", "csrf_token": root.csrf}, files={"file": ("t.jsonl", line.encode())},
        headers={"accept": "application/json"},
    )
    assert r.status_code == 422, (r.status_code, r.text[:200])
    assert f"t.jsonl:1: \"{field}\"" in r.json()["detail"]
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Task)) == 0
    # good ones are kept as they were
    import_tasks(engine, [{**RATING_TASK, "reference": "sft", "meta": {"topic": "café", "n": [1, {"k": "v"}]}}])
    with Session(engine) as s:
        t = s.scalars(sa.select(Task)).one()
        assert t.reference_source == "sft" and t.meta == {"topic": "café", "n": [1, {"k": "v"}]}


def test_import_reference_option_is_checked(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(RATING_TASK) + "\n")
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    r = CliRunner().invoke(feedback_app, ["import", str(f), "--reference", "s\udcff", "--db", db])
    assert r.exit_code == 1 and "reference" in r.output and "Traceback" not in r.output, r.output


def test_worker_model_names_are_checked_and_chat_page_survives(app, engine, db_url):
    add_user(engine, "ann")
    with pytest.raises(ValueError, match="--model"):
        run_worker(db_url, ["ckpt\udcff"], generate=lambda *a: [], once=True)
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    # an absolute checkpoint path is a model name like any other
    run_worker(db_url, ["/runs/a/sft"], generate=lambda *a: [], once=True)
    ann = Client(app, "ann")
    r = ann.get("/chat")
    assert r.status_code == 200 and 'value="/runs/a/sft"' in r.text
    r = ann.post("/chat", {"prompt": "hi", "model": "/runs/a/sft", "num_samples": "2"})
    assert r.status_code == 303, r.text[-800:]


def test_import_line_nested_too_deeply_is_422(app, engine):
    add_user(engine, "root", "admin")
    root = Client(app, "root")
    line = '{"prompt": "p", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = root.http.post(
        "/admin/import", data={"kind": "rating", "csrf_token": root.csrf}, files={"file": ("deep.jsonl", line.encode())},
        headers={"accept": "application/json"},
    )
    assert r.status_code == 422 and "deep.jsonl:1: JSON nested too deeply" in r.json()["detail"], r.text[:200]
