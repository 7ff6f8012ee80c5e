"""The model worker samples real responses with the tiny random model (the CLI, in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.db import Job, Response, Task, make_engine, migrate
from rlhfkit.feedback.worker import process_jobs


def test_failed_generation_is_recorded_and_the_worker_goes_on(sqlite_url):
    engine = make_engine(sqlite_url)
    migrate(engine)
    svc.add_tasks(engine, svc.parse_import_lines(['{"prompt": "a"}', '{"prompt": "b"}'], default_kind="ranking"), ["bad", "good"], 2)

    def gen(model, prompts, k, params, seed):
        if model == "bad":
            raise RuntimeError("checkpoint not found")
        return [[f"{p}{i}" for i in range(k)] for p in prompts]

    jobs = svc.claim_jobs(engine, ["bad", "good"], "w")
    assert len(jobs) == 4
    assert process_jobs(engine, jobs, gen) == 2
    with Session(engine) as s:
        st = dict(s.execute(sa.select(Job.model, Job.status).distinct()).all())
        err = s.scalar(sa.select(Job.error).where(Job.model == "bad").limit(1))
        tasks = s.scalars(sa.select(Task)).all()
    assert st == {"bad": "failed", "good": "done"} and "checkpoint not found" in err
    assert [t.status for t in tasks] == ["ready", "ready"]  # 2 good responses each: rankable
    engine.dispose()


@pytest.mark.slow
def test_worker_cli_samples_with_tiny_model(tmp_path):
    db = f"sqlite:///{tmp_path / 'w.db'}"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Tell me about cats.", "What is RLHF?"]))
    cli = [sys.executable, "-m", "rlhfkit.feedback.cli"]
    r = subprocess.run(cli + ["import", str(prompts), "--kind", "ranking", "--sample-from", "tiny", "--num-samples", "3",
                              "--max-new-tokens", "8", "--db", db], capture_output=True, text=True)
    assert r.returncode == 0 and "2 wait for sampled responses" in r.stdout, r.stderr
    r = subprocess.run(cli + ["worker", "--model", "tiny", "--once", "--db", db], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "worker done: 2 jobs" in r.stdout, r.stderr[-3000:]
    engine = make_engine(db)
    with Session(engine) as s:
        tasks = s.scalars(sa.select(Task).order_by(Task.id)).all()
        resp = s.scalars(sa.select(Response)).all()
        jobs = s.scalars(sa.select(Job)).all()
    assert [t.status for t in tasks] == ["ready", "ready"]
    assert len(resp) == 6 and {r.source for r in resp} == {"tiny"} and all(r.text for r in resp)
    assert all(j.status == "done" for j in jobs)
    assert "tiny" in svc.active_models(engine)
    engine.dispose()
