"""Inter-annotator agreement statistics (numpy only: the feedback web app imports this).

Conventions
-----------
* A *rating matrix* ``data`` has shape ``(R raters, N items)``; ``np.nan`` (or ``None``)
  marks a missing rating. Labels may be numbers or any hashable (strings, ...): they are
  mapped to category indices internally for nominal statistics.
* Chance-corrected coefficients (Cohen's kappa, Fleiss' kappa, Krippendorff's alpha) are
  ``1 - observed_disagreement / expected_disagreement``. When the data show no variation at
  all (one category everywhere) the expected disagreement is 0 and the coefficient is
  undefined: these functions return ``nan`` then (not 1.0), as Krippendorff (2011) and
  Cohen define it. Perfect agreement *with* variation gives exactly 1.0.

References: Cohen (1960); Fleiss (1971); Krippendorff (2011), "Computing Krippendorff's
Alpha-Reliability", https://repository.upenn.edu/asc_papers/43.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations
from typing import Any

import numpy as np

__all__ = [
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha",
    "percent_agreement",
    "mean_pairwise_agreement",
    "majority_vote",
    "agreement_with_reference",
]


def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(np.isnan(x))
    except (TypeError, ValueError):
        return False


def _as_object_matrix(data: Any) -> np.ndarray:
    """(R, N) object array, missing entries as None. Accepts lists of lists or arrays."""
    arr = np.asarray(data, dtype=object)
    if arr.ndim != 2:
        raise ValueError(f"rating matrix must be 2-D (raters, items), got shape {arr.shape}")
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = None if _is_missing(v) else (v.item() if isinstance(v, np.generic) else v)
    return out


def _check_pair(a: Sequence[Hashable], b: Sequence[Hashable]) -> tuple[list, list]:
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"both raters must rate the same items: len(a)={len(a)} != len(b)={len(b)}")
    return a, b


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Fraction of items on which two raters give the same label.

    Items where either rating is missing (None/nan) are skipped; nan if none remain.
    """
    a, b = _check_pair(a, b)
    pairs = [(x, y) for x, y in zip(a, b) if not (_is_missing(x) or _is_missing(y))]
    if not pairs:
        return float("nan")
    return float(np.mean([x == y for x, y in pairs]))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa for two raters and nominal labels (any hashable).

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_e = sum_c p_a(c) p_b(c)``. Items with a
    missing rating are skipped. Returns nan when ``p_e == 1`` (both raters always use the
    same single label: no variation, kappa undefined).
    """
    a, b = _check_pair(a, b)
    pairs = [(x, y) for x, y in zip(a, b) if not (_is_missing(x) or _is_missing(y))]
    if not pairs:
        return float("nan")
    cats = sorted({x for p in pairs for x in p}, key=repr)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for x, y in pairs:
        table[index[x], index[y]] += 1
    table /= table.sum()
    p_o = float(np.trace(table))
    p_e = float(table.sum(1) @ table.sum(0))
    if np.isclose(p_e, 1.0):
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Any) -> float:
    """Fleiss' kappa from a count table.

    counts: (N items, C categories); ``counts[i, c]`` = number of raters who put item i in
    category c. Every item must have the same number n >= 2 of ratings.
    Returns nan when every rating falls in one category (``P_e == 1``).
    """
    m = np.asarray(counts, dtype=float)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"counts must be a non-empty (items, categories) table, got shape {m.shape}")
    if (m < 0).any():
        raise ValueError("counts must be non-negative")
    n_per_item = m.sum(1)
    n = n_per_item[0]
    if not np.allclose(n_per_item, n):
        raise ValueError(f"Fleiss' kappa needs the same number of raters per item, got {sorted(set(n_per_item))}")
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least 2 raters per item")
    p_j = m.sum(0) / m.sum()
    p_i = ((m * (m - 1)).sum(1)) / (n * (n - 1))
    p_bar = p_i.mean()
    p_e = float((p_j**2).sum())
    if np.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def _delta(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    """(C, C) squared difference function delta^2(c, k) of Krippendorff (2011).

    values: (C,) sorted numeric category values; n_c: (C,) pairable-value frequencies.
    """
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ordinal":
        # delta(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 for c <= k (ranks, not values).
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        c = np.arange(len(values))
        lo, hi = np.minimum.outer(c, c), np.maximum.outer(c, c)
        between = cum[hi + 1] - cum[lo]
        return (between - (n_c[lo] + n_c[hi]) / 2.0) ** 2
    if level == "ratio":
        s = values[:, None] + values[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = ((values[:, None] - values[None, :]) / s) ** 2
        return np.nan_to_num(d, nan=0.0)
    raise ValueError(f'level must be "nominal", "ordinal", "interval" or "ratio", got {level!r}')


def krippendorff_alpha(data: Any, level: str = "nominal") -> float:
    """Krippendorff's alpha for a (raters, items) matrix with missing values.

    data: (R, N); np.nan / None = missing. For "nominal" the labels may be any hashable;
    for "ordinal", "interval" and "ratio" they must be numbers. Items with fewer than 2
    ratings are not pairable and are ignored. Computed through the coincidence matrix
    (Krippendorff 2011): ``alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck``.
    Returns nan when fewer than 2 pairable values exist or all pairable values are equal.
    """
    obj = _as_object_matrix(data)
    present = [[v for v in obj[:, j] if v is not None] for j in range(obj.shape[1])]
    units = [u for u in present if len(u) >= 2]
    if not units:
        return float("nan")
    if level == "nominal":
        cats = sorted({v for u in units for v in u}, key=repr)
        values = np.arange(len(cats), dtype=float)
    else:
        try:
            cats = sorted({float(v) for u in units for v in u})
        except (TypeError, ValueError) as e:
            raise ValueError(f"level={level!r} needs numeric ratings: {e}") from None
        values = np.asarray(cats, dtype=float)
    index = {c: i for i, c in enumerate(cats)}
    key = (lambda v: v) if level == "nominal" else float
    C = len(cats)
    # Coincidence matrix: each ordered pair of values within a unit adds 1 / (m_u - 1).
    o = np.zeros((C, C))
    for u in units:
        cnt = np.bincount([index[key(v)] for v in u], minlength=C).astype(float)
        o += (np.outer(cnt, cnt) - np.diag(cnt)) / (len(u) - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    d = _delta(values, n_c, level)
    d_o = (o * d).sum()
    d_e = (np.outer(n_c, n_c) * d).sum() / (n - 1)
    if d_e <= 0:
        return float("nan")
    return float(1.0 - d_o / d_e)


def mean_pairwise_agreement(data: Any) -> float:
    """Mean over rater pairs of their percent agreement on the items both rated.

    data: (R, N) with missing values. Pairs that share no rated item are skipped;
    nan if no pair shares one.
    """
    obj = _as_object_matrix(data)
    scores = [percent_agreement(obj[i], obj[j]) for i, j in combinations(range(obj.shape[0]), 2)]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def majority_vote(data: Any) -> np.ndarray:
    """Per-item most frequent label among raters; ties (and items nobody rated) give nan.

    data: (R, N). Returns (N,) object array of labels (numeric data gives float array).
    """
    obj = _as_object_matrix(data)
    out: list[Any] = []
    for j in range(obj.shape[1]):
        vals = [v for v in obj[:, j] if v is not None]
        if not vals:
            out.append(float("nan"))
            continue
        counts = Counter(vals)
        top = max(counts.values())
        winners = [v for v, c in counts.items() if c == top]
        out.append(winners[0] if len(winners) == 1 else float("nan"))
    try:
        return np.asarray(out, dtype=float)
    except (TypeError, ValueError):
        return np.asarray(out, dtype=object)


def agreement_with_reference(data: Any, reference: Sequence[Hashable]) -> np.ndarray:
    """(R,) per-rater fraction of items on which the rater gives the reference label.

    Items where the rater or the reference is missing (e.g. a tied majority) are skipped.
    """
    obj = _as_object_matrix(data)
    ref = list(reference)
    if len(ref) != obj.shape[1]:
        raise ValueError(f"reference has {len(ref)} items, data has {obj.shape[1]}")
    return np.array([percent_agreement(obj[i], ref) for i in range(obj.shape[0])])
