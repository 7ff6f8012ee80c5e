"""REINFORCE learns, on the tiny model taught to write 'good'/'bad' strings: the share of 'good' words
rises with every baseline; a baseline lowers the gradient estimate's variance on the same samples; MLE
interpolation keeps the reference pairs likely; resume reproduces an uninterrupted run; a task's metric
serves as the reward; bad options stop with a message naming them before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlhfkit import ops
from rlhfkit.config import ReinforceConfig, SFTConfig
from toy import good_fraction, write_jsonl

def good_fraction_plus_10(prompts, responses):
    """The same reward with a large common offset: what a baseline removes."""
    return good_fraction(prompts, responses) + 10.0


@pytest.fixture(scope="module")
def prompts(prompts_file) -> Path:
    return prompts_file


def _cfg(model, prompts, out, **kw) -> ReinforceConfig:
    base = dict(model=str(model), prompts=str(prompts), out=str(out), steps=12, batch_size=4, samples_per_prompt=4,
                lr=3e-3, max_new_tokens=8, grad_variance_samples=0)
    return ReinforceConfig(**{**base, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("baseline", ops.BASELINES)
def test_reinforce_raises_the_reward_with_each_baseline(tmp_path, good_bad_sft, prompts, baseline):
    from rlhfkit.train.reinforce import train_reinforce

    out = train_reinforce(_cfg(good_bad_sft, prompts, tmp_path / baseline, baseline=baseline, baseline_value=0.5),
                          reward_fn=good_fraction, progress=False)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    start = sum(r["score"] for r in rows[:3]) / 3
    end = sum(r["score"] for r in rows[-3:]) / 3
    assert 0.3 < start < 0.75, start  # the SFT policy mixes both words
    assert end > start + 0.2 and end > 0.8, (start, end)
    for k in ("score", "score_std", "reward", "kl_k1", "kl_k3", "entropy", "response_length", "eos_rate", "loss",
              "pg_loss", "baseline_mean", "advantage_std", "grad_norm"):
        assert k in rows[-1], k
    assert rows[-1]["kl_k1"] > 0  # it moved away from the reference, and we measured it
    assert (out / "model.safetensors").exists()


def test_a_baseline_lowers_the_gradient_variance_on_the_same_samples(tmp_path, good_bad_sft, prompts):
    """Rewards near 10: without a baseline every sample's gradient is ~10 x its score vector."""
    from rlhfkit.train.reinforce import train_reinforce

    ratios = {}
    for baseline in ops.BASELINES:
        out = train_reinforce(_cfg(good_bad_sft, prompts, tmp_path / baseline, baseline=baseline, baseline_value=10.0,
                                   steps=2, lr=1e-3, grad_variance_samples=8),
                              reward_fn=good_fraction_plus_10, progress=False)
        rows = _metrics(out)
        ratios[baseline] = [r["pg_grad_variance"] / r["pg_grad_variance_no_baseline"] for r in rows]
        assert all(r["pg_grad_variance_no_baseline"] > 0 for r in rows)
    assert ratios["none"] == [1.0, 1.0]
    for baseline in ("constant", "batch_mean", "leave_one_out"):
        assert max(ratios[baseline]) < 0.05, (baseline, ratios)
    # the moving average starts at baseline_value (10) and then follows the batch means
    assert max(ratios["moving_average"]) < 0.05, ratios


def test_mle_interpolation_keeps_the_reference_pairs_likely(tmp_path, good_bad_sft, prompts):
    """The reward wants 'good'; the reference pairs say 'bad bad bad bad'. With alpha 0 REINFORCE makes them
    unlikely; with MLE interpolation their log-likelihood stays far higher."""
    from rlhfkit.train.reinforce import train_reinforce

    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say words {i}.", "completion": "bad bad bad bad"} for i in range(16)])
    logp = {}
    for alpha in (0.0, 0.5):
        out = train_reinforce(_cfg(good_bad_sft, prompts, tmp_path / f"a{alpha}", baseline="leave_one_out",
                                   mle_coef=alpha, mle_data=str(refs), mle_batch_size=4),
                              reward_fn=good_fraction, progress=False)
        rows = _metrics(out)
        logp[alpha] = sum(r["mle_logp"] for r in rows[-3:]) / 3
        if alpha == 0:
            assert rows[-1]["mle_logp"] < rows[0]["mle_logp"] - 1.0, [r["mle_logp"] for r in rows]
    assert logp[0.5] > logp[0.0] + 3.0, logp


def test_resume_reproduces_uninterrupted_run(tmp_path, good_bad_sft, prompts):
    from rlhfkit.train.reinforce import train_reinforce

    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say words {i}.", "completion": "good bad"} for i in range(6)])
    kw = dict(baseline="moving_average", mle_coef=0.1, mle_data=str(refs), mle_batch_size=4, kl_coef=0.05,
              save_every=2, grad_variance_samples=4)
    full = train_reinforce(_cfg(good_bad_sft, prompts, tmp_path / "full", steps=4, **kw), reward_fn=good_fraction, progress=False)
    part = tmp_path / "part"
    train_reinforce(_cfg(good_bad_sft, prompts, part, steps=2, **kw), reward_fn=good_fraction, progress=False)
    assert len(_metrics(part)) == 2
    train_reinforce(_cfg(good_bad_sft, prompts, part, steps=4, resume=str(part), **kw), reward_fn=good_fraction, progress=False)
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


@pytest.fixture
def toy_task(tmp_path) -> Path:
    """A task folder outside the package whose reward function 'good' is the toy reward."""
    root = tmp_path / "goodbad"
    root.mkdir()
    for split in ("sft", "preference", "unlabeled", "eval"):
        row = {"prompt": "Say words 0."} | ({"completion": "good"} if split == "sft" else {})
        write_jsonl(root / f"{split}.jsonl", [row])
    (root / "task.py").write_text(
        "from rlhfkit.tasks import TaskSpec\n\n"
        "def good(prompts, responses):\n"
        "    return [sum(w == 'good' for w in r.split()) / max(len(r.split()), 1) for r in responses]\n\n"
        "TASK = TaskSpec(instruction='Say words.', reward_functions={'good': good})\n")
    return root


def test_cli_reinforce_with_a_task_metric_as_the_reward(tmp_path, good_bad_sft, prompts, toy_task):
    from rlhfkit.cli import app

    out = tmp_path / "rf"
    args = ["reinforce", "--model", good_bad_sft, "--prompts", prompts, "--reward-task", f"{toy_task}:good", "--out", out,
            "--steps", "2", "--batch-size", "2", "--samples-per-prompt", "2", "--max-new-tokens", "6", "--baseline", "batch_mean"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "REINFORCE policy written to" in result.output
    rows = _metrics(out)
    assert len(rows) == 2 and 0 <= rows[0]["score"] <= 1
    assert rows[0]["pg_grad_variance"] <= rows[0]["pg_grad_variance_no_baseline"] * 10  # both measured
    help_text = CliRunner().invoke(app, ["reinforce", "--help"]).output
    for flag in ("--baseline", "--samples-per-prompt", "--mle-coef", "--mle-data", "--reward-task", "--kl-coef"):
        assert flag in help_text


@pytest.mark.parametrize("kw, message", [
    (dict(baseline="mean"), "--baseline 'mean': expected one of none, constant, moving_average, batch_mean, leave_one_out"),
    (dict(baseline="leave_one_out", samples_per_prompt=1), "leave_one_out needs --samples-per-prompt >= 2"),
    (dict(baseline="batch_mean", samples_per_prompt=1, batch_size=1), "makes every advantage 0"),
    (dict(baseline="moving_average", baseline_decay=1.0), "--baseline-decay must be in [0, 1)"),
    (dict(mle_coef=0.5), "--mle-coef > 0 needs --mle-data"),
    (dict(kl_coef=-1.0), "must be >= 0"),
    (dict(kl_penalty="k4"), "--kl-penalty 'k4'"),
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(reward_fn=None), "a reward is needed"),
    (dict(reward_task="x:y"), "give one reward, got --reward-fn and --reward-task"),
    (dict(reward_fn=None, reward_task="nope"), "expected 'TASK:METRIC'"),
])
def test_bad_options_stop_before_any_model_loads(tmp_path, prompts, kw, message):
    from rlhfkit.train.reinforce import train_reinforce

    cfg = _cfg("does-not-exist", prompts, tmp_path / "o", **{"reward_fn": "tests.x:y", **kw})
    with pytest.raises(ValueError) as e:
        train_reinforce(cfg, progress=False)
    assert message in str(e.value)


def test_unknown_task_metric_names_the_ones_there_are(tmp_path, prompts, toy_task):
    from rlhfkit.train.reinforce import train_reinforce

    with pytest.raises(ValueError, match=r"has no reward function 'bleu'; it has: \['good'\]"):
        train_reinforce(_cfg("does-not-exist", prompts, tmp_path / "o", reward_task=f"{toy_task}:bleu"), progress=False)


# ---- PPO-ptx: the same MLE term inside PPO's minibatch loss ---------------------------------------------


def _ppo_cfg(model, prompts, out, **kw):
    from rlhfkit.config import PPOConfig

    base = dict(model=str(model), prompts=str(prompts), out=str(out), steps=6, batch_size=8, minibatch_size=4, ppo_epochs=1,
                lr=3e-3, max_new_tokens=8, init_kl_coef=0.02)
    return PPOConfig(**{**base, **kw})


def test_ppo_ptx_keeps_the_reference_pairs_likely(tmp_path, good_bad_sft, prompts):
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.train.sft import encode_sft_batch, sft_loss
    from rlhfkit.data import load_sft

    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say words {i}.", "completion": "bad bad bad bad"} for i in range(16)])
    nll = {}
    for coef in (0.0, 1.0):
        out = train_ppo(_ppo_cfg(good_bad_sft, prompts, tmp_path / f"ptx{coef}", ptx_coef=coef, ptx_data=str(refs), ptx_batch_size=4),
                        reward_fn=good_fraction, progress=False)
        rows = _metrics(out)
        assert ("ptx_loss" in rows[-1]) == (coef > 0)
        batch = encode_sft_batch(load_tokenizer(out), load_sft(refs), SFTConfig(model="tiny", data=str(refs)))
        with torch.no_grad():
            nll[coef] = sft_loss(load_causal_lm(out, trainable=False), batch).item()
    assert nll[1.0] < nll[0.0] - 0.5, nll


def test_ppo_ptx_resume_and_bad_options(tmp_path, good_bad_sft, prompts):
    from rlhfkit.train.ppo import train_ppo

    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say words {i}.", "completion": "good bad"} for i in range(6)])
    kw = dict(ptx_coef=0.5, ptx_data=str(refs), ptx_batch_size=4, save_every=2, steps=4)
    full = train_ppo(_ppo_cfg(good_bad_sft, prompts, tmp_path / "full", **kw), reward_fn=good_fraction, progress=False)
    part = tmp_path / "part"
    train_ppo(_ppo_cfg(good_bad_sft, prompts, part, **{**kw, "steps": 2}), reward_fn=good_fraction, progress=False)
    train_ppo(_ppo_cfg(good_bad_sft, prompts, part, resume=str(part), **kw), reward_fn=good_fraction, progress=False)
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="--ptx-coef 0.5: must be >= 0, and > 0 needs --ptx-data"):
        train_ppo(_ppo_cfg("does-not-exist", prompts, tmp_path / "o", ptx_coef=0.5), reward_fn=good_fraction, progress=False)
