"""Fixtures of the feedback tests: databases (SQLite, PostgreSQL), clients, users, tasks.

PostgreSQL tests use ``RLHFKIT_TEST_PG_URL`` (``scripts/ci_feedback_setup.sh`` starts a
server); each test gets its own schema, dropped afterwards. Without the variable they are
skipped, unless ``RLHFKIT_REQUIRE_PG=1`` (CI), which makes them fail instead.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from argon2 import PasswordHasher

# Cheap argon2 parameters for test users (the defaults cost ~50 ms per hash, x hundreds).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "secret-password"  # passwords have at least 10 characters


def pg_url_or_skip() -> str:
    url = os.environ.get("RLHFKIT_TEST_PG_URL")
    if not url:
        if os.environ.get("RLHFKIT_REQUIRE_PG") == "1":
            pytest.fail("RLHFKIT_REQUIRE_PG=1 but RLHFKIT_TEST_PG_URL is not set (run scripts/ci_feedback_setup.sh)")
        pytest.skip("PostgreSQL tests need RLHFKIT_TEST_PG_URL (scripts/ci_feedback_setup.sh)")
    return url


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path: Path):
    """A fresh, empty database URL: an SQLite file, or a private schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    yield from _pg_schema()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def app(db_url):
    from rlhfkit.feedback.app import create_app

    a = create_app(db_url)
    yield a
    a.state.engine.dispose()


@pytest.fixture
def engine(app):
    return app.state.engine


def add_user(engine, name: str, role: str = "annotator", onboarded: bool = True):
    from rlhfkit.feedback import service as svc
    from rlhfkit.feedback.db import User, utcnow, write_session

    u = svc.create_user(engine, name, role, PASSWORD, hasher=FAST_HASHER)
    if onboarded and role == "annotator":
        with write_session(engine) as s, s.begin():
            s.get(User, u.id).onboarded_at = utcnow()
    return u


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in page"
    return m.group(1)


class Client:
    """A logged-in (or anonymous) test client that remembers its CSRF token."""

    def __init__(self, app, name: str | None = None, password: str = PASSWORD):
        from fastapi.testclient import TestClient

        self.http = TestClient(app, follow_redirects=False)
        self.csrf = csrf_from(self.http.get("/login").text)
        if name is not None:
            r = self.http.post("/login", data={"username": name, "password": password, "csrf_token": self.csrf}, headers={"accept": "application/json"})
            assert r.status_code == 200, r.text
            self.csrf = r.json()["csrf_token"]

    def get(self, url: str, **kw):
        return self.http.get(url, **kw)

    def post(self, url: str, data: dict | None = None, csrf: bool = True, **kw):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.csrf)
        return self.http.post(url, data=data, **kw)

    def post_json(self, url: str, body, csrf: bool = True, **kw):
        headers = {"content-type": "application/json", "accept": "application/json", **kw.pop("headers", {})}
        if csrf:
            headers["x-csrf-token"] = self.csrf
        return self.http.post(url, content=json.dumps(body), headers=headers, **kw)


def import_tasks(engine, lines: list[dict], **kw) -> list[int]:
    from rlhfkit.feedback import service as svc

    specs = svc.parse_import_lines([json.dumps(x) for x in lines], **kw)
    return svc.add_tasks(engine, specs)


RATING_TASK = {"prompt": "Summarize: the cat sat.", "kind": "rating", "responses": [{"text": "A cat sat.", "source": "policy_v3"}, {"text": "Dogs run.", "source": "initial_sft"}]}
RANKING_TASK = {"prompt": "Name a fruit.", "kind": "ranking", "responses": [
    {"text": "Apple", "source": "policy"}, {"text": "Banana", "source": "init"}, {"text": "Car", "source": "baseline"}]}
PAIRWISE_TASK = {"prompt": "Say hello.", "kind": "pairwise", "reference": "sft", "responses": [
    {"text": "Hello!", "source": "ppo"}, {"text": "hi", "source": "sft"}]}


def _pg_schema():
    """Yield the URL of a fresh private schema on the test PostgreSQL server; drop it afterwards."""
    base = pg_url_or_skip()
    import sqlalchemy as sa

    from rlhfkit.feedback.db import normalize_url

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _with_schema(base, schema)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def db_url_pg():
    """A fresh schema on the test PostgreSQL server (skips without one, fails under RLHFKIT_REQUIRE_PG=1)."""
    yield from _pg_schema()
