"""Agreement statistics against published worked examples and the `krippendorff` package."""

import math

import numpy as np
import pytest

from rlhfkit.agreement import (
    agreement_with_reference,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    majority_vote,
    mean_pairwise_agreement,
    percent_agreement,
)

nan = np.nan

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C:
# 4 observers x 12 units, values 1..5, missing entries.
KRIPP_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
)

# Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories.
FLEISS_WIKI = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_cohen_kappa_wikipedia_example():
    # 50 proposals: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> p_o .7, p_e .5.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert percent_agreement(a, b) == pytest.approx(0.7)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([1, 2, 3, 1], [1, 2, 3, 1]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["x"] * 5, ["x"] * 5))  # no variation: undefined
    # systematic disagreement on a balanced binary task: -1
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # missing ratings are skipped
    assert cohen_kappa([1, 0, None, 1, 0], [1, 0, 1, nan, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa([1, 2], [1])


def test_fleiss_kappa_wikipedia_example():
    assert fleiss_kappa(FLEISS_WIKI) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_kappa_edge_cases():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[3, 0], [1, 1]])


@pytest.mark.parametrize(
    "level, expected",
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_alpha_paper_example(level, expected):
    assert krippendorff_alpha(KRIPP_2011, level=level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([[1, 1, 1], [1, 1, nan]]))
    # an item rated once is not pairable and must not change the result
    with_single = np.array([[1, 2, 3, 4], [1, 2, 3, nan]])
    assert krippendorff_alpha(with_single) == pytest.approx(krippendorff_alpha([[1, 2, 3], [1, 2, 3]]))
    # string labels work for nominal data
    assert krippendorff_alpha([["a", "b", "a"], ["a", "b", "b"]]) == pytest.approx(
        krippendorff_alpha([[0, 1, 0], [0, 1, 1]])
    )
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(KRIPP_2011, level="cardinal")


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krippendorff_alpha_matches_package(level, seed):
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, size=40)
    data = np.where(rng.random((5, 40)) < 0.6, truth, rng.integers(1, 6, size=(5, 40))).astype(float)
    data[rng.random(data.shape) < 0.15] = np.nan
    ours = krippendorff_alpha(data, level=level)
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_fleiss_matches_krippendorff_in_the_large_sample_limit():
    # With complete data the two agree up to a (n-1)/n correction: a consistency check
    # between two independent code paths.
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=400)
    data = np.where(rng.random((6, 400)) < 0.7, truth, rng.integers(0, 3, size=(6, 400)))
    counts = np.stack([(data == c).sum(0) for c in range(3)], axis=1)
    assert fleiss_kappa(counts) == pytest.approx(krippendorff_alpha(data), abs=5e-3)


def test_pairwise_majority_and_reference():
    data = np.array(
        [
            [1, 0, 1, 1, nan],
            [1, 0, 0, 1, 0],
            [1, 1, 0, nan, 0],
            [0, 0, 1, 1, 1],
        ]
    )
    # by hand, on the items both raters rated: (0,1) 3/4, (0,2) 1/3, (0,3) 3/4,
    # (1,2) 3/4, (1,3) 2/5, (2,3) 0/4
    expected = np.mean([3 / 4, 1 / 3, 3 / 4, 3 / 4, 2 / 5, 0.0])
    assert mean_pairwise_agreement(data) == pytest.approx(expected)
    mv = majority_vote(data)
    np.testing.assert_array_equal(mv[[0, 1, 3, 4]], [1, 0, 1, 0])
    assert np.isnan(mv[2])  # 2-2 tie
    ref = agreement_with_reference(data, mv)
    # rater 0 on items {0,1,3}: all agree; rater 3 on {0,1,3,4}: 2/4
    np.testing.assert_allclose(ref, [1.0, 1.0, 2 / 3, 0.5])


def test_majority_vote_hashable_labels():
    mv = majority_vote([["a", "b", "c"], ["a", "b", "d"], ["b", "b", None]])
    assert list(mv[:2]) == ["a", "b"]
    assert isinstance(mv[2], float) and np.isnan(mv[2])


def test_agreement_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, rlhfkit.agreement; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
