"""Load test of the feedback web app on loopback: N concurrent annotators x M submissions.

    .venv/bin/python bench/feedback_load.py [--users 50] [--per-user 20] [--db URL]

Prints requests/s, latency percentiles and the count of lost / duplicated labels (both
must be 0). Without --db it uses a fresh SQLite file in a temporary folder; give a
PostgreSQL URL of an empty database to measure that instead.
"""

from __future__ import annotations

import argparse
import tempfile

from rlhfkit.feedback.loadtest import run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--per-user", type=int, default=20)
    ap.add_argument("--db", default=None, help="database URL of an EMPTY database (default: fresh SQLite file)")
    ap.add_argument("--time-limit", type=float, default=300.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = a.db or f"sqlite:///{d}/load.db"
        r = run_load(url, a.users, a.per_user, a.time_limit)
    print(f"database            {url.split('://')[0]}")
    print(f"annotators          {r.users} concurrent, {a.per_user} submissions each")
    print(f"labels acknowledged {r.submissions_sent} (+{r.retries} repeated submissions)")
    print(f"requests            {r.requests} in {r.seconds:.1f} s = {r.requests_per_s:.0f} requests/s")
    print(f"latency             p50 {r.p50_ms:.0f} ms, p95 {r.p95_ms:.0f} ms (submissions p95 {r.submit_p95_ms:.0f} ms), max {r.max_ms:.0f} ms (/api/next max {r.next_max_ms:.0f} ms)")
    print(f"lost labels         {r.lost}")
    print(f"duplicated labels   {r.duplicated}")
    for e in r.errors[:10]:
        print("error:", e)


if __name__ == "__main__":
    main()
