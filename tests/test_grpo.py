"""GRPO's math against naive float64 loops (group-normalised advantages, the clipped objective with the k3
KL term, clipping's zero gradients), and the two named methods on the learnable toy of test_reinforce:
the share of 'good' words rises with `rlhfkit grpo` and with `rlhfkit rloo`; a GRPO run resumed from a
checkpoint reproduces the uninterrupted one; `--preset smoke` runs; bad options stop with their names;
the pipeline's rloo and grpo stages are off by default and, when named, train from SFT against the run's
reward model and get their rows in the evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlhfkit import ops
from rlhfkit.config import GRPOConfig, RLOOConfig
from toy import good_fraction, write_jsonl

F64 = torch.float64


# ---- the math ---------------------------------------------------------------------------------------------


def naive_grpo_advantages(rewards, eps, scale):
    P, K = rewards.shape
    out = torch.zeros(P, K, dtype=F64)
    for p in range(P):
        r = [float(x) for x in rewards[p]]
        mean = sum(r) / K
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (K - 1))
        for k in range(K):
            out[p, k] = (r[k] - mean) / (std + eps) if scale else r[k] - mean
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_advantages_vs_naive_loop(scale):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 4, generator=g, dtype=F64) * 3 + 1
    rewards[2] = 0.7  # a group of equal rewards: advantages 0, not nan
    out = ops.grpo_advantages(rewards, eps=1e-4, scale=scale)
    torch.testing.assert_close(out, naive_grpo_advantages(rewards, 1e-4, scale), rtol=0, atol=1e-10)
    assert torch.all(out[2] == 0)
    # by hand: rewards (0, 1) -> mean 0.5, std sqrt(0.5) -> -+0.5 / 0.7071
    torch.testing.assert_close(ops.grpo_advantages(torch.tensor([[0.0, 1.0]], dtype=F64), eps=0.0),
                               torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2)]], dtype=F64))
    with pytest.raises(ValueError, match="K >= 2"):
        ops.grpo_advantages(torch.zeros(3, 1))


def naive_grpo_loss(logp, old_logp, ref_logp, adv, mask, eps, beta, aggregation):
    """Shao et al. 2024, eq. 3, one token at a time (autograd through the float64 scalars)."""
    B, T = logp.shape
    seq_terms, all_terms = [], []
    for b in range(B):
        terms = []
        for t in range(T):
            if mask[b, t]:
                ratio = torch.exp(logp[b, t] - old_logp[b, t])
                a = float(adv[b])
                surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
                d = ref_logp[b, t] - logp[b, t]
                k3 = torch.exp(d) - d - 1
                terms.append(-surrogate + beta * k3)
        if terms:
            seq_terms.append(sum(terms) / len(terms))
            all_terms += terms
    if aggregation == "sequence":
        return sum(seq_terms) / len(seq_terms)
    return sum(all_terms) / len(all_terms)


def _loss_inputs(seed=0, B=6, T=5):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=F64) * 3).requires_grad_()
    old = logp.detach() + torch.randn(B, T, generator=g, dtype=F64) * 0.3  # ratios in and out of the band
    ref = logp.detach() + torch.randn(B, T, generator=g, dtype=F64) * 0.5
    adv = torch.randn(B, generator=g, dtype=F64)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])[:B]
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", ops.GRPO_AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04, 1.0])
def test_grpo_loss_and_gradient_vs_naive_loop(aggregation, beta):
    logp, old, ref, adv, mask = _loss_inputs()
    old_padded = torch.where(mask, old, torch.full_like(old, float("nan")))  # padding is never read
    loss, parts = ops.grpo_loss(logp, old_padded, ref, adv, mask.float(), 0.2, beta, aggregation)
    (grad,) = torch.autograd.grad(loss, logp)
    naive = naive_grpo_loss(logp, old, ref, adv, mask, 0.2, beta, aggregation)
    (naive_grad,) = torch.autograd.grad(naive, logp)
    torch.testing.assert_close(loss, naive.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, naive_grad, rtol=0, atol=1e-10)
    assert torch.all(grad[~mask] == 0)
    assert 0 < parts["clip_frac"] < 1  # some tokens clipped, some not: the test covers both branches


def test_the_k3_term_is_the_naive_formula_and_never_negative():
    logp, old, ref, adv, mask = _loss_inputs(seed=1)
    _, parts = ops.grpo_loss(logp, old, ref, adv, mask, 0.2, 1.0, "token")
    d = (ref - logp.detach())[mask]
    naive = [math.exp(x) - x - 1 for x in d.tolist()]
    assert min(naive) >= 0
    torch.testing.assert_close(parts["kl"].detach(), torch.tensor(sum(naive) / len(naive), dtype=F64), rtol=0, atol=1e-12)
    per_token = ops.kl_penalty(logp.detach(), ref, "k3")
    assert torch.all(per_token >= 0)
    # equal log-probs: zero, with zero gradient (the reference is the minimum)
    same = logp.detach().clone().requires_grad_()
    _, parts = ops.grpo_loss(same, same.detach(), same.detach(), torch.zeros(len(same), dtype=F64), mask, 0.2, 1.0)
    (g,) = torch.autograd.grad(parts["kl"], same)
    assert float(parts["kl"].detach()) == 0 and torch.all(g == 0)


@pytest.mark.parametrize("adv, log_ratio, zero_grad", [
    (1.0, math.log(1.5), True),    # A > 0, ratio above 1 + eps: clipped, no push further up
    (1.0, math.log(0.5), False),   # A > 0, ratio below 1 - eps: the unclipped term, pushed back up
    (-1.0, math.log(0.5), True),   # A < 0, ratio below 1 - eps: clipped, no push further down
    (-1.0, math.log(1.5), False),  # A < 0, ratio above 1 + eps: pushed back down
    (1.0, math.log(1.1), False),   # inside the band: an ordinary policy gradient
])
def test_clipping_gives_zero_gradient_in_the_clipped_direction(adv, log_ratio, zero_grad):
    logp = torch.tensor([[-1.0]], dtype=F64, requires_grad=True)
    old = logp.detach() - log_ratio
    loss, parts = ops.grpo_loss(logp, old, logp.detach(), torch.tensor([adv], dtype=F64), torch.ones(1, 1), 0.2, beta=0.0)
    (g,) = torch.autograd.grad(loss, logp)
    if zero_grad:
        assert float(g) == 0 and float(parts["clip_frac"]) == 1
    else:
        ratio = math.exp(log_ratio)
        assert float(g) == pytest.approx(-adv * ratio) and float(parts["clip_frac"]) == 0


def test_grpo_loss_refuses_bad_shapes_and_aggregations():
    logp, old, ref, adv, mask = _loss_inputs()
    with pytest.raises(ValueError, match="advantages must have shape"):
        ops.grpo_loss(logp, old, ref, adv[:2], mask)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        ops.grpo_loss(logp, old, ref, adv, mask, aggregation="mean")


# ---- the methods on the learnable toy -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompts(prompts_file) -> Path:
    return prompts_file


def _cfg(cls, model, prompts, out, **kw):
    base = dict(model=str(model), prompts=str(prompts), out=str(out), steps=12, batch_size=4, samples_per_prompt=4,
                lr=3e-3, max_new_tokens=8)
    return cls(**{**base, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _rises(rows: list[dict]) -> tuple[float, float]:
    start = sum(r["score"] for r in rows[:3]) / 3
    end = sum(r["score"] for r in rows[-3:]) / 3
    assert 0.3 < start < 0.75, start  # the SFT policy mixes both words
    assert end > start + 0.2 and end > 0.8, (start, end)
    print(f"score over the first 3 steps {start:.3f}, over the last 3 {end:.3f}")  # seen with pytest -s
    return start, end


def test_grpo_raises_the_reward(tmp_path, good_bad_sft, prompts):
    from rlhfkit.train.grpo import train_grpo

    # 16 sequences a batch in minibatches of 8: two optimiser steps per batch, the second off-policy
    out = train_grpo(_cfg(GRPOConfig, good_bad_sft, prompts, tmp_path / "grpo", minibatch_size=8), reward_fn=good_fraction,
                     progress=False)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    _rises(rows)
    for k in ("score", "score_std", "reward", "kl_k1", "kl_k3", "kl_coef", "entropy", "response_length", "eos_rate", "loss",
              "pg_loss", "kl_loss", "clip_frac", "approx_kl", "advantage_std", "grad_norm"):
        assert k in rows[-1], k
    assert all(r["grpo_minibatches_done"] == 2 for r in rows)
    assert rows[-1]["kl_k3"] > 0 and rows[-1]["kl_loss"] > 0  # it moved away from the reference, and the term saw it
    assert max(r["approx_kl"] for r in rows) > 0  # the second minibatch of a batch is off-policy
    assert rows[0]["kl_coef"] == 0.04
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "run_info.json").read_text())["advantages"] == "group-normalised"


def test_grpo_first_ratios_are_one_in_bf16(tmp_path, good_bad_sft, prompts, monkeypatch):
    """The clipped ratio compares pi_old with the update's forward (autocast, with gradient). In bf16 the
    sampler's log-probs round differently, so GRPO recomputes pi_old with the update's own function: at a
    batch's first minibatch, before any optimiser step, every ratio is 1."""
    from rlhfkit.train.grpo import train_grpo

    seen = []
    real = ops.grpo_loss

    def spy(logp, old_logp, ref_logp, advantages, mask, *a, **k):
        seen.append((logp.detach().float(), old_logp.float(), mask.bool()))
        return real(logp, old_logp, ref_logp, advantages, mask, *a, **k)

    monkeypatch.setattr(ops, "grpo_loss", spy)
    train_grpo(_cfg(GRPOConfig, good_bad_sft, prompts, tmp_path / "grpo", steps=1, minibatch_size=8, mixed_precision="bf16"),
               reward_fn=good_fraction, progress=False)
    assert len(seen) == 2  # two minibatches of 8
    logp, old, m = seen[0]
    assert m.any()
    torch.testing.assert_close(logp[m], old[m], rtol=0, atol=1e-6)
    assert (seen[1][0] - seen[1][1])[seen[1][2]].abs().max() > 1e-4  # after a step the policy has moved (the spy sees it)


def test_rloo_raises_the_reward_with_the_kl_penalty_on(tmp_path, good_bad_sft, prompts):
    from rlhfkit.train.rloo import train_rloo

    out = train_rloo(_cfg(RLOOConfig, good_bad_sft, prompts, tmp_path / "rloo"), reward_fn=good_fraction, progress=False)
    rows = _metrics(out)
    _rises(rows)
    assert rows[0]["kl_coef"] == 0.05 and "pg_grad_variance" not in rows[0]
    # the KL penalty is inside the reward: reward = score - beta * KL (k1, per sequence)
    r = rows[-1]
    assert r["reward"] == pytest.approx(r["score"] - 0.05 * r["kl_k1"], abs=1e-5)


def test_grpo_resume_reproduces_the_uninterrupted_run(tmp_path, good_bad_sft, prompts):
    from rlhfkit.train.grpo import train_grpo

    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say words {i}.", "completion": "good bad"} for i in range(6)])
    kw = dict(grpo_epochs=2, minibatch_size=8, save_every=2, mle_coef=0.1, mle_data=str(refs), mle_batch_size=4,
              grad_variance_samples=2, scale_rewards=False, loss_aggregation="token")
    full = train_grpo(_cfg(GRPOConfig, good_bad_sft, prompts, tmp_path / "full", steps=3, **kw), reward_fn=good_fraction,
                      progress=False)
    part = tmp_path / "part"
    train_grpo(_cfg(GRPOConfig, good_bad_sft, prompts, part, steps=2, **kw), reward_fn=good_fraction, progress=False)
    train_grpo(_cfg(GRPOConfig, good_bad_sft, prompts, part, steps=3, resume=str(part), **kw), reward_fn=good_fraction,
               progress=False)
    rows = _metrics(full)
    assert all(r["grpo_minibatches_done"] == 4 for r in rows) and "pg_grad_variance" in rows[0] and "mle_loss" in rows[0]
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


REWARD_MODULE = """
def good_fraction(prompts, responses):
    return [sum(w == "good" for w in r.split()) / max(len(r.split()), 1) for r in responses]
"""


@pytest.mark.parametrize("command, banner", [("grpo", "GRPO policy written to"), ("rloo", "RLOO policy written to")])
def test_cli_preset_smoke(tmp_path, monkeypatch, prompts, command, banner):
    from rlhfkit.cli import app

    (tmp_path / "grpo_test_reward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / command
    args = [command, "--preset", "smoke", "--prompts", prompts, "--reward-fn", "grpo_test_reward:good_fraction",
            "--out", out, "--steps", "2"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    assert banner in result.output
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["score"] <= 1 for r in rows)
    help_text = CliRunner().invoke(app, [command, "--help"]).output
    flags = ("--clip-eps", "--grpo-epochs", "--kl-coef", "--samples-per-prompt", "--loss-aggregation", "--scale-rewards") \
        if command == "grpo" else ("--kl-coef", "--samples-per-prompt", "--kl-penalty", "--mle-coef")
    for flag in flags + ("--preset",):
        assert flag in help_text, flag


@pytest.mark.parametrize("cls, kw, message", [
    (GRPOConfig, dict(samples_per_prompt=1), "--samples-per-prompt must be >= 2 for GRPO"),
    (GRPOConfig, dict(clip_eps=0.0), "--clip-eps must be in (0, 1)"),
    (GRPOConfig, dict(grpo_epochs=0), "--grpo-epochs (0) and --minibatch-size (16) must be at least 1"),
    (GRPOConfig, dict(adv_eps=0.0), "--adv-eps must be > 0"),
    (GRPOConfig, dict(loss_aggregation="mean"), "--loss-aggregation 'mean': expected one of sequence, token"),
    (GRPOConfig, dict(kl_coef=-0.1), "--kl-coef (-0.1) and --mle-coef (0.0) must be >= 0"),
    (GRPOConfig, dict(reward_fn=None), "a reward is needed"),
    (RLOOConfig, dict(baseline="batch_mean"), "rlhfkit rloo is REINFORCE with the leave_one_out baseline"),
    (RLOOConfig, dict(samples_per_prompt=1), "leave_one_out needs --samples-per-prompt >= 2"),
    (RLOOConfig, dict(kl_penalty="k4"), "--kl-penalty 'k4'"),
])
def test_bad_options_stop_before_any_model_loads(tmp_path, prompts, cls, kw, message):
    from rlhfkit.train.grpo import train_grpo
    from rlhfkit.train.rloo import train_rloo

    train = train_grpo if cls is GRPOConfig else train_rloo
    cfg = _cfg(cls, "does-not-exist", prompts, tmp_path / "o", **{"reward_fn": "tests.x:y", **kw})
    with pytest.raises(ValueError) as e:
        train(cfg, progress=False)
    assert message in str(e.value)


# ---- the pipeline's rloo and grpo stages ----------------------------------------------------------------


def test_rloo_and_grpo_stages_are_off_by_default_and_evaluated_like_the_others(tmp_path):
    import yaml

    from rlhfkit.cli import app
    from rlhfkit.pipeline.config import PipelineConfig

    assert not {"rloo", "grpo"} & set(PipelineConfig().stages.split(","))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["demo", "--preset", "smoke", "--out", str(out),
                                   "--set", "stages=sft,preferences,reward,rloo,grpo,eval"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    w = json.loads((out / "winrates.json").read_text())["methods"]
    assert set(w) == {"initial", "sft", "rloo", "grpo"}
    for m in ("rloo", "grpo"):
        assert {"win_rate", "stderr", "gold_reward", "proxy_reward", "kl", "n"} <= set(w[m]) and w[m]["n"] == 12
        assert len(_metrics(out / m)) == 2
        cfg = yaml.safe_load((out / m / "config.yaml").read_text())
        assert cfg["model"] == str(out / "sft") and cfg["reward_model"] == str(out / "reward")
        assert cfg["prompts"] == str(out / "data" / "unlabeled.jsonl") and cfg["max_new_tokens"] == 8
    md = (out / "report.md").read_text()
    assert "RLOO" in md and "GRPO" in md
