"""Over-optimisation (Gao et al. 2022): the least-squares fits, the best-of-n curve, the report section, and
`rlhfkit overopt --preset smoke` on the tiny model."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from rlhfkit.eval.overopt import (
    bon_curve, bon_kl, distance, fit_all, fit_bon, fit_rl, plot_overopt, predict, report_section, with_gains,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bon_kl_is_log_n_minus_n_minus_1_over_n():
    assert bon_kl(1) == 0.0
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    np.testing.assert_allclose(bon_kl(np.array([2, 4])), [math.log(2) - 0.5, math.log(4) - 0.75])
    with pytest.raises(ValueError, match="n >= 1"):
        bon_kl(0)


def test_distance_reads_a_slightly_negative_sampled_kl_as_zero():
    np.testing.assert_allclose(distance([-0.01, 0.0, 4.0]), [0.0, 0.0, 2.0])


@pytest.mark.parametrize("form,fit", [("bon", fit_bon), ("rl", fit_rl)])
def test_fits_recover_known_alpha_beta_from_noisy_points(form, fit):
    rng = np.random.default_rng(0)
    alpha, beta = 0.8, 0.25
    d = np.concatenate([[0.0], np.linspace(0.1, 3.0, 40)])  # a d = 0 point: the model is 0 there
    y = predict(form, d, alpha, beta) + 0.01 * rng.normal(size=d.size)
    f = fit(d, y)
    assert f["alpha"] == pytest.approx(alpha, abs=0.02) and f["beta"] == pytest.approx(beta, abs=0.02)
    assert f["r2"] > 0.99 and f["points"] == d.size
    # exact points: exact recovery
    e = fit(d, predict(form, d, alpha, beta))
    assert e["alpha"] == pytest.approx(alpha, abs=1e-9) and e["beta"] == pytest.approx(beta, abs=1e-9)
    assert e["r2"] == pytest.approx(1.0)


def test_the_rl_form_is_zero_at_d_zero_and_matches_its_definition():
    assert predict("rl", 0.0, 1.0, 1.0) == 0.0 and predict("bon", 0.0, 1.0, 1.0) == 0.0
    d = np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(predict("rl", d, 0.7, 0.3), d * (0.7 - 0.3 * np.log(d)))
    np.testing.assert_allclose(predict("bon", d, 0.7, 0.3), d * (0.7 - 0.3 * d))


def test_fit_needs_two_points_away_from_zero_and_names_the_problem():
    with pytest.raises(ValueError, match="at least two points"):
        fit_rl([0.0, 0.0, 1.0], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="3 distances but 2 rewards"):
        fit_bon([0.0, 1.0, 2.0], [0.0, 0.1])
    with pytest.raises(ValueError, match="finite"):
        fit_bon([1.0, 2.0], [0.1, float("nan")])
    # fit_all reports instead of raising
    f = fit_all([{"method": "bon", "d": 0.0, "gold_gain": 0.0, "proxy_gain": 0.0}])
    assert f["bon"]["alpha"] is None and "at least two points" in f["bon"]["note"] and f["rl"]["alpha"] is None


def test_bon_curve_picks_by_select_within_disjoint_blocks():
    # 2 prompts x 4 candidates; the pick is the argmax of select, scored by gold and proxy
    select = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 9.0]])
    gold = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    proxy = select + 100
    rows = {r["n"]: r for r in bon_curve(select, gold, proxy, [1, 2, 4])}
    assert rows[1]["gold"] == pytest.approx(gold.mean())  # n = 1: every candidate, the initial policy
    # n = 2: prompt 0 blocks (0,1)->1, (2,3)->3: gold (2+4)/2 = 3; prompt 1: (0,1)->0, (2,3)->3: (10+40)/2 = 25
    assert rows[2]["blocks"] == 2 and rows[2]["gold"] == pytest.approx((3 + 25) / 2)
    assert rows[4]["gold"] == pytest.approx((2 + 40) / 2) and rows[4]["proxy"] == pytest.approx((103 + 109) / 2)
    assert rows[4]["kl"] == pytest.approx(bon_kl(4)) and rows[4]["d"] == pytest.approx(math.sqrt(bon_kl(4)))
    assert rows[4]["gold_se"] == pytest.approx(np.std([2, 40], ddof=1) / math.sqrt(2))
    with pytest.raises(ValueError, match="n = 8"):
        bon_curve(select, gold, proxy, [8])


def _synthetic_points():
    rng = np.random.default_rng(1)
    pts = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        d = math.sqrt(bon_kl(n))
        pts.append({"method": "bon", "n": n, "kl": d * d, "d": d, "gold": 1 + d * (0.6 - 0.2 * d) + 0.01 * rng.normal(),
                    "proxy": 2 + 0.9 * d})
    for run in ("kl_coef=0", "kl_coef=0.05"):
        for s, kl in enumerate([0.0, 0.5, 1.5, 3.0, 6.0]):
            d = math.sqrt(kl)
            g = 0.0 if d == 0 else d * (0.5 - 0.3 * math.log(d))
            pts.append({"method": "rl", "run": run, "step": s, "kl": kl, "d": d, "gold": 1 + g + 0.01 * rng.normal(),
                        "proxy": 2 + 0.8 * d})
    return with_gains(pts, {"gold": 1.0, "proxy": 2.0})


def test_fit_all_and_the_plot_and_the_report_section(tmp_path):
    from rlhfkit.eval import write_report
    from rlhfkit.eval.synthetic import make_synthetic_run

    pts = _synthetic_points()
    fits = fit_all(pts)
    assert fits["bon"]["alpha"] == pytest.approx(0.6, abs=0.05) and fits["bon"]["beta"] == pytest.approx(0.2, abs=0.05)
    assert fits["rl"]["alpha"] == pytest.approx(0.5, abs=0.05) and fits["rl"]["beta"] == pytest.approx(0.3, abs=0.05)
    assert set(fits["rl_runs"]) == {"kl_coef=0", "kl_coef=0.05"} and fits["proxy"]["bon"]["alpha"] == pytest.approx(0.9)
    run = make_synthetic_run(tmp_path / "run", n_prompts=10, ppo_steps=4)
    assert report_section(run) is None
    (run / "overopt").mkdir()
    (run / "overopt" / "fits.json").write_text(json.dumps(fits))
    png = plot_overopt(pts, fits, run / "overopt" / "overopt.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    md, html_path = write_report(run)
    text = md.read_text()
    assert "## Over-optimisation study (Gao et al. 2022)" in text and "](overopt/overopt.png)" in text
    assert f"| Best-of-n (gold) | {fits['bon']['alpha']:.4g} | {fits['bon']['beta']:.4g} | {fits['bon']['r2']:.3f} |" in text
    assert "Over-optimisation study" in html_path.read_text() and html_path.read_text().count("data:image/png;base64,") == 6


def test_overopt_smoke_writes_fits_points_and_plot(tmp_path):
    from rlhfkit.cli import app

    run, out = tmp_path / "run", tmp_path / "study"
    res = CliRunner().invoke(app, ["overopt", "--preset", "smoke", "--run", str(run), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    fits = json.loads((out / "fits.json").read_text())
    for k in ("bon", "rl"):
        assert {"alpha", "beta", "r2"} <= set(fits[k])
    assert fits["kl_coefs"] == [0.0, 0.05] and set(fits["rl_runs"]) == {"kl_coef=0", "kl_coef=0.05"}
    pts = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    bon = [p for p in pts if p["method"] == "bon"]
    assert [p["n"] for p in bon] == [1, 2, 4, 8] and bon[0]["gold_gain"] == pytest.approx(0.0, abs=1e-9)
    rl = [p for p in pts if p["method"] == "rl"]
    assert sorted({(p["run"], p["step"]) for p in rl}) == [(r, s) for r in ("kl_coef=0", "kl_coef=0.05") for s in (0, 1, 2)]
    assert all(math.isfinite(p["kl"]) and p["d"] >= 0 for p in rl)
    assert (out / "points.csv").read_text().startswith("method,")
    assert (out / "overopt.png").read_bytes()[:8] == PNG_MAGIC
    # the candidates are independent draws: a prompt's candidates are not one response repeated
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 4 and all(len(set(c["candidates"])) > 1 for c in cands)
    assert (out / "rl" / "kl_coef=0" / "metrics.jsonl").exists()
    assert "best-of-n (gold)" in res.output
    # each curve's gain is over the initial policy as that curve measures it: RL's over its shared step-0 point
    start = [p for p in rl if p["step"] == 0][0]
    assert fits["rl_baseline"]["gold"] == start["gold"] and all(p["gold_gain"] == pytest.approx(p["gold"] - start["gold"]) for p in rl)
    assert all(p["gold_gain"] == pytest.approx(p["gold"] - fits["baseline"]["gold"]) for p in bon)
    # --refit: the same fits from points.jsonl, with no model; after a hand edit of a point, that point's new fit
    res = CliRunner().invoke(app, ["overopt", "--run", str(run), "--out", str(out), "--refit"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again_fits = json.loads((out / "fits.json").read_text())
    assert {k: again_fits[k] for k in ("bon", "rl", "rl_runs", "proxy")} == {k: fits[k] for k in ("bon", "rl", "rl_runs", "proxy")}
    assert [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()] == pts
    edited = [{**p, "gold": p["gold"] + 1.0} if p["method"] == "bon" and p["n"] == 8 else p for p in pts]
    (out / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in edited))
    CliRunner().invoke(app, ["overopt", "--run", str(run), "--out", str(out), "--refit"], catch_exceptions=False)
    from rlhfkit.eval.overopt import fit_bon

    moved = [p for p in edited if p["method"] == "bon"]
    want = fit_bon([p["d"] for p in moved], [p["gold"] - fits["baseline"]["gold"] for p in moved])
    assert json.loads((out / "fits.json").read_text())["bon"]["alpha"] == pytest.approx(want["alpha"])
    (out / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    # a study from before the proxy's accuracy was recorded gets it from its candidates
    older = json.loads((out / "fits.json").read_text())
    recorded = older["baseline"].pop("proxy_accuracy")
    (out / "fits.json").write_text(json.dumps(older))
    CliRunner().invoke(app, ["overopt", "--run", str(run), "--out", str(out), "--refit"], catch_exceptions=False)
    assert json.loads((out / "fits.json").read_text())["baseline"]["proxy_accuracy"] == pytest.approx(recorded)
    missing = CliRunner().invoke(app, ["overopt", "--run", str(run), "--out", str(tmp_path / "none"), "--refit"])
    assert missing.exit_code != 0 and "holds no study" in missing.output
    # a second study of the run reuses the candidates and their gold: the same best-of-n points, nothing sampled
    again = tmp_path / "again"
    res = CliRunner().invoke(app, ["overopt", "--preset", "smoke", "--run", str(run), "--out", str(again), "--kl-coefs", "0",
                                   "--rl-steps", "0", "--rl-samples", "2", "--candidates", str(out / "candidates.jsonl")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "reusing 4 x 8 candidates" in res.output
    # the proxy's accuracy on gold-labelled pairs: of the SFT candidates (recomputed here) and of each RL point's samples
    import itertools

    base = json.loads((again / "fits.json").read_text())["baseline"]
    pairs = [(c["proxy"][i] - c["proxy"][j], c["gold"][i] - c["gold"][j]) for c in cands for i, j in itertools.combinations(range(8), 2)]
    counted = [(dp, dg) for dp, dg in pairs if dg != 0]
    assert base["proxy_pairs"] == len(counted) > 0
    assert base["proxy_accuracy"] == pytest.approx(sum(dp * dg > 0 for dp, dg in counted) / len(counted))
    rl_again = [p for p in map(json.loads, (again / "points.jsonl").read_text().splitlines()) if p["method"] == "rl"]
    assert all(p["proxy_pairs"] <= 4 and (p["proxy_accuracy"] is None or 0 <= p["proxy_accuracy"] <= 1) for p in rl_again)
    assert [p for p in map(json.loads, (again / "points.jsonl").read_text().splitlines()) if p["method"] == "bon"] == bon
    # fewer candidates than were drawn: the first max_n of each prompt
    from rlhfkit.eval.overopt import bon_curve

    fewer = tmp_path / "fewer"
    res = CliRunner().invoke(app, ["overopt", "--preset", "smoke", "--run", str(run), "--out", str(fewer), "--kl-coefs", "0",
                                   "--rl-steps", "0", "--max-n", "4", "--candidates", str(out / "candidates.jsonl")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [json.loads(l)["candidates"] for l in (fewer / "candidates.jsonl").read_text().splitlines()] == [c["candidates"][:4] for c in cands]
    got = [p for p in map(json.loads, (fewer / "points.jsonl").read_text().splitlines()) if p["method"] == "bon"]
    pen = json.loads((fewer / "fits.json").read_text())["settings"]["missing_eos_penalty"]
    select = [[x - pen * (not e) for x, e in zip(c["proxy"][:4], c["ended"][:4])] for c in cands]
    want = bon_curve(select, [c["gold"][:4] for c in cands], [c["proxy"][:4] for c in cands], [1, 2, 4])
    assert [(p["n"], p["gold"]) for p in got] == [(w["n"], pytest.approx(w["gold"])) for w in want]
    res = CliRunner().invoke(app, ["overopt", "--preset", "smoke", "--run", str(run), "--out", str(tmp_path / "bad"),
                                   "--max-n", "16", "--candidates", str(out / "candidates.jsonl")])
    assert res.exit_code != 0 and "this study needs the same 4 prompts (--prompts as in that study) x at least 16" in res.output


def test_bad_options_stop_with_their_names():
    from rlhfkit.experiments.overopt import kl_coefficients, powers_of_two

    assert kl_coefficients("0,default,0.05", 0.05) == [0.0, 0.05]
    with pytest.raises(ValueError, match="kl_coefs"):
        kl_coefficients("0,lots", 0.05)
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64] and powers_of_two(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="max_n"):
        powers_of_two(0)
