"""Bounded load test on loopback: 50 concurrent annotators x 20 submissions, nothing lost.

The figures (requests/s, p95 latency) are printed (pytest -s) and never asserted on.
"""

from __future__ import annotations

import pytest

from rlhfkit.feedback.loadtest import run_load

from .conftest import pg_url_or_skip


def _check(r) -> None:
    print(f"\n[load] {r.users} annotators: {r.submissions_sent} labels (+{r.retries} retries), {r.requests} requests "
          f"in {r.seconds:.1f} s = {r.requests_per_s:.0f} req/s; p50 {r.p50_ms:.0f} ms, p95 {r.p95_ms:.0f} ms, "
          f"submit p95 {r.submit_p95_ms:.0f} ms, max {r.max_ms:.0f} ms (/api/next max {r.next_max_ms:.0f} ms); 503 busy {r.busy}; lost {r.lost}, duplicated {r.duplicated}")
    assert r.errors == []
    assert r.submissions_sent == 50 * 20
    assert r.lost == 0 and r.duplicated == 0


@pytest.mark.slow
def test_load_sqlite(tmp_path):
    _check(run_load(f"sqlite:///{tmp_path / 'load.db'}", n_users=50, per_user=20, time_limit_s=150))


@pytest.mark.slow
@pytest.mark.postgres
def test_load_postgres(db_url_pg):
    _check(run_load(db_url_pg, n_users=50, per_user=20, time_limit_s=150))
