"""Reward-model over-optimisation (Gao, Schulman and Hilton 2022, "Scaling Laws for Reward Model
Overoptimization"): the gold reward of a policy optimised against a proxy reward model, as a function of
its distance from the initial policy, d = sqrt(KL(pi || pi_init)).

Gao et al. fit the reward *gain over the initial policy*, R(d) = reward(pi) - reward(pi_init), with

  best-of-n   R_bon(d) = d (alpha - beta d)          KL_bon(n) = log n - (n - 1) / n   (analytic)
  RL          R_RL(d)  = d (alpha - beta log d)      KL from samples of the policy

Both are linear in (alpha, beta), so ordinary least squares fits them exactly (no optimiser, no start
values); both are 0 at d = 0 (d log d -> 0), where the policy is the initial one. Every ``reward`` given to
the fits here is such a gain: subtract the initial policy's mean reward first (``with_gains``).

Pure numpy; matplotlib is imported inside ``plot_overopt`` only.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["bon_kl", "distance", "fit_bon", "fit_rl", "fit", "predict", "bon_curve", "with_gains", "plot_overopt",
           "report_section"]

FORMS = {"bon": "d (alpha - beta d)", "rl": "d (alpha - beta log d)"}


def bon_kl(n: int | np.ndarray) -> float | np.ndarray:
    """KL(best-of-n || sampler) = log n - (n - 1) / n nats (Stiennon et al. 2020; an upper bound in general,
    exact when the candidates' scores have no ties). 0 at n = 1."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1):
        raise ValueError(f"best-of-n needs n >= 1, got {n.tolist()}")
    out = np.log(n) - (n - 1) / n
    return float(out) if out.ndim == 0 else out


def distance(kl) -> np.ndarray:
    """d = sqrt(KL). A sampled KL estimate of a policy next to the initial one can come out slightly
    negative (sampling noise; in bf16, the sampler's and the full pass's log-probs differ a little): those
    are read as d = 0, the initial policy."""
    return np.sqrt(np.clip(np.asarray(kl, dtype=np.float64), 0.0, None))


def _features(form: str, d: np.ndarray) -> np.ndarray:
    """Columns of the linear model R = alpha * x1 - beta * x2 (written as [x1, -x2])."""
    if form == "bon":
        return np.stack([d, -d * d], 1)
    if form == "rl":
        # d log d -> 0 as d -> 0: the model is 0 at d = 0 (np.log(0) would make it nan)
        dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return np.stack([d, -dlogd], 1)
    raise ValueError(f"unknown functional form {form!r}; forms: {', '.join(FORMS)}")


def predict(form: str, d, alpha: float, beta: float) -> np.ndarray:
    """R(d) of a fitted ``form`` ('bon' or 'rl') at distances ``d`` (0 at d = 0)."""
    arr = np.asarray(d, dtype=np.float64)
    out = _features(form, arr.reshape(-1)) @ np.array([alpha, beta], dtype=np.float64)
    return out.reshape(arr.shape) if arr.ndim else float(out[0])


def fit(form: str, d, reward) -> dict:
    """Least-squares fit of ``form`` ('bon': d(alpha - beta d); 'rl': d(alpha - beta log d)) to the points
    (d, reward); ``reward`` is the gain over the initial policy (0 expected at d = 0).

    Points at d = 0 take part (the model predicts 0 there; their residual is the measured gain).
    r2 = 1 - SS_res / SS_tot with SS_tot around the mean of ``reward`` (None when every reward is equal).
    Returns {"alpha", "beta", "r2", "points", "form"}.

    Raises ValueError when fewer than two points have d > 0 (alpha and beta are then not determined), when
    the lengths differ or a value is not finite.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    y = np.asarray(reward, dtype=np.float64).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"fit: {d.size} distances but {y.size} rewards")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(y))):
        raise ValueError("fit: distances and rewards must be finite numbers")
    if np.any(d < 0):
        raise ValueError(f"fit: distances must be >= 0 (d = sqrt(KL)), got {d.min()}")
    X = _features(form, d)
    if int(np.count_nonzero(d > 0)) < 2 or np.linalg.matrix_rank(X) < 2:
        raise ValueError(f"fit {form}: needs at least two points with distinct d > 0 to determine alpha and beta, "
                         f"got d = {np.round(d, 4).tolist()}")
    (alpha, beta), *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ np.array([alpha, beta])
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(res**2)) / ss_tot if ss_tot > 0 else None
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "points": int(d.size), "form": FORMS[form]}


def fit_bon(d, reward) -> dict:
    """``fit("bon", d, reward)``: R_bon(d) = d (alpha - beta d)."""
    return fit("bon", d, reward)


def fit_rl(d, reward) -> dict:
    """``fit("rl", d, reward)``: R_RL(d) = d (alpha - beta log d)."""
    return fit("rl", d, reward)


def bon_curve(select: np.ndarray, gold: np.ndarray, proxy: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """Best-of-n points for every n in ``ns`` from one pool of N candidates per prompt.

    select, gold, proxy: (P, N) -- per prompt and candidate, the score that picks (the proxy, less any
    missing-EOS penalty), and the gold and proxy rewards to report. The N candidates of a prompt must be
    independent draws from the initial policy. For each n, the first ``N // n * n`` candidates are cut into
    ``N // n`` disjoint blocks of n; each block's pick (argmax of ``select``, ties: the first) is one draw of
    best-of-n, and a prompt's value is the mean over its blocks. Block 0 is "the first n candidates"; the
    other blocks are more independent draws of the same quantity from the same samples, which lowers the
    variance at small n for free (at n = 1 the value is the mean of all candidates: the initial policy).

    Returns one dict per n: method "bon", n, blocks, kl (analytic), d, gold, gold_se, proxy, proxy_se
    (means over prompts; SE over prompts).
    """
    select, gold, proxy = (np.asarray(a, dtype=np.float64) for a in (select, gold, proxy))
    if not (select.shape == gold.shape == proxy.shape) or select.ndim != 2:
        raise ValueError(f"bon_curve: select, gold and proxy must be (prompts, candidates) arrays of one shape, "
                         f"got {select.shape}, {gold.shape}, {proxy.shape}")
    P, N = select.shape
    rows = []
    for n in ns:
        if not 1 <= n <= N:
            raise ValueError(f"bon_curve: n = {n} needs 1 <= n <= {N} (the candidates per prompt)")
        b = N // n
        pick = select[:, : b * n].reshape(P, b, n).argmax(-1)[..., None]
        g = np.take_along_axis(gold[:, : b * n].reshape(P, b, n), pick, -1)[..., 0].mean(1)
        p = np.take_along_axis(proxy[:, : b * n].reshape(P, b, n), pick, -1)[..., 0].mean(1)
        kl = bon_kl(n)
        rows.append({"method": "bon", "n": int(n), "blocks": int(b), "kl": kl, "d": math.sqrt(kl),
                     "gold": float(g.mean()), "gold_se": _se(g), "proxy": float(p.mean()), "proxy_se": _se(p)})
    return rows


def _se(x: np.ndarray) -> float | None:
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None


def with_gains(rows: Sequence[Mapping], baseline: Mapping[str, float]) -> list[dict]:
    """Each row with ``gold_gain`` and ``proxy_gain``: its gold and proxy minus the initial policy's
    (``baseline["gold"]``, ``baseline["proxy"]``) -- the R(d) of Gao et al."""
    return [{**r, "gold_gain": r["gold"] - baseline["gold"], "proxy_gain": r["proxy"] - baseline["proxy"]} for r in rows]


def _try_fit(form: str, rows: Sequence[Mapping], key: str) -> dict:
    """A fit that reports instead of raising: alpha, beta, r2 None with the reason in "note"."""
    try:
        return fit(form, [r["d"] for r in rows], [r[key] for r in rows])
    except ValueError as e:
        return {"alpha": None, "beta": None, "r2": None, "points": len(rows), "form": FORMS[form], "note": str(e)}


def fit_all(points: Sequence[Mapping]) -> dict:
    """The fits of a study's points (``method`` 'bon' or 'rl', ``d``, ``gold_gain``, ``proxy_gain``, and
    ``run`` for RL): {"bon": gold fit, "rl": gold fit of every RL run's points pooled, "rl_runs": {run: gold
    fit}, "proxy": {"bon", "rl"}}. Pooling the RL runs follows Gao et al.'s finding that a KL penalty moves a
    run along much the same gold-vs-d curve rather than onto another one; the per-run fits show whether it
    did here. A fit that cannot be made has None values and a "note"."""
    bon = [p for p in points if p["method"] == "bon"]
    rl = [p for p in points if p["method"] == "rl"]
    runs = list(dict.fromkeys(p["run"] for p in rl))
    return {"bon": _try_fit("bon", bon, "gold_gain"), "rl": _try_fit("rl", rl, "gold_gain"),
            "rl_runs": {r: _try_fit("rl", [p for p in rl if p["run"] == r], "gold_gain") for r in runs},
            "proxy": {"bon": _try_fit("bon", bon, "proxy_gain"), "rl": _try_fit("rl", rl, "proxy_gain")}}


def plot_overopt(points: Sequence[Mapping], fits: Mapping, path: Path | str) -> Path:
    """Gao et al.'s figure: reward gain over the initial policy against d = sqrt(KL), best-of-n left, RL
    right; gold as points and solid fitted curves (left axis), proxy as hollow points and dashed fitted
    curves (right axis: the panel's utility and the reward model's score have their own scales)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    markers = "osD^v<>p"
    for ax, method, title in ((axes[0], "bon", "Best-of-n"), (axes[1], "rl", "RL (PPO)")):
        pts = [p for p in points if p["method"] == method]
        ax2 = ax.twinx()
        runs = list(dict.fromkeys(p.get("run", "best-of-n") for p in pts))
        for i, run in enumerate(runs):
            rp = sorted((p for p in pts if p.get("run", "best-of-n") == run), key=lambda p: p["d"])
            m = markers[i % len(markers)]
            label = run if method == "rl" else "best-of-n"
            ax.plot([p["d"] for p in rp], [p["gold_gain"] for p in rp], m, color="tab:red", label=f"gold, {label}")
            ax2.plot([p["d"] for p in rp], [p["proxy_gain"] for p in rp], m, mfc="none", color="tab:blue",
                     label=f"proxy, {label}")
        dmax = max([p["d"] for p in pts], default=1.0) or 1.0
        grid = np.linspace(0.0, dmax * 1.05, 200)
        for a, f, style, color, what in ((ax, fits.get(method, {}), "-", "tab:red", "gold"),
                                         (ax2, fits.get("proxy", {}).get(method, {}), "--", "tab:blue", "proxy")):
            if f and f.get("alpha") is not None:
                r2 = "" if f.get("r2") is None else f", R² {f['r2']:.2f}"
                a.plot(grid, predict(method, grid, f["alpha"], f["beta"]), style, color=color,
                       label=f"{what} fit: α {f['alpha']:.3g}, β {f['beta']:.3g}{r2}")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_xlabel("d = √KL(π ‖ π_init)  (√nats)")
        ax.set_ylabel("gold gain over the initial policy", color="tab:red")
        ax2.set_ylabel("proxy gain (reward-model score)", color="tab:blue")
        ax.set_title(f"{title}: R(d) = {FORMS[method]}")
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        # below the axes: inside, "best" only sees the left axis and covered proxy-axis points
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    from rlhfkit.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:  # the format named: the temporary name has no .png to infer it from
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def report_section(run_dir: Path | str, folder: str = "overopt") -> tuple[list[str], list[str]] | None:
    """The run report's over-optimisation study section, when ``RUN/overopt/fits.json`` exists (written by
    ``rlhfkit overopt``): (markdown lines, html lines) with the fitted alpha, beta, R² and the plot
    (linked in markdown, embedded in html). None when there is no study in the run."""
    d = Path(run_dir) / folder
    fits_path = d / "fits.json"
    if not fits_path.exists():
        return None
    fits = json.loads(fits_path.read_text(encoding="utf-8"))
    rows = [("Best-of-n (gold)", fits.get("bon", {})), ("RL, runs pooled (gold)", fits.get("rl", {}))]
    rows += [(f"RL {name} (gold)", f) for name, f in fits.get("rl_runs", {}).items()]
    rows += [(f"{label} (proxy)", f) for label, f in (("Best-of-n", fits.get("proxy", {}).get("bon")),
                                                      ("RL, runs pooled", fits.get("proxy", {}).get("rl"))) if f]
    cells = [(name, _fmt(f.get("alpha"), ".4g"), _fmt(f.get("beta"), ".4g"), _fmt(f.get("r2"), ".3f"), str(f.get("points", "")))
             for name, f in rows]
    intro = ("Reward gain over the initial (SFT) policy against d = √KL, fitted by least squares with Gao et al. "
             "(2022)'s forms: best-of-n R(d) = d(α − βd), KL = log n − (n−1)/n; RL R(d) = d(α − β log d), KL "
             f"estimated on the policy's samples. Points: {folder}/points.jsonl.")
    header = ("Curve", "α", "β", "R²", "points")
    md = ["", "## Over-optimisation study (Gao et al. 2022)", "", intro, "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    png = d / "overopt.png"
    if png.exists():
        md += ["", f"![Over-optimisation study]({folder}/{png.name})"]
    esc = html.escape
    h = ["<h2>Over-optimisation study (Gao et al. 2022)</h2>", f"<p>{esc(intro)}</p>",
         '<table class="results"><thead><tr>' + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in cells]
    h.append("</tbody></table>")
    if png.exists():
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        h.append(f'<img class="plot" alt="Over-optimisation study" src="data:image/png;base64,{b64}">')
    return md, h
