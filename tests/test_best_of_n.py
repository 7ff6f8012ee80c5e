"""best-of-n and expert iteration as methods of their own: on any model, prompts and reward, through
their functions and their commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import BestOfNConfig, ExpertIterationConfig
from rlhfkit.data import read_jsonl, write_jsonl
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout import GenerationConfig
from rlhfkit.train.best_of_n import best_of_n, run_best_of_n
from rlhfkit.train.expert_iteration import run_expert_iteration

REWARD_MODULE = '''
def length(prompts, responses):
    return [float(len(r)) for r in responses]
'''


def _length(prompts, responses):
    return torch.tensor([float(len(r)) for r in responses])


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about {x}"} for x in ("cats", "rain", "tea", "maps")])


def test_best_of_n_keeps_the_highest_penalised_score_of_n_independent_samples():
    lm, tok = load_causal_lm("tiny", trainable=False), load_tokenizer("tiny")
    gen = GenerationConfig(max_new_tokens=6, batch_size=8)
    picked, rows = best_of_n(lm, tok, ["a", "b", "c"], _length, 4, gen, seed=1, missing_eos_penalty=100.0, progress=False)
    for resp, row in zip(picked, rows):
        assert len(row["candidates"]) == 4 and len(set(row["candidates"])) > 1  # distinct draws, not one repeated
        assert resp == row["candidates"][row["best"]]
        want = [len(c) - 100.0 * (not e) for c, e in zip(row["candidates"], row["ended"])]
        assert row["penalised_scores"] == pytest.approx(want)
        assert row["best"] == max(range(4), key=lambda j: (want[j], -j))
    again, _ = best_of_n(lm, tok, ["a", "b", "c"], _length, 4, gen, seed=1, missing_eos_penalty=100.0, progress=False)
    assert again == picked  # one seed, one answer


def test_a_part_of_the_prompts_draws_what_the_whole_sample_draws_for_them():
    """Each row of a grouped sample keeps its own random stream: a process sampling its part of the prompts
    (first_prompt = where its part starts) draws the whole sample's responses for them, and the generation
    batch size does not change what is drawn (the texts; log-probs may differ in float rounding)."""
    from rlhfkit.train.best_of_n import sample_grouped

    lm, tok = load_causal_lm("tiny", trainable=False), load_tokenizer("tiny")
    prompts = [f"Tell me about {x}" for x in ("cats", "rain", "tea", "maps", "bread", "moss", "glass")]
    gen = GenerationConfig(max_new_tokens=6, batch_size=32)
    whole = sample_grouped(lm, tok, prompts, 2, gen, seed=3, progress=False).responses
    assert len(set(whole)) > len(whole) // 2  # independent draws
    parts = [sample_grouped(lm, tok, prompts[a:b], 2, gen, seed=3, progress=False, first_prompt=a).responses
             for a, b in ((0, 3), (3, 7))]
    assert parts[0] + parts[1] == whole
    small = GenerationConfig(max_new_tokens=6, batch_size=3)
    assert sample_grouped(lm, tok, prompts, 2, small, seed=3, progress=False).responses == whole
    assert sample_grouped(lm, tok, prompts, 2, gen, seed=4, progress=False).responses != whole


def test_best_of_n_command_with_a_reward_function(tmp_path, prompts_file, monkeypatch):
    (tmp_path / "myreward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "bon"
    r = CliRunner().invoke(app, ["best-of-n", "--model", "tiny", "--reward-fn", "myreward:length", "--prompts", str(prompts_file),
                                 "--n", "3", "--max-new-tokens", "5", "--missing-eos-penalty", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [row for _, row in read_jsonl(out / "candidates.jsonl")]
    picked = [row for _, row in read_jsonl(out / "responses.jsonl")]
    assert len(rows) == len(picked) == 4
    assert all(len(p["response"]) == max(map(len, row["candidates"])) for p, row in zip(picked, rows))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["kl_bound"] == pytest.approx(math.log(3) - 2 / 3)
    assert "best-of-3 on 4 prompts" in r.output


def test_best_of_n_needs_a_reward(prompts_file, tmp_path):
    with pytest.raises(ValueError, match="--reward-model DIR or --reward-fn"):
        run_best_of_n(BestOfNConfig(model="tiny", prompts=str(prompts_file), out=str(tmp_path / "x"), n=2, max_new_tokens=4), progress=False)


def test_expert_iteration_trains_a_round_per_block_of_prompts(tmp_path, prompts_file):
    cfg = ExpertIterationConfig(model="tiny", prompts=str(prompts_file), out=str(tmp_path / "ei"), rounds=2, prompts_per_round=2,
                                n=2, max_new_tokens=5, lr=1e-3)
    final = run_expert_iteration(cfg, reward_fn=_length, progress=False)
    assert final == tmp_path / "ei" / "round-2" and (final / "config.json").exists()
    summary = json.loads((tmp_path / "ei" / "summary.json").read_text())
    assert [s["round"] for s in summary] == [1, 2] and all(s["prompts"] == 2 for s in summary)
    r1 = [row["prompt"] for _, row in read_jsonl(tmp_path / "ei" / "round-1.jsonl")]
    r2 = [row["prompt"] for _, row in read_jsonl(tmp_path / "ei" / "round-2.jsonl")]
    assert r1 == ["Tell me about cats", "Tell me about rain"] and r2 == ["Tell me about tea", "Tell me about maps"]
    # round 2 starts from round 1's model
    assert (tmp_path / "ei" / "round-2" / "config.yaml").read_text().count(str(tmp_path / "ei" / "round-1")) == 1


def test_expert_iteration_refuses_too_few_prompts(tmp_path, prompts_file):
    cfg = ExpertIterationConfig(model="tiny", prompts=str(prompts_file), out=str(tmp_path / "ei"), rounds=3, prompts_per_round=2)
    with pytest.raises(ValueError, match=r"rounds x prompts_per_round = 6 prompts, got 4"):
        run_expert_iteration(cfg, reward_fn=_length, progress=False)
