"""`rlhfkit experiment mt-bleu --preset smoke`: the whole experiment on the tiny model writes results.json in
the issue's shape, the dev-BLEU curve of every variant and its plot."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from rlhfkit.cli import app


def test_mt_bleu_smoke_writes_the_results(tmp_path):
    out = tmp_path / "mt"
    r = CliRunner().invoke(app, ["experiment", "mt-bleu", "--preset", "smoke", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert set(res["variants"]) == {"mle", "reinforce_no_baseline", "reinforce_baseline", "reinforce_baseline_mle"}
    assert set(res["weak_start"]) == {"mle", "reinforce_baseline", "reinforce_baseline_mle"}
    for table in (res["variants"], res["weak_start"]):
        assert all(0 <= v["bleu"] <= 100 and 0 <= v["chrf"] <= 100 for v in table.values())
    # measured and finite; not asserted > 0: the tiny random model's samples may all score BLEU 0 (then both
    # variances are 0), as they did after a change of bf16 rounding (ops.pg_grad_variance has its own tests)
    assert set(res["grad_variance"]) == {"no_baseline", "baseline"}
    assert all(math.isfinite(v) and v >= 0 for v in res["grad_variance"].values())
    rows = [json.loads(l) for l in (out / "reinforce_baseline" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("pg_grad_variance" in r and "pg_grad_variance_no_baseline" in r for r in rows if "pg_loss" in r)
    # the curve starts at the start model and has a point per saved checkpoint (smoke: 4 steps, every 2)
    assert [p["step"] for p in res["dev_bleu"]["reinforce_baseline"]] == [0, 2, 4]
    assert (out / "dev_bleu.png").stat().st_size > 10_000
    assert res["settings"]["model"] == "tiny"


def test_dialogue_smoke_writes_terms_before_and_after(tmp_path):
    out = tmp_path / "dlg"
    r = CliRunner().invoke(app, ["experiment", "dialogue", "--preset", "smoke", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    for when in ("before", "after"):
        assert set(res["terms"][when]) == {"dullness", "repetition", "coherence", "total"}
        t = res["terms"][when]
        assert t["total"] == pytest.approx(0.25 * t["dullness"] + 0.25 * t["repetition"] + 0.5 * t["coherence"])
    rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"before", "after", "dullness_before", "repetition_after"} <= set(r) for r in rows)
    assert len(res["samples"]) == 5


def test_dialogue_weights_must_be_term_equals_number():
    from rlhfkit.experiments.dialogue import parse_weights

    assert parse_weights("dullness=0.5, repetition=1") == {"dullness": 0.5, "repetition": 1.0}
    with pytest.raises(ValueError, match="expected TERM=NUMBER"):
        parse_weights("dullness=lots")
