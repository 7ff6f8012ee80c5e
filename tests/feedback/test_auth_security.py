"""Sessions, logins, headers and keys of the feedback app (issue 13, weaknesses 1, 2, 5, 11).

Each test here failed on the app before these protections: a cookie outlived logout and a
password change, 50 wrong passwords in a row met no resistance, the cookie never got
``Secure``, no response carried security headers, ``/docs`` loaded Swagger from a CDN, and
the cookie-signing key sat in a world-readable database file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.app import SESSION_COOKIE, create_app
from rlhfkit.feedback.cli import feedback_app
from rlhfkit.feedback.db import Setting, make_engine, migrate

from .conftest import FAST_HASHER, PASSWORD, Client, add_user

NEW_PASSWORD = "another-long-password"


def LoginPolicy(**kw):  # noqa: N802 - imported late, so that the other tests run on an app without it
    from rlhfkit.feedback.service.throttle import LoginPolicy as P

    return P(**kw)


def _login(app, name: str, password: str = PASSWORD, client: tuple[str, int] = ("testclient", 50000), **kw):
    c = TestClient(app, follow_redirects=False, client=client, **kw)
    tok = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": name, "password": password, "csrf_token": tok}, headers={"accept": "application/json"})
    return c, r


# --------------------------------------------------------------------------- 1. revocable sessions


def test_logout_ends_every_session_of_the_user(app, engine):
    add_user(engine, "ann")
    add_user(engine, "bob")
    laptop, phone, bob = Client(app, "ann"), Client(app, "ann"), Client(app, "bob")
    stolen = dict(laptop.http.cookies)  # a copy of the cookie, as an attacker would keep it
    assert laptop.get("/tasks").status_code == phone.get("/tasks").status_code == 200
    assert laptop.post("/logout").status_code == 303
    assert phone.get("/tasks").status_code == 303  # the other session of ann ended too
    assert phone.get("/api/next", headers={"accept": "application/json"}).status_code == 401
    replay = TestClient(app, follow_redirects=False, cookies=stolen)
    assert replay.get("/tasks").status_code == 303  # the old cookie no longer works
    assert bob.get("/tasks").status_code == 200  # other users keep theirs
    again = Client(app, "ann")  # and ann can log in again
    assert again.get("/tasks").status_code == 200


def test_password_change_ends_every_session(app, engine, tmp_path):
    add_user(engine, "ann")
    c = Client(app, "ann")
    assert c.get("/tasks").status_code == 200
    svc.set_password(engine, "ann", NEW_PASSWORD, hasher=FAST_HASHER)
    assert c.get("/tasks").status_code == 303
    c2 = Client(app, "ann", password=NEW_PASSWORD)
    assert c2.get("/tasks").status_code == 200
    # the CLI goes through the same function
    url = engine.url.render_as_string(hide_password=False)
    r = CliRunner().invoke(feedback_app, ["user", "password", "ann", "--password", PASSWORD, "--db", url])
    assert r.exit_code == 0, r.output
    assert c2.get("/tasks").status_code == 303


# --------------------------------------------------------------------------- 2. brute force, password length


def test_failed_logins_lock_the_account_with_429_and_retry_after(app, engine):
    add_user(engine, "ann")
    free = LoginPolicy().account_failures
    for i in range(free):
        _, r = _login(app, "ann", f"wrong-{i}", client=(f"10.0.0.{i}", 1))  # a botnet: one address per guess
        assert r.status_code == 401, (i, r.text)
    _, r = _login(app, "ann", PASSWORD, client=("10.9.9.9", 1))  # even the right password waits now
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0
    assert "too many failed logins" in r.json()["detail"].lower()
    # the login page says so too
    c = Client(app)
    r = c.post("/login", {"username": "ann", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Too many failed logins" in r.text
    # another account is not affected
    add_user(engine, "bob")
    assert _login(app, "bob")[1].status_code == 200


def test_a_successful_login_resets_the_account_count(app, engine):
    add_user(engine, "ann")
    free = LoginPolicy().account_failures
    for _ in range(2):
        for i in range(free - 1):
            assert _login(app, "ann", f"wrong-{i}")[1].status_code == 401
        assert _login(app, "ann")[1].status_code == 200


def test_failed_logins_lock_the_address(db_url):
    policy = LoginPolicy(address_failures=4)
    app = create_app(db_url, login_policy=policy)
    try:
        add_user(app.state.engine, "ann")
        for i in range(policy.address_failures):  # one guess per made-up name, all from one address
            assert _login(app, f"nobody{i}", "guess", client=("10.1.1.1", 1))[1].status_code == 401
        _, r = _login(app, "ann", client=("10.1.1.1", 1))
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert _login(app, "ann", client=("10.2.2.2", 1))[1].status_code == 200  # another address is not
    finally:
        app.state.engine.dispose()


def test_successful_logins_do_not_use_up_the_address(db_url):
    # a team behind one NAT: 10 good logins from one address never lock it
    app = create_app(db_url, login_policy=LoginPolicy(address_failures=3))
    try:
        add_user(app.state.engine, "ann")
        for _ in range(10):
            assert _login(app, "ann", client=("10.1.1.1", 1))[1].status_code == 200
    finally:
        app.state.engine.dispose()


def test_lock_backs_off_and_expires(sqlite_url):
    """The service with an explicit clock: lock lengths double up to the cap, and end."""
    from rlhfkit.feedback.service import throttle

    engine = make_engine(sqlite_url)
    migrate(engine)
    pol = LoginPolicy(account_failures=2, address_failures=100, base_lock_s=30, max_lock_s=100, forget_after_s=3600)
    keys = throttle.login_keys("ann", "1.2.3.4")

    def fail(now):  # a wrong password; the seconds to wait instead when locked
        wait = throttle.begin_attempt(engine, keys, pol, now)
        if wait is None:
            throttle.end_attempt(engine, keys, pol, ok=False, now=now)
        return wait

    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert [fail(now) for _ in range(3)] == [None, None, 30]  # the 2nd failure locks
    waits = []
    for _ in range(3):
        now += dt.timedelta(seconds=waits[-1] + 1 if waits else 31)  # wait the lock out
        assert fail(now) is None
        waits.append(fail(now))
    assert waits == [60, 100, 100]  # doubles, up to the cap
    # the right password during a lock is refused too; after it, it works and clears the count
    assert throttle.begin_attempt(engine, keys, pol, now) == 100
    now += dt.timedelta(seconds=101)
    assert throttle.begin_attempt(engine, keys, pol, now) is None
    throttle.end_attempt(engine, keys, pol, ok=True, now=now)
    assert [fail(now) for _ in range(3)] == [None, None, 30]
    # a long quiet spell forgets the failures
    now += dt.timedelta(seconds=pol.forget_after_s + 1)
    assert [fail(now) for _ in range(3)] == [None, None, 30]
    engine.dispose()


def test_a_burst_of_concurrent_guesses_gets_no_more_than_the_limit(db_url):
    """20 guesses at one account at the same moment: only the first 5 reach the password check."""
    from concurrent.futures import ThreadPoolExecutor

    from rlhfkit.feedback.service import throttle

    engine = make_engine(db_url)
    migrate(engine)
    pol = LoginPolicy(account_failures=5)
    keys = throttle.login_keys("ann", None)
    try:
        with ThreadPoolExecutor(20) as ex:
            waits = list(ex.map(lambda _: throttle.begin_attempt(engine, keys, pol), range(20)))
        assert waits.count(None) == 5 and all(w and w > 0 for w in waits if w is not None)
    finally:
        engine.dispose()


def test_minimum_password_length(app, engine, tmp_path):
    with pytest.raises(svc.Invalid, match="at least 10 characters"):
        svc.create_user(engine, "ann", "annotator", "123456789")
    add_user(engine, "ann")
    with pytest.raises(svc.Invalid, match="at least 10 characters"):
        svc.set_password(engine, "ann", "short")
    add_user(engine, "root", "admin")
    c = Client(app, "root")
    r = c.post("/admin/users", {"username": "newbie", "role": "annotator", "password": "pw1234"})
    assert r.status_code == 422 and "at least 10 characters" in r.text
    assert 'minlength="10"' in c.get("/admin/users").text
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    r = CliRunner().invoke(feedback_app, ["user", "add", "x", "--password", "pw1234", "--db", db])
    assert r.exit_code == 1 and "at least 10 characters" in r.output
    r = CliRunner().invoke(feedback_app, ["user", "add", "--help"])
    assert "at least 10" in r.output


# --------------------------------------------------------------------------- 5. cookie flags, headers, docs


def _cookie_flags(r) -> str:
    cookies = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE)]
    assert cookies, r.headers
    return cookies[-1].lower()


@pytest.mark.parametrize("env,https,secure", [(None, False, False), (None, True, True), ("1", False, True), ("0", True, False)])
def test_session_cookie_secure_flag(sqlite_url, monkeypatch, env, https, secure):
    if env is None:
        monkeypatch.delenv("RLHFKIT_HTTPS_ONLY", raising=False)
    else:
        monkeypatch.setenv("RLHFKIT_HTTPS_ONLY", env)
    app = create_app(sqlite_url)
    try:
        c = TestClient(app, base_url="https://testserver" if https else "http://testserver", follow_redirects=False)
        r = c.get("/login")
        flags = _cookie_flags(r)
        assert ("; secure" in flags) == secure, flags
        assert "httponly" in flags and "samesite=lax" in flags
    finally:
        app.state.engine.dispose()


def test_bad_https_only_value_is_refused(sqlite_url, monkeypatch):
    monkeypatch.setenv("RLHFKIT_HTTPS_ONLY", "maybe")
    with pytest.raises(ValueError, match="RLHFKIT_HTTPS_ONLY"):
        create_app(sqlite_url)


def test_security_headers_on_every_response(app, engine):
    add_user(engine, "root", "admin")
    anon, root = Client(app), Client(app, "root")
    responses = [
        anon.get("/login"), anon.get("/static/app.css"), anon.get("/tasks"), anon.get("/api/next"),
        anon.get("/no/such/page"), anon.post("/login", {"username": "x", "password": "y"}, csrf=False),
        root.get("/admin"), root.get("/openapi.json"), root.get("/docs"),
    ]
    for r in responses:
        h = r.headers
        where = (r.request.method, r.request.url.path, r.status_code)
        assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), where
        assert "script-src 'self'" in h["content-security-policy"], where
        assert h.get("x-frame-options") == "DENY", where
        assert h.get("x-content-type-options") == "nosniff", where
        assert h.get("referrer-policy") == "same-origin", where


def _assert_security_headers(r) -> None:
    h, where = r.headers, (r.request.method, r.request.url.path, r.status_code)
    assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), where
    assert h.get("x-frame-options") == "DENY", where
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("referrer-policy") == "same-origin", where


def test_security_headers_on_500_413_and_503(sqlite_url, monkeypatch):
    """Before: an unhandled exception's 500 comes from Starlette's ServerErrorMiddleware, outside
    every middleware added with add_middleware, and had none of the headers."""
    monkeypatch.setenv("RLHFKIT_FEEDBACK_MAX_BODY", "1000")
    app = create_app(sqlite_url)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/busy")
    def busy() -> None:
        raise sa.exc.OperationalError("UPDATE ...", {}, Exception("database is locked"))

    try:
        c = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
        r = c.get("/boom")
        assert r.status_code == 500
        _assert_security_headers(r)
        r = c.get("/busy")
        assert r.status_code == 503 and r.headers["retry-after"]
        _assert_security_headers(r)
        r = c.post("/login", content=b"x" * 5000, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        _assert_security_headers(r)
        # the cookie still gets its flags from the outermost layer
        r = TestClient(app, base_url="https://testserver").get("/login")
        assert "; secure" in _cookie_flags(r)
    finally:
        app.state.engine.dispose()


def test_docs_load_nothing_from_elsewhere(app, engine):
    add_user(engine, "root", "admin")
    r = Client(app, "root").get("/docs")
    assert r.status_code == 200
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text), "docs must not load from another host"
    assert "/tasks/{task_id}" in r.text and "/openapi.json" in r.text


# --------------------------------------------------------------------------- 11. key and file permissions


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_database_files_and_key_are_private(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHFKIT_SECRET_KEY", raising=False)
    old = os.umask(0o022)  # the usual umask, which made the files world-readable
    try:
        db = tmp_path / "team.db"
        app = create_app(f"sqlite:///{db}")
        add_user(app.state.engine, "ann")
        c = Client(app, "ann")
        assert c.get("/tasks").status_code == 200
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert p.exists() and _mode(p) == 0o600, (p, oct(_mode(p)))
        key = tmp_path / "team.db.key"
        assert key.exists() and _mode(key) == 0o600
        with Session(app.state.engine) as s:
            assert s.get(Setting, "secret_key") is None  # not in the database any more
        # a second process on the same database shares the key file: the cookie works there too
        app2 = create_app(f"sqlite:///{db}")
        c2 = TestClient(app2, follow_redirects=False, cookies=dict(c.http.cookies))
        assert c2.get("/tasks").status_code == 200
        app.state.engine.dispose()
        app2.state.engine.dispose()
    finally:
        os.umask(old)


def test_existing_world_readable_database_is_tightened(tmp_path):
    db = tmp_path / "old.db"
    make_engine(f"sqlite:///{db}").dispose()
    db.touch()
    db.chmod(0o644)
    app = create_app(f"sqlite:///{db}")
    app.state.engine.dispose()
    assert _mode(db) == 0o600


def test_key_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_SECRET_KEY", "k" * 64)
    a = create_app(f"sqlite:///{tmp_path / 'a.db'}")
    b = create_app(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        assert not (tmp_path / "a.db.key").exists()
        add_user(a.state.engine, "ann")
        add_user(b.state.engine, "ann")
        c = Client(a, "ann")
        # the same key signs both apps' cookies (user ids and session versions match here)
        assert TestClient(b, follow_redirects=False, cookies=dict(c.http.cookies)).get("/tasks").status_code == 200
    finally:
        a.state.engine.dispose()
        b.state.engine.dispose()
    monkeypatch.setenv("RLHFKIT_SECRET_KEY", "short")
    with pytest.raises(ValueError, match="RLHFKIT_SECRET_KEY"):
        create_app(f"sqlite:///{tmp_path / 'c.db'}")


def test_upgrade_removes_the_stored_key(tmp_path):
    from alembic import command

    from rlhfkit.feedback.db import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.commit()
    with Session(engine) as s, s.begin():
        s.add(Setting(key="secret_key", value="old-key-that-was-readable"))
        s.execute(sa.text("INSERT INTO users (username, password_hash, role, active, created_at) VALUES ('ann', :h, 'annotator', 1, '2030-01-01')"),
                  {"h": FAST_HASHER.hash(PASSWORD)})
    migrate(engine)
    with Session(engine) as s:
        assert s.get(Setting, "secret_key") is None
        assert s.execute(sa.text("SELECT session_version FROM users")).scalar_one() == 0
    engine.dispose()
