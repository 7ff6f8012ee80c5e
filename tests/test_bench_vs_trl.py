"""bench/vs_trl.py runs end to end at a toy size when TRL (the `bench` extra) is installed; skipped
otherwise (CI does not install it). Only the shape of its figures is checked, never a time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vs_trl.py"


def test_vs_trl_runs_both_sides_on_the_same_work(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("vs_trl", BENCH)
    vs_trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs_trl)
    out = tmp_path / "figures.json"
    result = vs_trl.main(["--model", "tiny", "--pairs", "1", "--prompts", "2", "--samples", "2", "--new-tokens", "4",
                          "--minibatch", "2", "--json", str(out)])
    assert json.loads(out.read_text())["pairs"] == json.loads(json.dumps(result["pairs"]))
    assert len(result["pairs"]) == 1 and result["precision"] in ("no", "bf16")
    row = result["pairs"][0]
    for side in ("trl", "rloo", "ppo"):
        assert row[side] > 0
        assert 1 <= row[f"{side}_length"] <= 4
    text = capsys.readouterr().out
    assert "CPU: " in text and "avx512_bf16: " in text and "TRL/RLOO" in text and "TRL/PPO" in text
