"""A bounded load test of the feedback server on loopback (used by tests and bench/).

``run_load(db_url, n_users=50, per_user=20)`` starts ``uvicorn`` in a subprocess on
127.0.0.1 (a free port), creates ``n_users`` annotators and enough pairwise tasks
(overlap 2), and lets every annotator log in and submit ``per_user`` labels concurrently
(httpx async clients: ``POST /api/next``, read the task, submit). Every 5th submission is sent twice,
as a client retry would, to exercise idempotency. It stops by itself: after all
submissions or at ``time_limit_s``. Then it compares the database with what was sent:
lost labels (acknowledged but absent or different) and duplicated labels (two labels for
one assignment, or more labels than acknowledgements) must both be 0.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.orm import Session


@dataclass
class LoadResult:
    users: int
    submissions_sent: int  # distinct labels acknowledged by the server (201)
    retries: int  # repeated submissions (must come back 200, created=false)
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    submit_p95_ms: float
    max_ms: float  # the slowest request (the client gives up after 60 s)
    next_max_ms: float  # the slowest /api/next (it may allocate a batch)
    lost: int
    duplicated: int
    errors: list[str] = field(default_factory=list)
    busy: int = 0  # requests answered 503 (database busy) and sent again after Retry-After


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def prepare(db_url: str, n_users: int, per_user: int, overlap: int = 2) -> None:
    """Users u0..u{n-1} (password 'pw-load-test', cheap argon2 parameters) and enough tasks."""
    import json

    from . import service as svc
    from .db import make_engine, migrate

    engine = make_engine(db_url)
    migrate(engine)
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    for i in range(n_users):
        svc.create_user(engine, f"u{i}", "annotator", "pw-load-test", hasher=fast)
    with Session(engine) as s, s.begin():
        s.execute(sa.text("UPDATE users SET onboarded_at = created_at"))
    svc.set_settings(engine, {"overlap": overlap, "batch_size": per_user})
    # 10% slack: near the end an annotator may find only tasks they already hold
    n_tasks = int(n_users * per_user / overlap * 1.1) + 1
    lines = [json.dumps({"prompt": f"prompt {i}", "kind": "pairwise", "reference": "sft",
                         "responses": [{"text": f"method answer {i}", "source": "ppo"}, {"text": f"reference answer {i}", "source": "sft"}]})
             for i in range(n_tasks)]
    svc.add_tasks(engine, svc.parse_import_lines(lines))
    engine.dispose()


async def _annotator(base: str, name: str, per_user: int, deadline: float, lat: list, sub_lat: list, next_lat: list, sent: dict, errors: list, counters: dict) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60.0) as c:

        async def req(method: str, url: str, submit: bool = False, **kw):
            t0 = time.perf_counter()
            r = await c.request(method, url, **kw)
            for _ in range(10):  # the database was busy (503): nothing was stored, come back as told
                if r.status_code != 503:
                    break
                counters["busy"] += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                r = await c.request(method, url, **kw)
            dt_ms = (time.perf_counter() - t0) * 1000
            lat.append(dt_ms)
            if submit:
                sub_lat.append(dt_ms)
            if url == "/api/next":
                next_lat.append(dt_ms)
            counters["requests"] += 1
            return r

        page = (await req("GET", "/login")).text
        tok = page.split('name="csrf_token" value="')[1].split('"')[0]
        r = await req("POST", "/login", data={"username": name, "password": "pw-load-test", "csrf_token": tok}, headers={"accept": "application/json"})
        r.raise_for_status()
        tok = r.json()["csrf_token"]
        hdr = {"x-csrf-token": tok, "accept": "application/json"}
        for k in range(per_user):
            if time.monotonic() > deadline:
                errors.append(f"{name}: time limit reached after {k} submissions")
                return
            tid = (await req("POST", "/api/next", headers=hdr)).json()["task_id"]  # a POST hands out work
            if tid is None:
                errors.append(f"{name}: no task left after {k} submissions")
                return
            t = (await req("GET", f"/api/tasks/{tid}")).json()
            # a deterministic choice per (annotator, task): left, right or tie
            choice = zlib.crc32(f"{name}:{tid}".encode()) % 3
            winner = "tie" if choice == 2 else t["responses"][choice]["id"]  # an opaque id: compared by text below
            body = {"winner": winner}
            r = await req("POST", f"/tasks/{tid}", submit=True, json=body, headers=hdr)
            if r.status_code != 201:
                errors.append(f"{name}: task {tid}: {r.status_code} {r.text[:200]}")
                continue
            sent[(name, tid)] = None if winner == "tie" else t["responses"][choice]["text"]
            if k % 5 == 0:  # a client retry: must be recognised, not stored twice
                r2 = await req("POST", f"/tasks/{tid}", submit=True, json=body, headers=hdr)
                counters["retries"] += 1
                if r2.status_code != 200 or r2.json().get("created") is not False:
                    errors.append(f"{name}: retry of task {tid}: {r2.status_code} {r2.text[:200]}")


def run_load(db_url: str, n_users: int = 50, per_user: int = 20, time_limit_s: float = 150.0) -> LoadResult:
    """Run the whole load test against a fresh database at ``db_url``; returns the figures."""
    from .db import Assignment, Label, Response, User, make_engine

    prepare(db_url, n_users, per_user)
    port = _free_port()
    env = dict(os.environ, RLHFKIT_FEEDBACK_DB=db_url)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "rlhfkit.feedback.asgi:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(200):  # wait for the server, at most ~20 s
            try:
                if httpx.get(f"{base}/login", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        lat: list[float] = []
        sub_lat: list[float] = []
        next_lat: list[float] = []
        sent: dict = {}
        errors: list[str] = []
        counters = {"requests": 0, "retries": 0, "busy": 0}
        deadline = time.monotonic() + time_limit_s

        async def main() -> None:
            await asyncio.gather(*[
                _annotator(base, f"u{i}", per_user, deadline, lat, sub_lat, next_lat, sent, errors, counters) for i in range(n_users)
            ])

        t0 = time.perf_counter()
        asyncio.run(main())
        seconds = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    engine = make_engine(db_url)
    with Session(engine) as s:
        rows = s.execute(sa.select(User.username, Label.task_id, Label.payload, Label.assignment_id).join(Label, Label.user_id == User.id)).all()
        text_of = dict(s.execute(sa.select(Response.id, Response.text)).all())
        per_assignment = s.execute(sa.select(Label.assignment_id, sa.func.count()).group_by(Label.assignment_id).having(sa.func.count() > 1)).all()
        done_without_label = s.scalar(
            sa.select(sa.func.count()).select_from(Assignment).outerjoin(Label, Label.assignment_id == Assignment.id)
            .where(Assignment.status == "done", Label.id.is_(None))
        )
    engine.dispose()
    stored: dict = {}
    dup = len(per_assignment)
    for user, tid, payload, _ in rows:
        if (user, tid) in stored:
            dup += 1
        stored[(user, tid)] = None if payload["winner"] is None else text_of[payload["winner"]]
    lost = sum(1 for key, w in sent.items() if stored.get(key, "missing") != w) + done_without_label
    dup += len(set(stored) - set(sent))  # labels nobody got an acknowledgement for
    return LoadResult(
        users=n_users, submissions_sent=len(sent), retries=counters["retries"], requests=counters["requests"],
        seconds=seconds, requests_per_s=counters["requests"] / seconds, p50_ms=_pct(lat, 0.5), p95_ms=_pct(lat, 0.95),
        submit_p95_ms=_pct(sub_lat, 0.95), max_ms=max(lat, default=float("nan")),
        next_max_ms=max(next_lat, default=float("nan")), lost=lost, duplicated=dup, errors=errors, busy=counters["busy"],
    )
