"""Human win-rates from pairwise evaluation tasks.

Contract (read by ``rlhfkit eval --human FILE``)::

    human_winrates(source) -> {method: {"win_rate": float, "stderr": float, "n": int, "reference": str}}

``source`` is a JSONL file written by ``rlhfkit feedback export FILE --kind eval`` or a
database URL (``sqlite:///...``, ``postgresql://...``). Each judgment is one outcome for
the method against its reference: 1 (method preferred), 0.5 (tie), 0 (reference
preferred). The prompt is the unit, as for the simulated win-rates it stands beside
(``rlhfkit.eval.winrate.clustered_win_rate``, the same function): the judgments of one
prompt (several annotators) are averaged first; ``win_rate`` is the mean over prompts,
``stderr`` the standard deviation (ddof=1) of the prompt means over sqrt(n) (nan when
n < 2), ``n`` the number of prompts and ``judgments`` the number of judgments. Methods
are the response source names; a method judged against several references gets one
entry per reference under ``"method vs reference"``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path


def winrates_from_records(records: Iterable[dict]) -> dict[str, dict]:
    """Pure part of :func:`human_winrates`: records need "method", "reference", "outcome", and
    "prompt" (a record without one counts as a prompt of its own)."""
    # numpy only (no torch): the simulated win-rates' own computation, so both columns share a unit
    from rlhfkit.eval.winrate import clustered_win_rate

    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for i, r in enumerate(records, 1):
        try:
            o = float(r["outcome"])
            key = (str(r["method"]), str(r["reference"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"record {i}: needs \"method\", \"reference\" and a numeric \"outcome\"") from None
        if o not in (0.0, 0.5, 1.0):
            raise ValueError(f"record {i}: \"outcome\" must be 0, 0.5 or 1, got {o}")
        by[key].append({"outcome": o, "prompt": r["prompt"]} if "prompt" in r else {"outcome": o})
    refs_per_method: dict[str, int] = defaultdict(int)
    for m, _ in by:
        refs_per_method[m] += 1
    out = {}
    for (m, ref), rows in sorted(by.items()):
        name = m if refs_per_method[m] == 1 else f"{m} vs {ref}"
        out[name] = {**clustered_win_rate(rows), "reference": ref}
    return out


def read_eval_jsonl(path: str | Path) -> list[dict]:
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def human_winrates(db_url_or_export_file: str | Path) -> dict[str, dict]:
    """Win-rate of each method against its reference, from human pairwise judgments."""
    src = str(db_url_or_export_file)
    if "://" not in src:
        return winrates_from_records(read_eval_jsonl(src))
    from .db import make_engine
    from .export import eval_records

    engine = make_engine(src)
    try:
        return winrates_from_records(eval_records(engine))
    finally:
        engine.dispose()
