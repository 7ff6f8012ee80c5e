"""Win-rates with standard errors (AlpacaFarm-style, Dubois et al. 2023).

Every eval sample carries ``outcome`` in [0, 1]: the panel's judgment of this method's
response against the reference method's response on the same prompt (1 = this method
wins, 0.5 = tie, 0 = the reference wins). The win-rate is the mean outcome, so a tie
counts half, and its standard error is that of a sample mean:
``std(outcomes, ddof=1) / sqrt(n)``. When a method answered a prompt several times, the
prompt is the unit: its outcomes are averaged first and the mean and standard error are
taken over prompts (samples of one prompt are not independent draws of the eval set).

Two methods evaluated on the same prompts are compared *paired*: the per-prompt
difference of their outcomes removes the prompt-to-prompt variance that both share,
so the standard error of the difference is usually smaller than
``sqrt(se_a**2 + se_b**2)``.

Files (see ``build_winrates``):
  RUN/samples/NAME.jsonl   one JSON object per eval sample:
                           {"prompt", "response", "gold", "proxy", "kl", "length", "outcome"}
  RUN/winrates.json        {"reference": str, "methods": {NAME: {"win_rate", "stderr",
                           "gold_reward", "proxy_reward", "kl", "length", "n" (prompts),
                           "samples", ["is_reference"], ["human_win_rate", "human_stderr",
                           "human_n" (prompts), "human_judgments"]}}}
A standard error that is undefined (n < 2) is written as JSON ``null``. The reference's row
(its own answers against themselves: every outcome a tie) is 50% by definition: it carries
``"is_reference": true`` and ``stderr: null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlhfkit.atomic import atomic_write

# Per-sample numeric fields averaged into the summary: sample key -> summary key.
METRIC_FIELDS: dict[str, str] = {
    "gold": "gold_reward",
    "proxy": "proxy_reward",
    "kl": "kl",
    "length": "length",
}


def _as_outcomes(outcomes: Sequence[float], what: str = "outcomes") -> np.ndarray:
    """outcomes: (n,) floats in [0, 1] -> float64 array; raises on empty / out of range."""
    x = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{what}: no outcomes (need at least one)")
    bad = np.flatnonzero(~np.isfinite(x) | (x < 0.0) | (x > 1.0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{what}[{i}] = {float(x[i])!r}: an outcome must be in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return x


def _mean_stderr(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof=1); the SE is NaN when n < 2."""
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan
    return mean, float(x.std(ddof=1) / math.sqrt(n))


def win_rate(outcomes: Sequence[float]) -> tuple[float, float]:
    """Win-rate against the reference and its standard error.

    outcomes: (n,) values in [0, 1]; 1 = win, 0.5 = tie (counts half), 0 = loss.
    Returns ``(mean, stderr)`` with ``stderr = std(outcomes, ddof=1) / sqrt(n)``
    (NaN when n == 1). Example: [1, 0, 0.5, 1] -> (0.625, 0.2394).
    """
    return _mean_stderr(_as_outcomes(outcomes))


def paired_difference(outcomes_a: Sequence[float], outcomes_b: Sequence[float]) -> tuple[float, float]:
    """Difference of win-rates of A and B, paired over the same prompts.

    outcomes_a, outcomes_b: (n,) outcomes of A and of B against the same reference,
    element i on the same prompt i. Returns ``(diff, stderr)`` where
    ``diff = mean(a - b)`` and ``stderr = std(a - b, ddof=1) / sqrt(n)``.
    A beats B clearly when ``diff > 2 * stderr``.
    """
    a = _as_outcomes(outcomes_a, "outcomes_a")
    b = _as_outcomes(outcomes_b, "outcomes_b")
    if a.shape != b.shape:
        raise ValueError(
            f"paired_difference: outcomes_a has {a.size} items, outcomes_b has {b.size}; "
            "pairing needs the same prompts in the same order"
        )
    return _mean_stderr(a - b)


def summarise_method(rows: Sequence[Mapping], source: str = "rows") -> dict:
    """Summary of one method's eval samples.

    rows: sample dicts (see module docstring); ``outcome`` is required in every row.
    ``gold``/``proxy``/``kl``/``length`` are averaged; a field absent from every row gives
    None, a field present in some rows only is an error (a partial mean would mislead).
    source: names the rows in error messages (e.g. the file path).
    Returns {"win_rate", "stderr", "gold_reward", "proxy_reward", "kl", "length", "n"}.
    """
    if len(rows) == 0:
        raise ValueError(f"{source}: no samples")
    outcomes = []
    for i, row in enumerate(rows):
        if "outcome" not in row:
            raise ValueError(f'{source}: row {i}: missing field "outcome"')
        outcomes.append(_number(row["outcome"], f"{source}: row {i}", "outcome"))
    _as_outcomes(outcomes, f"{source}: outcome")
    clustered = clustered_win_rate(rows, outcomes)
    out: dict = {"win_rate": clustered["win_rate"], "stderr": clustered["stderr"]}
    for key, name in METRIC_FIELDS.items():
        have = [i for i, row in enumerate(rows) if row.get(key) is not None]
        if not have:
            out[name] = None
            continue
        if len(have) != len(rows):
            missing = next(i for i, row in enumerate(rows) if row.get(key) is None)
            raise ValueError(
                f'{source}: row {missing}: field "{key}" missing, but present in {len(have)} other rows'
            )
        vals = [_number(row[key], f"{source}: row {i}", key) for i, row in enumerate(rows)]
        out[name] = float(np.mean(vals))
    out["n"] = clustered["n"]
    out["samples"] = len(rows)
    return out


def clustered_win_rate(rows: Sequence[Mapping], outcomes: Sequence[float] | None = None) -> dict:
    """Win-rate and standard error with the prompt as the unit: every judgment of one prompt (a
    method's several answers, or several annotators) is averaged first, then the mean and
    ``std(ddof=1) / sqrt(n)`` are taken over the n prompts (NaN SE when n < 2). The one computation
    for simulated (``summarise_method``) and human (``feedback.winrate``) win-rates.

    rows: dicts with "outcome" (unless ``outcomes`` gives them) and "prompt" (a row without one is
    a prompt of its own). Returns {"win_rate", "stderr", "n" (prompts), "judgments" (rows)}.
    Example: prompt a: [1, 1, 1], b: [0] -> prompt means [1, 0] -> (0.5, 0.5), n 2, judgments 4.
    """
    per_prompt = prompt_means(rows, outcomes)
    if not per_prompt:
        raise ValueError("no outcomes (need at least one)")
    wr, se = _mean_stderr(np.asarray(list(per_prompt.values()), dtype=float))
    return {"win_rate": wr, "stderr": se, "n": len(per_prompt), "judgments": len(rows)}


def prompt_means(rows: Sequence[Mapping], outcomes: Sequence[float] | None = None) -> dict:
    """{prompt: mean outcome of its rows}, in order of first appearance; rows without a
    "prompt" field are each their own prompt."""
    sums: dict = {}
    for i, r in enumerate(rows):
        key = r.get("prompt", ("#pos", i))
        o = float(r["outcome"]) if outcomes is None else float(outcomes[i])
        total, k = sums.get(key, (0.0, 0))
        sums[key] = (total + o, k + 1)
    return {key: total / k for key, (total, k) in sums.items()}


def _number(v, where: str, field: str) -> float:
    # bool is an int subclass; true/false in a numeric field is a bug upstream, not a 1/0.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f'{where}: field "{field}" must be a finite number, got {v!r}')
    return float(v)


def _iter_jsonl(path: Path):
    """Yields (line number, JSON object) of a JSONL file, blank lines skipped; errors name path:line."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: Path | str) -> list[dict]:
    """All JSON objects of a JSONL file (blank lines skipped); errors name path:line."""
    return [obj for _, obj in _iter_jsonl(Path(path))]


def read_samples(path: Path | str) -> list[dict]:
    """Eval samples of one method; checks ``outcome`` and numeric fields, errors name path:line."""
    path = Path(path)
    rows = []
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "outcome" not in row:
            raise ValueError(f'{where}: missing field "outcome"')
        o = _number(row["outcome"], where, "outcome")
        if not 0.0 <= o <= 1.0:
            raise ValueError(f'{where}: field "outcome" must be in [0, 1] (1 win, 0.5 tie, 0 loss), got {o!r}')
        for key in METRIC_FIELDS:
            if row.get(key) is not None:
                _number(row[key], where, key)
        rows.append(row)
    return rows


def load_samples(run_dir: Path | str) -> dict[str, list[dict]]:
    """{NAME: rows} for every RUN/samples/NAME.jsonl, sorted by name; {} if the folder is absent."""
    d = Path(run_dir) / "samples"
    if not d.is_dir():
        return {}
    return {p.stem: read_samples(p) for p in sorted(d.glob("*.jsonl"))}


def paired_outcomes(rows_a: Sequence[Mapping], rows_b: Sequence[Mapping]) -> tuple[list[float], list[float]]:
    """Per-prompt mean outcomes of A and B on the prompts both were evaluated on, aligned by
    prompt text (A's order). Rows without a "prompt" field are matched by position. A prompt
    answered several times counts once, with the mean of its outcomes. Returns two
    equal-length lists."""
    ka, kb = prompt_means(rows_a), prompt_means(rows_b)
    common = [k for k in ka if k in kb]  # keeps A's order: deterministic
    return [ka[k] for k in common], [kb[k] for k in common]


def _human_summary(name: str, judgments) -> dict:
    """human: an already computed {"win_rate", "stderr", "n" (prompts), ["judgments"]} (what
    ``feedback.winrate.human_winrates`` gives, clustered by prompt), or a list of outcomes, each
    then a prompt of its own (no prompts to cluster by)."""
    if isinstance(judgments, Mapping):
        try:
            se = judgments.get("stderr")
            out = {
                "human_win_rate": float(judgments["win_rate"]),
                "human_stderr": None if se is None else _nan_to_none(float(se)),
                "human_n": int(judgments["n"]),
            }
        except KeyError as e:
            raise ValueError(f"human[{name!r}]: missing key {e.args[0]!r} (need win_rate, stderr, n)") from None
        if judgments.get("judgments") is not None:
            out["human_judgments"] = int(judgments["judgments"])
        return out
    x = _as_outcomes(list(judgments), f"human[{name!r}]")
    c = clustered_win_rate([{"outcome": float(o)} for o in x])
    return {"human_win_rate": c["win_rate"], "human_stderr": _nan_to_none(c["stderr"]), "human_n": c["n"],
            "human_judgments": c["judgments"]}


def _nan_to_none(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def build_winrates(
    run_dir: Path | str,
    reference: str = "initial",
    human: Mapping[str, Sequence[float] | Mapping] | None = None,
) -> dict:
    """Summarise RUN/samples/*.jsonl into RUN/winrates.json and return that dict.

    reference: the method every ``outcome`` was judged against (recorded, not recomputed).
    human: optional {NAME: outcomes in [0, 1]} from human annotators (or an already
      computed {NAME: {"win_rate", "stderr", "n"}}); adds human_win_rate/stderr/n.
    Methods are written sorted by name; numbers are never rounded here.
    """
    run_dir = Path(run_dir)
    samples = load_samples(run_dir)
    if not samples:
        raise FileNotFoundError(f"{run_dir / 'samples'}: no *.jsonl sample files to evaluate")
    methods = {}
    for name, rows in samples.items():
        s = summarise_method(rows, source=str(run_dir / "samples" / f"{name}.jsonl"))
        s["stderr"] = _nan_to_none(s["stderr"])
        if name == reference and all(float(r["outcome"]) == 0.5 for r in rows):
            # the reference's own answers judged against themselves: a tie by definition, not a
            # measurement, so no standard error (a reference drawn independently is measured as usual)
            s.update(stderr=None, is_reference=True)
        methods[name] = s
    for name, judgments in (human or {}).items():
        if name not in methods:
            raise ValueError(
                f"human judgments given for {name!r} but there is no {run_dir / 'samples' / (name + '.jsonl')}"
            )
        methods[name].update(_human_summary(name, judgments))
    result = {"reference": reference, "methods": methods}
    atomic_write(run_dir / "winrates.json", json.dumps(result, indent=2) + "\n")
    return result
