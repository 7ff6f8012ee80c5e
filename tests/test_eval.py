"""Tests of rlhfkit.eval: win-rates, standard errors, paired differences, the report."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rlhfkit.eval import (
    build_winrates,
    format_table,
    paired_difference,
    paired_outcomes,
    rich_table,
    summarise_method,
    verdicts,
    win_rate,
    write_report,
)
from rlhfkit.eval.report import overoptimisation_summary, read_metrics
from rlhfkit.eval.synthetic import make_synthetic_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_samples(run, name, outcomes, prompts=None, **fields):
    d = run / "samples"
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"{name}.jsonl").open("w") as f:
        for i, o in enumerate(outcomes):
            row = {
                "prompt": prompts[i] if prompts else f"p{i}",
                "response": f"{name} says {i}",
                "gold": fields.get("gold", 0.0) + i,
                "proxy": fields.get("proxy", 1.0),
                "kl": fields.get("kl", 2.0),
                "length": fields.get("length", 10),
                "outcome": o,
            }
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- win_rate


def test_win_rate_hand_computed():
    # mean 2.5/4; deviations .375 -.625 -.125 .375 -> sum of squares .6875; var .6875/3; SE sqrt(var)/2
    mean, se = win_rate([1, 0, 0.5, 1])
    assert mean == pytest.approx(0.625, abs=1e-12)
    assert se == pytest.approx(math.sqrt(0.6875 / 3) / 2, abs=1e-12)
    assert se == pytest.approx(0.2393567769, abs=1e-9)


def test_ties_count_half():
    assert win_rate([0.5, 0.5, 0.5, 0.5]) == (0.5, 0.0)
    assert win_rate([1, 0.5])[0] == pytest.approx(0.75)
    assert win_rate([0, 0.5, 0.5])[0] == pytest.approx(1 / 3)
    # a tie is not a win: 1 win + 1 tie != 2 wins
    assert win_rate([1, 0.5, 0])[0] < win_rate([1, 1, 0])[0]


def test_win_rate_edge_cases():
    mean, se = win_rate([1])
    assert mean == 1.0 and math.isnan(se)
    with pytest.raises(ValueError, match="no outcomes"):
        win_rate([])
    with pytest.raises(ValueError, match=r"outcomes\[1\] = 2.0"):
        win_rate([1, 2])


def test_paired_difference_hand_computed():
    # differences [1, 0, 0, .5]: mean .375; deviations .625 -.375 -.375 .125 -> squares sum .6875
    diff, se = paired_difference([1, 1, 0, 0.5], [0, 1, 0, 0])
    assert diff == pytest.approx(0.375, abs=1e-12)
    assert se == pytest.approx(math.sqrt(0.6875 / 3) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1, 0], [1, 0, 1])


def test_paired_difference_uses_pairing():
    # B = A with one extra win: paired SE is small, unpaired SE would be large.
    a = [1, 0] * 20
    b = list(a)
    b[1] = 1
    diff, se = paired_difference(b, a)
    assert diff == pytest.approx(1 / 40)
    unpaired = math.hypot(win_rate(a)[1], win_rate(b)[1])
    assert se < unpaired / 3
    naive = np.std(np.array(b) - np.array(a), ddof=1) / math.sqrt(40)
    assert se == pytest.approx(naive, abs=1e-12)


def test_paired_outcomes_aligns_by_prompt():
    rows_a = [{"prompt": "x", "outcome": 1}, {"prompt": "y", "outcome": 0}, {"prompt": "z", "outcome": 0.5}]
    rows_b = [{"prompt": "z", "outcome": 0}, {"prompt": "x", "outcome": 0.5}]  # other order, y missing
    oa, ob = paired_outcomes(rows_a, rows_b)
    assert oa == [1.0, 0.5] and ob == [0.5, 0.0]


def test_several_samples_per_prompt_count_the_prompt_once():
    """Two answers per prompt: the win-rate is the mean outcome, but the standard error is taken
    over per-prompt means (prompts are the sample of the eval set), and pairing uses them too."""
    rows = [{"prompt": p, "outcome": o} for p, o in [("x", 1), ("x", 1), ("y", 0), ("y", 0), ("z", 1), ("z", 0)]]
    s = summarise_method(rows)
    assert s["n"] == 3 and s["samples"] == 6 and s["win_rate"] == pytest.approx(0.5)
    assert s["stderr"] == pytest.approx(np.std([1, 0, 0.5], ddof=1) / math.sqrt(3))
    assert s["stderr"] > np.std([1, 1, 0, 0, 1, 0], ddof=1) / math.sqrt(6)  # the naive SE is too small
    oa, ob = paired_outcomes(rows, [{"prompt": "z", "outcome": 1}, {"prompt": "x", "outcome": 0}])
    assert oa == [1.0, 0.5] and ob == [0.0, 1.0]


def test_summarise_method():
    rows = [
        {"outcome": 1, "gold": 1.0, "proxy": 2.0, "kl": 0.5, "length": 10},
        {"outcome": 0, "gold": 3.0, "proxy": 4.0, "kl": 1.5, "length": 20},
    ]
    s = summarise_method(rows)
    assert s == {
        "win_rate": 0.5, "stderr": pytest.approx(0.5), "gold_reward": 2.0,
        "proxy_reward": 3.0, "kl": 1.0, "length": 15.0, "n": 2, "samples": 2,
    }
    no_gold = summarise_method([{"outcome": 1}, {"outcome": 0}])
    assert no_gold["gold_reward"] is None
    with pytest.raises(ValueError, match='row 1: field "gold" missing'):
        summarise_method([{"outcome": 1, "gold": 1.0}, {"outcome": 0}], source="s.jsonl")
    with pytest.raises(ValueError, match='row 0: missing field "outcome"'):
        summarise_method([{"gold": 1.0}])


# ---------------------------------------------------------------- build_winrates


def test_build_winrates(tmp_path):
    _write_samples(tmp_path, "initial", [0.5] * 4)
    _write_samples(tmp_path, "ppo", [1, 0, 0.5, 1], kl=3.0, length=12)
    res = build_winrates(tmp_path, human={"ppo": [1, 1, 0]})
    on_disk = json.loads((tmp_path / "winrates.json").read_text())
    assert on_disk == res
    assert res["reference"] == "initial"
    assert set(res["methods"]) == {"initial", "ppo"}
    ppo = res["methods"]["ppo"]
    assert ppo["win_rate"] == pytest.approx(0.625)
    assert ppo["stderr"] == pytest.approx(math.sqrt(0.6875 / 3) / 2)
    assert ppo["gold_reward"] == pytest.approx(1.5)  # gold = 0, 1, 2, 3
    assert ppo["kl"] == 3.0 and ppo["length"] == 12.0 and ppo["n"] == 4
    assert ppo["human_win_rate"] == pytest.approx(2 / 3) and ppo["human_n"] == 3
    assert ppo["human_stderr"] == pytest.approx(np.std([1, 1, 0], ddof=1) / math.sqrt(3))
    assert "human_win_rate" not in res["methods"]["initial"]
    # the reference judged against itself (a tie on every answer) is 50% by definition: marked, no SE
    assert res["methods"]["initial"]["stderr"] is None and res["methods"]["initial"]["is_reference"] is True
    assert "is_reference" not in ppo
    assert any(ln.startswith("| Initial | 50 (reference) |") for ln in format_table(res).splitlines())


def test_a_reference_drawn_independently_keeps_its_standard_error(tmp_path):
    # the reference's row drawn as a method of its own (not ties everywhere): measured like any method
    _write_samples(tmp_path, "initial", [1, 0, 0.5, 0.5])
    res = build_winrates(tmp_path)
    assert res["methods"]["initial"]["stderr"] == pytest.approx(np.std([1, 0, 0.5, 0.5], ddof=1) / 2)
    assert "is_reference" not in res["methods"]["initial"]


def test_build_winrates_errors_name_file_and_line(tmp_path):
    _write_samples(tmp_path, "ppo", [1, 0])
    with pytest.raises(ValueError, match="human judgments given for 'sft'"):
        build_winrates(tmp_path, human={"sft": [1]})
    with (tmp_path / "samples" / "ppo.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "p", "response": "r", "outcome": 3}) + "\n")
    with pytest.raises(ValueError, match=r"ppo\.jsonl:3: field \"outcome\" must be in \[0, 1\]"):
        build_winrates(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl"):
        build_winrates(tmp_path / "empty")


def test_single_sample_stderr_is_null_in_json(tmp_path):
    _write_samples(tmp_path, "ppo", [1])
    build_winrates(tmp_path)
    assert json.loads((tmp_path / "winrates.json").read_text())["methods"]["ppo"]["stderr"] is None


# ---------------------------------------------------------------- report


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = make_synthetic_run(tmp_path_factory.mktemp("run"), seed=1, n_prompts=40, ppo_steps=12)
    md, html_path = write_report(run)
    return run, md, html_path


def test_report_files_and_table(full_run):
    run, md, html_path = full_run
    assert md == run / "report.md" and html_path == run / "report.html"
    text = md.read_text()
    wr = json.loads((run / "winrates.json").read_text())
    table_lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert table_lines[0].startswith("| Method | Simulated win-rate (%) ± SE | Gold reward | Proxy reward | KL | Length |")
    assert "Human" not in table_lines[0]
    names = [ln.split("|")[1].strip() for ln in table_lines[2:]]
    assert sorted(names) == sorted(["PPO", "Best-of-n", "Expert iteration", "SFT", "Initial"])
    # rows sorted by win-rate, numbers as measured
    rates = [float(ln.split("|")[2].split("±")[0].split("(")[0]) for ln in table_lines[2:]]  # "50 (reference)"
    assert rates == sorted(rates, reverse=True)
    ppo = wr["methods"]["ppo"]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table_lines[2:]}
    assert rows["PPO"] == [
        f"{100 * ppo['win_rate']:.1f} ± {100 * ppo['stderr']:.1f}",
        f"{ppo['gold_reward']:.3f}", f"{ppo['proxy_reward']:.3f}", f"{ppo['kl']:.2f}", f"{ppo['length']:.1f}",
    ]
    # verdicts are present and computed from the paired numbers
    assert "PPO " in text and "than SFT" not in text
    assert any(ln.startswith("- PPO beats SFT by") or ln.startswith("- PPO does NOT beat SFT")
               for ln in text.splitlines())
    assert any("Best-of-n" in ln and "SFT" in ln for ln in text.splitlines() if ln.startswith("- "))


def test_report_html_escapes_responses(full_run):
    _, _, html_path = full_run
    page = html_path.read_text()
    assert "<script>" not in page  # the synthetic responses and prompt 0 contain <script>
    assert "&lt;script&gt;alert(&#x27;ppo&#x27;)&lt;/script&gt; &amp; &lt;b&gt;not bold&lt;/b&gt;" in page
    assert "Sample responses" in page and page.count('class="prompt"') == 8
    assert page.count("data:image/png;base64,") == 5
    assert "<style>" in page and 'src="http' not in page  # self-contained


def test_report_plots_are_pngs(full_run):
    run, md, _ = full_run
    names = {p.name for p in (run / "plots").glob("*.png")}
    assert names == {"winrates.png", "ppo_training.png", "proxy_vs_gold.png", "ppo_diagnostics.png",
                     "overoptimization.png"}
    for n in names:
        data = (run / "plots" / n).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert f"plots/{n}" in md.read_text()


def test_report_without_ppo_metrics_or_methods(tmp_path):
    run = make_synthetic_run(tmp_path, n_prompts=10, ppo_steps=0, with_overopt=False,
                             methods={"initial": None, "sft": 0.5, "best_of_n": 0.7})
    md, html_path = write_report(run)
    text = md.read_text()
    assert "No ppo/metrics.jsonl" in text and "PPO training plots skipped" in html_path.read_text()
    assert "No results for PPO" in text and "No results for Expert iteration" in text
    assert "Not compared (no samples): PPO." in text
    assert {p.name for p in (run / "plots").glob("*.png")} == {"winrates.png"}
    assert "Best-of-n" in format_table(json.loads((run / "winrates.json").read_text()))


def test_report_uses_ppo_gold_when_no_overopt_file(tmp_path):
    run = make_synthetic_run(tmp_path, n_prompts=10, ppo_steps=8, with_overopt=False)
    md, _ = write_report(run)
    assert (run / "plots" / "overoptimization.png").read_bytes()[:8] == PNG_MAGIC
    assert "Over-optimisation (ppo/metrics.jsonl" in md.read_text()


def test_verdict_says_plainly_when_ppo_loses(tmp_path):
    n = 40
    _write_samples(tmp_path, "initial", [0.5] * n)
    _write_samples(tmp_path, "sft", [1] * 30 + [0] * 10)
    _write_samples(tmp_path, "ppo", [1] * 10 + [0] * 30)
    md, _ = write_report(tmp_path)
    text = md.read_text()
    # PPO wins 25%, SFT 75%: paired difference -50 points
    diff, se = paired_difference([1] * 10 + [0] * 30, [1] * 30 + [0] * 10)
    assert f"PPO does NOT beat SFT: it loses by 50.0 points ({-diff / se:.1f} SE; paired over 40 prompts)." in text
    assert "PPO against Initial (panel): 25.0%" in text and "LOSES to Initial" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[2].startswith("| SFT | 75.0 ±") and lines[-1].startswith("| PPO | 25.0 ±")


def test_verdict_within_two_se_is_no_winner():
    wr = {"reference": "initial", "methods": {
        "ppo": {"win_rate": 0.55, "stderr": 0.03}, "sft": {"win_rate": 0.52, "stderr": 0.03}}}
    out = verdicts(wr)  # no samples: unpaired
    assert out[0].startswith("PPO does NOT beat SFT: the difference is +3.0 points (+0.7 SE; unpaired)")
    wr["methods"]["ppo"]["win_rate"] = 0.70
    assert verdicts(wr)[0] == "PPO beats SFT by 18.0 points (4.2 SE; unpaired)."


def test_human_column_and_rich_table(tmp_path):
    _write_samples(tmp_path, "initial", [0.5] * 4)
    _write_samples(tmp_path, "sft", [0, 0, 0.5, 1])
    _write_samples(tmp_path, "ppo", [1, 0, 0.5, 1])
    wr = build_winrates(tmp_path, human={"ppo": [1, 1, 1, 0]})
    table = format_table(wr)
    header, _, first, *rest = table.splitlines()
    assert "Human win-rate (%) ± SE" in header
    assert first.startswith("| PPO | 62.5 ± 23.9 | 75.0 ± 25.0 |")
    assert any(ln.startswith("| SFT | 37.5 ± 23.9 | - |") for ln in rest)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(rich_table(wr))
    out = console.export_text()
    assert "Human win-rate" in out and "62.5 ± 23.9" in out and "Initial" in out
    md, _ = write_report(tmp_path)
    assert "PPO against Initial (human judges): 75.0% ± 25.0" in md.read_text()
    wr["methods"]["sft"].update(human_win_rate=0.25, human_stderr=0.25, human_n=4)
    assert "Human judges: PPO does NOT beat SFT: the difference is +50.0 points (+1.4 SE; unpaired)" in "\n".join(
        verdicts(wr))
    png = (tmp_path / "plots" / "winrates.png").read_bytes()
    assert png[:8] == PNG_MAGIC


def test_truncated_last_metrics_line_is_skipped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 0, "score": 1.0}\n{"step": 1, "sco')
    rows, notes = read_metrics(p)
    assert rows == [{"step": 0, "score": 1.0}] and "incomplete" in notes[0]
    p.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_metrics(p)


def test_overoptimisation_summary():
    pts = [{"kl": 0, "gold": 0.0, "proxy": 0.0}, {"kl": 2, "gold": 0.5, "proxy": 1.0},
           {"kl": 4, "gold": 0.2, "proxy": 2.0}]
    s = overoptimisation_summary(pts)
    assert "peaked at 0.500 at KL 2.00" in s and "gold is 0.200 (-0.300)" in s and "over-optimisation" in s
    assert "no over-optimisation visible" in overoptimisation_summary(pts[:2])
    assert overoptimisation_summary(pts[:1]) is None


def test_import_loads_no_plotting_library():
    code = "import sys, rlhfkit.eval; print(sorted(m for m in ('matplotlib', 'rich', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
