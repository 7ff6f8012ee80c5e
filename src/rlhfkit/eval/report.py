"""The evaluation report of a run: a markdown table + verdicts, and a self-contained HTML page.

Reads (everything optional except the samples or winrates.json):
  RUN/samples/NAME.jsonl   eval samples per method (see winrate.py)
  RUN/winrates.json        written by build_winrates if absent (an existing one is used as
                           is, so human win-rates recorded there survive)
  RUN/ppo/metrics.jsonl    one JSON object per PPO step
  RUN/overopt.jsonl        {"kl", "gold", "proxy", "step"} points of the over-optimisation curve
Writes:
  RUN/report.md, RUN/report.html, RUN/plots/*.png

The table follows the lecture's (Dubois et al. 2023, AlpacaFarm). Numbers are reported
as measured: never rounded before comparison, never adjusted. A method that loses is
said to lose.

Plots are drawn on a ``matplotlib.figure.Figure`` with an explicit Agg canvas created
inside each plotting function: no pyplot, no global backend switch, nothing at import.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlhfkit.atomic import atomic_path, atomic_write

from .overopt import report_section as overopt_section
from .winrate import build_winrates, load_samples, paired_difference, paired_outcomes, read_jsonl

DISPLAY_NAMES = {
    "ppo": "PPO",
    "best_of_n": "Best-of-n",
    "expert_iteration": "Expert iteration",
    "sft": "SFT",
    "initial": "Initial",
    "dpo": "DPO",
    "reinforce": "REINFORCE",
    "rloo": "RLOO",
    "grpo": "GRPO",
}
# The methods the pipeline is expected to produce; a missing one earns a note.
EXPECTED_METHODS = ("initial", "sft", "best_of_n", "expert_iteration", "ppo")
N_SAMPLE_PROMPTS = 8
# "A beats B" requires the difference to exceed this many standard errors.
SE_THRESHOLD = 2.0


def display_name(name: str) -> str:
    """'best_of_n' -> 'Best-of-n'; unknown names: underscores to spaces, first letter upper."""
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    s = name.replace("_", " ")
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------- table


def _pct_se(wr, se) -> str:
    if wr is None:
        return "-"
    s = f"{100 * wr:.1f}"
    return s + (" ± n/a" if se is None or (isinstance(se, float) and math.isnan(se)) else f" ± {100 * se:.1f}")


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _sorted_methods(winrates: Mapping) -> list[tuple[str, dict]]:
    """Methods by simulated win-rate, best first (name breaks ties, for a stable order)."""
    return sorted(winrates["methods"].items(), key=lambda kv: (-kv[1]["win_rate"], kv[0]))


def _has_human(winrates: Mapping) -> bool:
    return any(m.get("human_win_rate") is not None for m in winrates["methods"].values())


def table_rows(winrates: Mapping) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the results table, as display strings; rows sorted by win-rate."""
    human = _has_human(winrates)
    header = ["Method", "Simulated win-rate (%) ± SE"]
    if human:
        header.append("Human win-rate (%) ± SE")
    header += ["Gold reward", "Proxy reward", "KL", "Length"]
    # methods may answer different numbers of prompts (best-of-n only a subset): say so in the table
    with_n = len({m.get("n") for m in winrates["methods"].values()}) > 1
    if with_n:
        header.append("Prompts")
    rows = []
    for name, m in _sorted_methods(winrates):
        # the reference against itself is 50% by definition, not a measurement: say so, no SE
        sim = "50 (reference)" if m.get("is_reference") else _pct_se(m["win_rate"], m.get("stderr"))
        row = [display_name(name), sim]
        if human:
            row.append(_pct_se(m.get("human_win_rate"), m.get("human_stderr")))
        row += [
            _num(m.get("gold_reward"), ".3f"),
            _num(m.get("proxy_reward"), ".3f"),
            _num(m.get("kl"), ".2f"),
            _num(m.get("length"), ".1f"),
        ]
        if with_n:
            row.append(_num(m.get("n"), "d"))
        rows.append(row)
    return header, rows


def format_table(winrates: Mapping) -> str:
    """The results table in markdown (what the CLI prints)."""
    header, rows = table_rows(winrates)
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(winrates: Mapping):
    """The results table as a ``rich.table.Table``."""
    from rich.table import Table

    header, rows = table_rows(winrates)
    t = Table(title=f"Win-rate against {display_name(winrates.get('reference', 'initial'))}")
    for i, h in enumerate(header):
        # "50 (reference)" whole, even in an 80-column terminal
        t.add_column(h, justify="left" if i == 0 else "right", min_width=14 if i == 1 else None)
    for r in rows:
        t.add_row(*r)
    return t


# ---------------------------------------------------------------- verdicts


def _compare_sentence(a: str, b: str, diff: float, se: float | None, how: str) -> str:
    """One plain-language verdict on 'A beats B', from a difference of win-rates and its SE."""
    A, B = display_name(a), display_name(b)
    pts = 100 * diff
    if se is None or math.isnan(se):
        return f"{A} vs {B}: difference {pts:+.1f} points; no standard error (too few samples) — no verdict ({how})."
    if se == 0:
        if diff > 0:
            return f"{A} beats {B} by {pts:.1f} points on every prompt (zero variance; {how})."
        if diff < 0:
            return f"{A} does NOT beat {B}: it loses by {-pts:.1f} points on every prompt (zero variance; {how})."
        return f"{A} does NOT beat {B}: identical outcomes on every prompt ({how})."
    z = diff / se
    if z > SE_THRESHOLD:
        return f"{A} beats {B} by {pts:.1f} points ({z:.1f} SE; {how})."
    if z < -SE_THRESHOLD:
        return f"{A} does NOT beat {B}: it loses by {-pts:.1f} points ({-z:.1f} SE; {how})."
    return (
        f"{A} does NOT beat {B}: the difference is {pts:+.1f} points ({z:+.1f} SE; {how}), "
        f"within {SE_THRESHOLD:g} SE — no clear winner."
    )


def compare_methods(
    a: str, b: str, winrates: Mapping, samples: Mapping[str, Sequence[Mapping]] | None = None
) -> str:
    """Verdict on simulated win-rates of A vs B: paired over shared prompts when samples of both
    are at hand, otherwise unpaired (SE = sqrt(se_a^2 + se_b^2)), and the sentence says which."""
    if samples and a in samples and b in samples:
        oa, ob = paired_outcomes(samples[a], samples[b])
        if oa:
            diff, se = paired_difference(oa, ob)
            return _compare_sentence(a, b, diff, se, f"paired over {len(oa)} prompts")
    ma, mb = winrates["methods"][a], winrates["methods"][b]
    sa, sb = ma.get("stderr"), mb.get("stderr")
    se = None if sa is None or sb is None else math.hypot(sa, sb)
    return _compare_sentence(a, b, ma["win_rate"] - mb["win_rate"], se, "unpaired")


def _vs_reference_sentence(name: str, m: Mapping, reference: str, key: str = "", judges: str = "panel") -> str:
    wr, se = m[f"{key}win_rate"], m.get(f"{key}stderr")
    A, R = display_name(name), display_name(reference)
    head = f"{A} against {R} ({judges}): {100 * wr:.1f}%"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return head + " — no standard error, no verdict."
    if se == 0:
        verdict = "wins" if wr > 0.5 else "loses" if wr < 0.5 else "ties"
        return head + f" ± 0.0 (zero variance): {verdict} on every prompt."
    z = (wr - 0.5) / se
    if z > SE_THRESHOLD:
        return head + f" ± {100 * se:.1f}: beats {R} ({z:.1f} SE above 50%)."
    if z < -SE_THRESHOLD:
        return head + f" ± {100 * se:.1f}: LOSES to {R} ({-z:.1f} SE below 50%)."
    return head + f" ± {100 * se:.1f}: not distinguishable from {R} ({z:+.1f} SE from 50%)."


def verdicts(winrates: Mapping, samples: Mapping[str, Sequence[Mapping]] | None = None) -> list[str]:
    """Plain-language verdicts computed from the numbers (never adjusted).

    - PPO vs SFT and Best-of-n vs SFT (the lecture's questions), every other method vs SFT,
      PPO vs Best-of-n; paired over prompts when samples are given;
    - each method against the reference (win-rate vs 50%);
    - the same head-to-heads by human judges when human win-rates exist (unpaired).
    """
    methods = winrates["methods"]
    ref = winrates.get("reference", "initial")
    out = []
    pairs = []
    if "sft" in methods:
        for first in ("ppo", "best_of_n"):
            if first in methods:
                pairs.append((first, "sft"))
        for name, _ in _sorted_methods(winrates):
            if name not in ("sft", ref, "ppo", "best_of_n"):
                pairs.append((name, "sft"))
    if "ppo" in methods and "best_of_n" in methods:
        pairs.append(("ppo", "best_of_n"))
    for a, b in pairs:
        out.append(compare_methods(a, b, winrates, samples))
    missing = [n for n in ("ppo", "best_of_n", "sft") if n not in methods]
    if missing:
        out.append("Not compared (no samples): " + ", ".join(display_name(n) for n in missing) + ".")
    for name, m in _sorted_methods(winrates):
        if name != ref:
            out.append(_vs_reference_sentence(name, m, ref))
    if _has_human(winrates):
        hum = {n: m for n, m in methods.items() if m.get("human_win_rate") is not None}
        for a, b in pairs:
            if a in hum and b in hum:
                sa, sb = hum[a].get("human_stderr"), hum[b].get("human_stderr")
                se = None if sa is None or sb is None else math.hypot(sa, sb)
                diff = hum[a]["human_win_rate"] - hum[b]["human_win_rate"]
                out.append("Human judges: " + _compare_sentence(a, b, diff, se, "unpaired"))
        for name, m in sorted(hum.items(), key=lambda kv: -kv[1]["human_win_rate"]):
            if name != ref:
                out.append(_vs_reference_sentence(name, m, ref, key="human_", judges="human judges"))
    return out


def overoptimisation_summary(points: Sequence[Mapping]) -> str | None:
    """A sentence on where gold reward peaked along the KL curve and what the proxy did after.

    points: dicts with "kl", "gold", "proxy" (sorted by KL here). None when < 2 usable points.
    """
    pts = sorted(
        (p for p in points if all(isinstance(p.get(k), (int, float)) for k in ("kl", "gold", "proxy"))),
        key=lambda p: p["kl"],
    )
    if len(pts) < 2:
        return None
    i = int(np.argmax([p["gold"] for p in pts]))
    peak, last = pts[i], pts[-1]
    s = f"Gold reward peaked at {peak['gold']:.3f} at KL {peak['kl']:.2f}"
    if i == len(pts) - 1:
        return s + " — the last point measured: no over-optimisation visible yet."
    return s + (
        f"; at the largest KL measured ({last['kl']:.2f}) gold is {last['gold']:.3f} "
        f"({last['gold'] - peak['gold']:+.3f}) while the proxy moved {last['proxy'] - peak['proxy']:+.3f} "
        f"(from {peak['proxy']:.3f} to {last['proxy']:.3f})"
        + (" — the proxy kept rising as gold fell: over-optimisation." if last["proxy"] > peak["proxy"] else ".")
    )


# ---------------------------------------------------------------- data


def read_metrics(path: Path | str) -> tuple[list[dict], list[str]]:
    """Rows of a metrics JSONL and notes. A truncated last line (a run still writing) is
    skipped with a note; a bad line elsewhere raises ValueError naming path:line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    notes = []
    if text and not text.endswith("\n"):
        last = text.rsplit("\n", 1)[-1]
        try:
            json.loads(last)
        except json.JSONDecodeError:
            notes.append(f"{path}: last line is incomplete (run still writing?) — skipped.")
            text = text[: len(text) - len(last)]
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        rows.append(obj)
    return rows, notes


def series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of rows having a finite number under key; step = row["step"] or index."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i))
            ys.append(float(v))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


# ---------------------------------------------------------------- plots


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    """A Figure on an explicit Agg canvas (no pyplot: no global state, safe in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_ppo_training(metrics: Sequence[Mapping], path: Path | str) -> Path | None:
    """PPO score, KL (k1, k3) and response length against step; None if none of them is logged."""
    panels = [
        ("Reward-model score", [("score", "score (proxy)")], "mean score"),
        ("KL to the reference", [("kl_k1", "KL (k1)"), ("kl_k3", "KL (k3)")], "KL (nats / sequence)"),
        ("Response length", [("response_length", "length")], "tokens"),
    ]
    if not any(series(metrics, k)[0].size for _, keys, _ in panels for k, _ in keys):
        return None
    fig, axes = _figure(13, 3.6, 1, 3)
    for ax, (title, keys, ylabel) in zip(axes[0], panels):
        drawn = False
        for k, label in keys:
            x, y = series(metrics, k)
            if x.size:
                ax.plot(x, y, marker="." if x.size < 40 else None, label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("PPO training")
    return _save(fig, Path(path))


DIAGNOSTIC_KEYS = [
    ("entropy", "Entropy"),
    ("clip_frac", "Clip fraction"),
    ("approx_kl", "Approx. KL old→new"),
    ("explained_var", "Explained variance"),
    ("value_loss", "Value loss"),
    ("policy_loss", "Policy loss"),
    ("eos_rate", "EOS rate"),
    ("kl_coef", "KL coefficient β"),
    ("tokens_per_s", "Tokens / s"),
]


def plot_ppo_diagnostics(metrics: Sequence[Mapping], path: Path | str) -> Path | None:
    """Small multiples of the PPO health metrics that are logged; None if none is."""
    present = [(k, t) for k, t in DIAGNOSTIC_KEYS if series(metrics, k)[0].size]
    if not present:
        return None
    ncols = 3
    nrows = math.ceil(len(present) / ncols)
    fig, axes = _figure(13, 2.8 * nrows, nrows, ncols)
    flat = axes.reshape(-1)
    for ax, (k, title) in zip(flat, present):
        x, y = series(metrics, k)
        ax.plot(x, y, color="tab:purple")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step", fontsize=8)
        ax.set_ylabel(k, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(present):]:
        ax.set_visible(False)
    fig.suptitle("PPO diagnostics")
    return _save(fig, Path(path))


def plot_proxy_vs_gold(metrics: Sequence[Mapping], path: Path | str) -> Path | None:
    """Proxy (reward-model score) and gold reward of the PPO batches against step, on twin
    y-axes (their scales differ); None unless both are logged."""
    xs, ys = series(metrics, "score")
    xg, yg = series(metrics, "gold")
    if not xs.size or not xg.size:
        return None
    fig, axes = _figure(8, 4)
    ax = axes[0, 0]
    l1 = ax.plot(xs, ys, color="tab:blue", label="proxy (reward model score)")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("proxy reward", color="tab:blue")
    ax2 = ax.twinx()
    l2 = ax2.plot(xg, yg, color="tab:red", label="gold reward")
    ax2.set_ylabel("gold reward", color="tab:red")
    fig.legend(l1 + l2, [ln.get_label() for ln in l1 + l2], loc="outside lower center", ncols=2, fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Proxy vs gold reward during PPO")
    return _save(fig, Path(path))


def plot_overoptimization(
    points: Sequence[Mapping], path: Path | str, methods: Mapping[str, Mapping] | None = None
) -> Path | None:
    """Gold and proxy reward against KL to the reference (Gao et al. 2022), twin y-axes.

    points: {"kl", "gold", "proxy"} dicts; methods: winrates["methods"], whose (kl, gold)
    are marked on the gold axis for comparison. None when fewer than 2 usable points.
    """
    pts = sorted(
        (p for p in points if all(isinstance(p.get(k), (int, float)) for k in ("kl", "gold", "proxy"))),
        key=lambda p: p["kl"],
    )
    if len(pts) < 2:
        return None
    kl = np.array([p["kl"] for p in pts])
    fig, axes = _figure(8, 4.5)
    ax = axes[0, 0]
    l1 = ax.plot(kl, [p["gold"] for p in pts], "o-", color="tab:red", label="gold reward")
    ax.set_xlabel("KL(π ‖ π_ref) (nats / sequence)")
    ax.set_ylabel("gold reward", color="tab:red")
    ax2 = ax.twinx()
    l2 = ax2.plot(kl, [p["proxy"] for p in pts], "s--", color="tab:blue", label="proxy reward")
    ax2.set_ylabel("proxy reward", color="tab:blue")
    handles = l1 + l2
    if methods:
        mk = [(n, m) for n, m in methods.items() if m.get("kl") is not None and m.get("gold_reward") is not None]
        if mk:
            sc = ax.scatter(
                [m["kl"] for _, m in mk], [m["gold_reward"] for _, m in mk],
                marker="*", s=120, color="black", zorder=5, label="methods (eval gold)",
            )
            for n, m in mk:
                ax.annotate(display_name(n), (m["kl"], m["gold_reward"]), textcoords="offset points",
                            xytext=(5, 5), fontsize=8)
            handles = handles + [sc]
    # Below the axes: with twin axes "best" only avoids one axis's lines.
    fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=3, fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Over-optimisation: gold and proxy reward vs KL")
    return _save(fig, Path(path))


def plot_winrates(winrates: Mapping, path: Path | str) -> Path:
    """Bar chart of win-rates (%) with ±1 SE error bars, best first; human bars beside the
    simulated ones when present; dashed line at 50% (= tie with the reference)."""
    ms = _sorted_methods(winrates)
    human = _has_human(winrates)
    names = [display_name(n) for n, _ in ms]
    if len({m.get("n") for _, m in ms}) > 1:  # methods judged on different numbers of prompts: say so
        names = [f"{name}\n(n={m.get('n')})" for name, (_, m) in zip(names, ms)]
    x = np.arange(len(ms))
    width = 0.38 if human else 0.6

    def _err(v):
        return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v

    fig, axes = _figure(max(6, 1.3 * len(ms) + 2), 4.2)
    ax = axes[0, 0]
    sim = [100 * m["win_rate"] for _, m in ms]
    off = -width / 2 if human else 0.0
    sim_err = [_err(m.get("stderr")) for _, m in ms]
    ax.bar(x + off, sim, width, yerr=sim_err, capsize=4, color="tab:blue", label="simulated (panel)")
    for xi, v, e, (_, m) in zip(x + off, sim, sim_err, ms):  # value above the error bar, not on it
        ax.text(xi, v + e + 1, "reference" if m.get("is_reference") else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    if human:
        hv = [100 * m["human_win_rate"] if m.get("human_win_rate") is not None else 0.0 for _, m in ms]
        hum_err = [_err(m.get("human_stderr")) for _, m in ms]
        ax.bar(x + width / 2, hv, width, yerr=hum_err, capsize=4, color="tab:orange", label="human")
        for xi, v, e, (_, m) in zip(x + width / 2, hv, hum_err, ms):
            label = f"{v:.1f}" if m.get("human_win_rate") is not None else "n/a"
            ax.text(xi, v + e + 1, label, ha="center", va="bottom", fontsize=8)
    ax.axhline(50, color="gray", ls="--", lw=1, label=f"tie with {display_name(winrates.get('reference', 'initial'))}")
    ax.set_xticks(x, names)
    ax.set_ylabel("win-rate (%) ± 1 SE")
    ax.set_ylim(0, 100)
    ax.set_title(f"Win-rate against {display_name(winrates.get('reference', 'initial'))}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


# ---------------------------------------------------------------- report


def _sample_prompts(samples: Mapping[str, Sequence[Mapping]], order: Sequence[str], k: int) -> list[str]:
    """k prompts spread evenly over the eval set (reference order), preferring prompts that
    every method answered; deterministic."""
    first = next((samples[n] for n in order if n in samples), [])
    prompts = list(dict.fromkeys(r.get("prompt") for r in first if isinstance(r.get("prompt"), str)))
    sets = [{r.get("prompt") for r in samples[n]} for n in order if n in samples]
    shared = [p for p in prompts if all(p in s for s in sets)] or prompts
    if len(shared) <= k:
        return shared
    idx = np.linspace(0, len(shared) - 1, k).round().astype(int)
    return [shared[i] for i in dict.fromkeys(idx.tolist())]


def _outcome_word(o) -> str:
    return {1.0: "win", 0.5: "tie", 0.0: "loss"}.get(float(o), f"{float(o):.2f}") if isinstance(o, (int, float)) else "?"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table.results{border-collapse:collapse;margin:1em 0}
table.results th,table.results td{border:1px solid #ccc;padding:.35em .7em}
table.results td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
table.results th{background:#f3f3f3}
ul.verdicts li{margin:.3em 0}
.note{color:#8a5a00;background:#fff6e0;border-left:4px solid #e0a800;padding:.4em .8em;margin:.5em 0}
img.plot{max-width:100%;display:block;margin:1em 0;border:1px solid #eee}
.samples{overflow-x:auto}
.samples table{border-collapse:collapse;table-layout:fixed;min-width:100%}
.samples th,.samples td{border:1px solid #ddd;padding:.4em;vertical-align:top;width:220px;font-size:.85em}
.samples td.prompt{background:#f8f8ff;font-weight:600}
.resp{white-space:pre-wrap;word-wrap:break-word;font-family:ui-monospace,Menlo,Consolas,monospace}
.meta{color:#666;font-size:.9em;margin-top:.3em}
.win{color:#17702f}.loss{color:#a11}.tie{color:#666}
footer{margin-top:3em;color:#888;font-size:.85em}
"""


def write_report(run_dir: Path | str) -> tuple[Path, Path]:
    """Write RUN/report.md, RUN/report.html and RUN/plots/*.png; returns (md path, html path).

    winrates.json is built from the samples when absent. Missing PPO metrics, over-optimisation
    data or methods are skipped with a note in both reports.
    """
    run_dir = Path(run_dir)
    esc = html.escape
    samples = load_samples(run_dir)
    wr_path = run_dir / "winrates.json"
    if wr_path.exists():
        try:
            winrates = json.loads(wr_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{wr_path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(winrates.get("methods"), dict) or not winrates["methods"]:
            raise ValueError(f'{wr_path}: field "methods" must be a non-empty object')
    else:
        winrates = build_winrates(run_dir)
    ref = winrates.get("reference", "initial")
    methods = winrates["methods"]
    plots_dir = run_dir / "plots"
    notes: list[str] = []
    for n in EXPECTED_METHODS:
        if n not in methods:
            notes.append(f"No results for {display_name(n)} (samples/{n}.jsonl missing) — left out.")

    # PPO metrics
    metrics: list[dict] = []
    mpath = run_dir / "ppo" / "metrics.jsonl"
    if mpath.exists():
        metrics, mnotes = read_metrics(mpath)
        notes += mnotes
        if not metrics:
            notes.append("ppo/metrics.jsonl is empty — PPO training plots skipped.")
    else:
        notes.append("No ppo/metrics.jsonl — PPO training plots skipped.")

    # Over-optimisation points: overopt.jsonl, else the PPO batches themselves when they log gold.
    overopt, overopt_src = [], ""
    opath = run_dir / "overopt.jsonl"
    if opath.exists():
        overopt, overopt_src = read_jsonl(opath), "overopt.jsonl"
    elif metrics and series(metrics, "gold")[0].size:
        kl_key = "kl_k3" if series(metrics, "kl_k3")[0].size else "kl_k1"
        overopt = [
            {"kl": r.get(kl_key), "gold": r.get("gold"), "proxy": r.get("score"), "step": r.get("step")}
            for r in metrics
        ]
        overopt_src = f"ppo/metrics.jsonl (training batches: {kl_key}, gold, score)"

    # Plots: (title, path or None, note when skipped)
    plots: list[tuple[str, Path | None, str]] = []
    plots.append(("Win-rates", plot_winrates(winrates, plots_dir / "winrates.png"), ""))
    if metrics:
        plots.append(("PPO training", plot_ppo_training(metrics, plots_dir / "ppo_training.png"),
                      "ppo/metrics.jsonl logs none of score, kl_k1, kl_k3, response_length"))
        plots.append(("Proxy vs gold reward over PPO steps", plot_proxy_vs_gold(metrics, plots_dir / "proxy_vs_gold.png"),
                      "ppo/metrics.jsonl lacks 'score' or 'gold'"))
        plots.append(("PPO diagnostics", plot_ppo_diagnostics(metrics, plots_dir / "ppo_diagnostics.png"),
                      "no diagnostic metrics logged"))
    oo_plot = plot_overoptimization(overopt, plots_dir / "overoptimization.png", methods) if overopt else None
    plots.append(("Over-optimisation (gold and proxy vs KL)", oo_plot,
                  "no over-optimisation data (overopt.jsonl absent and PPO metrics log no gold)"
                  if not overopt else f"{overopt_src}: fewer than 2 points with kl, gold and proxy"))
    for title, p, why in plots:
        if p is None:
            notes.append(f"Plot skipped — {title}: {why}.")
    oo_sentence = overoptimisation_summary(overopt) if overopt else None

    verdict_lines = verdicts(winrates, samples)
    n_values = sorted({m["n"] for m in methods.values() if "n" in m})
    def _n(m):  # "256 prompts x 2 judgments" when a method was judged more than once per prompt
        k = m.get("samples", m.get("n"))
        return f"{m.get('n')}" if not k or k == m.get("n") else f"{m.get('n')} prompts x {k // max(m.get('n') or 1, 1)} judgments"

    sizes = {_n(m) for m in methods.values()}
    n_text = (f"n = {n_values[0]} prompts per method" if len(sizes) == 1 and "x" not in next(iter(sizes))
              else "n per method: " + ", ".join(f"{display_name(k)} {_n(m)}" for k, m in _sorted_methods(winrates)))
    intro = (f"Win-rate = share of eval answers the panel preferred to {display_name(ref)}'s answer to the same prompt "
             f"(ties count half); SE = standard error over prompts (a prompt's answers are averaged first"
             f"{'; human judgments likewise: a prompt judged several times counts once' if _has_human(winrates) else ''}); {n_text}. "
             f"Gold/proxy reward, KL and length are means over the same prompts; KL is to the SFT policy, estimated "
             f"on each method's own samples (best-of-n: the analytic log n - (n-1)/n); length in words."
             + (f" {display_name(ref)} is the reference: its row is its answers judged against themselves, "
                f"50% by definition (no SE)." if methods.get(ref, {}).get("is_reference") else ""))

    # ---- markdown
    md = [f"# Evaluation report — {run_dir.name}", "", intro, "", format_table(winrates), "", "## Verdicts", ""]
    md += [f"- {v}" for v in verdict_lines]
    if oo_sentence:
        md += [f"- Over-optimisation ({overopt_src}): {oo_sentence}"]
    md += ["", "## Plots", ""]
    md += [f"![{t}](plots/{p.name})" for t, p, _ in plots if p is not None]
    study = overopt_section(run_dir)  # RUN/overopt/, written by `rlhfkit overopt`, when the run has one
    if study:
        md += study[0]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md_path = run_dir / "report.md"
    atomic_write(md_path, "\n".join(md) + "\n")

    # ---- html
    header, rows = table_rows(winrates)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>Evaluation report — {esc(run_dir.name)}</title>", f"<style>{CSS}</style></head><body>",
         f"<h1>Evaluation report — {esc(run_dir.name)}</h1>", f"<p>{esc(intro)}</p>",
         '<table class="results"><thead><tr>' + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    h += ["</tbody></table>", "<h2>Verdicts</h2>", '<ul class="verdicts">']
    h += [f"<li>{esc(v)}</li>" for v in verdict_lines]
    if oo_sentence:
        h.append(f"<li>Over-optimisation ({esc(overopt_src)}): {esc(oo_sentence)}</li>")
    h.append("</ul>")
    if notes:
        h += ['<h2>Notes</h2>'] + [f'<div class="note">{esc(n)}</div>' for n in notes]
    h.append("<h2>Plots</h2>")
    for title, p, _ in plots:
        if p is not None:
            b64 = base64.b64encode(p.read_bytes()).decode("ascii")
            h.append(f'<h3>{esc(title)}</h3><img class="plot" alt="{esc(title)}" src="data:image/png;base64,{b64}">')
    if study:
        h += study[1]
    h.append("<h2>Sample responses</h2>")
    order = [ref] + [n for n, _ in _sorted_methods(winrates) if n != ref]
    order = [n for n in order if n in samples]
    prompts = _sample_prompts(samples, order, N_SAMPLE_PROMPTS)
    if not prompts:
        h.append('<div class="note">No samples with prompts to show.</div>')
    else:
        by = {n: {} for n in order}
        for n in order:
            for r in samples[n]:
                by[n].setdefault(r.get("prompt"), r)  # first occurrence of a prompt
        h.append(f"<p>{len(prompts)} eval prompts spread over the set; outcome is against {esc(display_name(ref))}.</p>")
        h.append('<div class="samples"><table><thead><tr><th>Prompt</th>'
                 + "".join(f"<th>{esc(display_name(n))}</th>" for n in order) + "</tr></thead><tbody>")
        for p in prompts:
            cells = [f'<td class="prompt"><div class="resp">{esc(p)}</div></td>']
            for n in order:
                r = by[n].get(p)
                if r is None:
                    cells.append("<td><em>(no sample)</em></td>")
                    continue
                word = _outcome_word(r.get("outcome"))
                meta = [f'<span class="{esc(word)}">{esc(word)}</span>']
                for key, fmt in (("gold", ".3f"), ("proxy", ".3f"), ("kl", ".2f")):
                    if isinstance(r.get(key), (int, float)):
                        meta.append(f"{key} {format(r[key], fmt)}")
                cells.append(f'<td><div class="resp">{esc(str(r.get("response", "")))}</div>'
                             f'<div class="meta">{" · ".join(meta)}</div></td>')
            h.append("<tr>" + "".join(cells) + "</tr>")
        h.append("</tbody></table></div>")
    h += ["<footer>Generated by rlhfkit.eval.report from the files of this run directory; "
          "numbers as measured, unadjusted.</footer>", "</body></html>"]
    html_path = run_dir / "report.html"
    atomic_write(html_path, "\n".join(h) + "\n")
    return md_path, html_path

