"""Reward-model ensembles: the conservative score and the disagreement against naive loops, an ensemble
trained by `rlhfkit reward --ensemble K` on the learnable toy (saved, loaded through --reward-model, its
held-out and policy-sample accuracies), and the order of labelling tasks by disagreement."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from rlhfkit import ops
from rlhfkit.data import read_jsonl
from toy import WORDS, write_jsonl

# ----------------------------------------------------------------------------------------------- the math


def _naive_conservative(scores, lam):
    out = []
    for row in scores.tolist():
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))
        out.append(mean - lam * std)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_ensemble_reward_is_mean_minus_lambda_std_against_a_naive_loop(lam):
    scores = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(ops.ensemble_reward(scores, lam), _naive_conservative(scores, lam), rtol=0, atol=1e-6)


def test_ensemble_reward_hand_computed_and_edge_cases():
    # members 1 and 3: mean 2, population std 1 -> 2 - 0.5 * 1
    assert ops.ensemble_reward(torch.tensor([[1.0, 3.0]]), 0.5).tolist() == [1.5]
    one = torch.tensor([[0.3], [-1.2]])
    assert ops.ensemble_reward(one, 4.0).tolist() == pytest.approx([0.3, -1.2])  # one member: itself
    assert ops.ensemble_reward(torch.tensor([[1.0, 3.0]], dtype=torch.bfloat16), 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="std_penalty"):
        ops.ensemble_reward(torch.zeros(2, 3), -1.0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        ops.ensemble_reward(torch.zeros(3), 0.0)


def test_pair_disagreement_is_the_std_of_the_members_gaps():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    naive = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        d = [x - y for x, y in zip(ra, rb)]
        m = sum(d) / len(d)
        naive.append(math.sqrt(sum((x - m) ** 2 for x in d) / len(d)))
    torch.testing.assert_close(ops.pair_disagreement(a, b), torch.tensor(naive, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.pair_disagreement(a, b), ops.pair_disagreement(b, a), rtol=0, atol=1e-12)
    # every member sees the same gap (however large): no disagreement
    assert ops.pair_disagreement(a + 5.0, a).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="shapes must match"):
        ops.pair_disagreement(a, b[:, :2])


# ------------------------------------------------------------------------------------ ordering by disagreement


class _Fixed:
    """A stand-in reward model: a fixed score per response (what a RewardScorer looks like to the ensemble)."""

    def __init__(self, table):
        self.table, self.rm = table, torch.nn.Linear(1, 1)

    def __call__(self, prompts, responses):
        return torch.tensor([self.table[r] for r in responses])


def test_tasks_are_ordered_by_the_ensembles_disagreement_most_uncertain_first():
    from rlhfkit.scoring import EnsembleScorer
    from rlhfkit.train.reward_ensemble import rank_by_disagreement

    m1 = _Fixed({"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0, "e": 2.0})
    m2 = _Fixed({"a": 0.0, "b": 1.0, "c": 3.0, "d": 0.0, "e": -2.0})
    ens = EnsembleScorer([m1, m2])
    # gaps per member: (a,b) -1,-1 -> std 0; (c,d) 0,3 -> 1.5; (e,a) 2,-2 -> 2; ranking (a,b,c): mean of
    # (a,b) 0, (a,c) |0 - -3|/2 = 1.5, (b,c) |1 - -2|/2 = 1.5 -> 1.0
    order, values = rank_by_disagreement(ens, ["p"] * 4, [["a", "b"], ["c", "d"], ["e", "a"], ["a", "b", "c"]])
    assert values == pytest.approx([0.0, 1.5, 2.0, 1.0])
    assert order == [2, 1, 3, 0]
    with pytest.raises(ValueError, match="at least 2"):
        rank_by_disagreement(ens, ["p"], [["a"]])
    with pytest.raises(ValueError, match="ensemble"):
        rank_by_disagreement(EnsembleScorer([m1]), ["p"], [["a", "b"]])


# ------------------------------------------------------------------ an ensemble trained on the learnable toy


def _words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    """Pairs whose chosen response has more 'good' words (the toy's gold: good_fraction), and policy
    samples of the kind the good/bad SFT model writes, on other prompts."""
    d = tmp_path_factory.mktemp("ensemble_toy")
    rng = random.Random(0)
    rows = []
    for i in range(48):
        a, b = _words(rng, 6), _words(rng, 6)
        ga, gb = a.split().count("good"), b.split().count("good")
        if ga != gb:
            rows.append({"prompt": f"Say words {i}.", "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    prefs = write_jsonl(d / "prefs.jsonl", rows)
    samples = write_jsonl(d / "samples.jsonl", [{"prompt": f"Say words {100 + i}.", "responses": [_words(rng, 8) for _ in range(4)]}
                                               for i in range(8)])
    return d, prefs, samples


@pytest.fixture(scope="module")
def ensemble(toy_files):
    """`rlhfkit reward --preset smoke --ensemble 3` on the toy, with the accuracy on gold-labelled policy samples."""
    from rlhfkit.cli import app

    d, prefs, samples = toy_files
    res = CliRunner().invoke(app, ["reward", "--preset", "smoke", "--data", str(prefs), "--out", str(d / "ens"), "--ensemble", "3",
                                   "--max-steps", "12", "--eval-fraction", "0.25", "--eval-samples", str(samples),
                                   "--eval-gold", "toy:good_fraction"])
    assert res.exit_code == 0, res.output
    return d / "ens", res.output


def test_ensemble_trains_saves_and_reports_accuracies(ensemble):
    out, printed = ensemble
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["members"] == ["member-0", "member-1", "member-2"]
    for name in spec["members"]:
        assert (out / name / "model.safetensors").exists() and (out / name / "eval.json").exists()
    # bootstraps: the members saw different training prompts, in different orders
    infos = [json.loads((out / n / "run_info.json").read_text()) for n in spec["members"]]
    assert len({i["order_seed"] for i in infos}) == 3 and all(i["bootstrap"] for i in infos)
    h, ps = spec["heldout"], spec["policy_samples"]
    assert h["pairs"] > 0 and len(h["members"]) == 3
    # learnable: every member and the ensemble rank held-out pairs and gold-labelled policy samples well
    assert min(h["members"]) > 0.7 and h["accuracy"] > 0.7
    assert ps["pairs"] > 10 and ps["prompts"] == 8 and min(ps["members"]) > 0.7 and ps["accuracy"] > 0.7
    ev = json.loads((out / "eval.json").read_text())
    assert ev["eval"]["eval_accuracy"] == h["accuracy"] and ev["eval"]["member_accuracy"] == h["members"]
    assert "held-out pairwise accuracy" in printed and "policy samples" in printed


def test_ensemble_loads_through_reward_model_with_the_conservative_score(ensemble, toy_files):
    from rlhfkit.config import BestOfNConfig, PPOConfig
    from rlhfkit.scoring import EnsembleScorer, RewardScorer, load_reward

    out, _ = ensemble
    prompts, responses = ["Say words 1."] * 3, ["good good good", "bad bad", "good bad good bad"]
    members = torch.stack([RewardScorer.load(out / f"member-{k}", device="cpu", center=True)(prompts, responses)
                           for k in range(3)], 1)
    assert members.std(1).max() > 1e-4  # the members differ: the penalty is exercised
    scorer = load_reward(PPOConfig(prompts="p", reward_model=str(out), reward_std_penalty=0.7, mixed_precision="no"))
    assert isinstance(scorer, EnsembleScorer) and scorer.std_penalty == 0.7
    torch.testing.assert_close(scorer(prompts, responses), _naive_conservative(members.double(), 0.7).float(), rtol=0, atol=1e-5)
    plain = load_reward(BestOfNConfig(prompts="p", reward_model=str(out), mixed_precision="no"))
    torch.testing.assert_close(plain(prompts, responses), members.mean(1), rtol=0, atol=1e-5)
    assert plain(prompts, responses)[0] > plain(prompts, responses)[1]  # learnt: more 'good' scores higher
    # a single reward model has no spread to penalise: say so rather than silently ignore lambda
    with pytest.raises(ValueError, match="ensemble"):
        load_reward(PPOConfig(prompts="p", reward_model=str(out / "member-0"), reward_std_penalty=0.7))


def test_reward_eval_command_and_disagreement_on_the_trained_ensemble(ensemble, toy_files, tmp_path):
    from rlhfkit.cli import app
    from rlhfkit.scoring import load_reward_model
    from rlhfkit.train.reward_ensemble import rank_by_disagreement, read_samples

    out, _ = ensemble
    d, prefs, samples = toy_files
    res = CliRunner().invoke(app, ["reward-eval", "--reward-model", str(out), "--data", str(prefs), "--samples", str(samples),
                                   "--gold", "toy:good_fraction", "--reward-std-penalty", "1.0", "--out", str(tmp_path / "acc.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "acc.json").read_text())
    assert got["pairs"]["std_penalty"] == 1.0 and len(got["policy_samples"]["members"]) == 3
    assert got["policy_samples"]["pairs"] == json.loads((out / "ensemble.json").read_text())["policy_samples"]["pairs"]
    bad = CliRunner().invoke(app, ["reward-eval", "--reward-model", str(out), "--samples", str(samples)])
    assert bad.exit_code == 2 and "--gold" in bad.output

    rows = read_samples(samples)
    order, values = rank_by_disagreement(load_reward_model(out, device="cpu", center=True), [p for p, _ in rows], [r for _, r in rows])
    assert sorted(order) == list(range(len(rows))) and all(v >= 0 for v in values)
    assert [values[i] for i in order] == sorted(values, reverse=True) and max(values) > 0


def test_reward_eval_takes_the_gold_the_samples_carry(ensemble, toy_files, tmp_path):
    """--gold samples: the "gold" beside each response (a pipeline run's samples, overopt's candidates) labels the
    pairs exactly as the function that wrote it; one sample per line or a list per prompt; a sample without one fails."""
    from rlhfkit.cli import app
    from rlhfkit.train.reward_ensemble import read_samples

    out, _ = ensemble
    _, _, samples = toy_files

    def good_fraction(r):
        return r.split().count("good") / len(r.split())

    rows = read_samples(samples)
    lines = write_jsonl(tmp_path / "lines.jsonl", [{"prompt": p, "response": x, "gold": good_fraction(x)} for p, g in rows for x in g])
    cands = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": p, "candidates": g, "gold": [good_fraction(x) for x in g]} for p, g in rows])

    def accuracy(path, gold):
        res = CliRunner().invoke(app, ["reward-eval", "--reward-model", str(out), "--samples", str(path), "--gold", gold])
        assert res.exit_code == 0, res.output
        return res.output.split("policy samples")[1]

    expected = accuracy(samples, "toy:good_fraction")
    assert " accuracy " in expected and " pairs (members " in expected
    assert accuracy(lines, "samples") == expected and accuracy(cands, "samples") == expected
    bad = CliRunner().invoke(app, ["reward-eval", "--reward-model", str(out), "--samples", str(samples), "--gold", "samples"])
    assert bad.exit_code != 0 and 'needs a "gold" value for every response' in bad.output


def test_overopt_conservative_proxy_trains_the_runs_ensemble_once(toy_files):
    """`rlhfkit overopt --proxy conservative`: K reward models trained as the run's reward/ is (its section,
    normalised on its SFT samples) into RUN/reward_ensemble, reused while K is the same."""
    from types import SimpleNamespace

    from rlhfkit.config import RewardConfig
    from rlhfkit.experiments.overopt import PROXIES, proxy_reward
    from rlhfkit.scoring import EnsembleScorer

    d, prefs, _ = toy_files
    rankings = write_jsonl(d / "rankings.jsonl", [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranking": [0, 1],
                                                   "sources": ["sft", "sft"]} for _, r in read_jsonl(prefs)])
    section = RewardConfig(model="tiny", data=str(rankings), reference=str(d / "run" / "reward_reference.jsonl"),
                           mixed_precision="no", max_steps=3, batch_size=4, lr=1e-3, max_prompt_tokens=48, max_completion_tokens=16)
    ctx = SimpleNamespace(run=d / "run", cfg=SimpleNamespace(reward=section, bf16=False), progress=False)
    proxy = proxy_reward(ctx, "conservative", ensemble=2, std_penalty=0.5)
    assert "conservative" in PROXIES and isinstance(proxy, EnsembleScorer) and proxy.std_penalty == 0.5
    spec = d / "run" / "reward_ensemble" / "ensemble.json"
    assert json.loads(spec.read_text())["k"] == 2 and (d / "run" / "reward_reference.jsonl").exists()
    before = spec.stat().st_mtime_ns
    again = proxy_reward(ctx, "conservative", ensemble=2, std_penalty=0.5)
    assert spec.stat().st_mtime_ns == before  # not retrained
    scores = again(["Say words 1."] * 2, ["good good", "bad bad"])
    torch.testing.assert_close(scores, proxy(["Say words 1."] * 2, ["good good", "bad bad"]))
    with pytest.raises(ValueError, match="at least 2"):
        proxy_reward(ctx, "conservative", ensemble=1)
