"""Non-finite losses and rewards (issue 13, part 2): every trainer skips the update of a step whose loss or
reward is NaN/inf with a warning naming the step, stops with a clear error after max_nonfinite_steps such
updates in a row, and never writes a checkpoint (or final model) holding non-finite weights."""

from __future__ import annotations

import math
import random

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import DPOConfig, GRPOConfig, PPOConfig, ReinforceConfig, RewardConfig, RLOOConfig, SFTConfig
from rlhfkit.train.run import NonFiniteError, NonFiniteWarning
from toy import WORDS, write_jsonl


def _words(rng, n=6):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonfinite")
    rng = random.Random(0)
    sft = write_jsonl(d / "sft.jsonl", [{"prompt": f"Say words {i}.", "completion": _words(rng)} for i in range(16)])
    pairs = write_jsonl(d / "pairs.jsonl", [{"prompt": f"Say words {i}.", "chosen": _words(rng), "rejected": _words(rng)}
                                            for i in range(12)])
    prompts = write_jsonl(d / "prompts.jsonl", [{"prompt": f"Say words {i}."} for i in range(16)])
    return {"sft": str(sft), "pairs": str(pairs), "prompts": str(prompts)}


class NaNOn:
    """Wraps a loss function (or a reward): its result times NaN on the calls numbered in ``calls`` (1-based)."""

    def __init__(self, fn, calls, index=None):
        self.fn, self.calls, self.index, self.n = fn, set(calls), index, 0

    def __call__(self, *a, **kw):
        self.n += 1
        out = self.fn(*a, **kw)
        if self.n not in self.calls:
            return out
        if self.index is None:
            return out * float("nan") if isinstance(out, torch.Tensor) else torch.full((len(a[1]),), float("nan"))
        return (out[0] * float("nan"),) + tuple(out[1:])


def _run(name, tmp_path, data, monkeypatch, nan_calls, **kw):
    """Train ``name`` on the tiny model for 3 steps with a checkpoint each step, NaN injected on the loss
    (or reward) calls in ``nan_calls``. Returns the run directory."""
    import rlhfkit.train.dpo as dpo
    import rlhfkit.train.reward as reward
    import rlhfkit.train.sft as sft

    out = str(tmp_path / name)
    common = dict(model="tiny", out=out, save_every=1, mixed_precision="no", lr=1e-2, **kw)
    pg = dict(prompts=data["prompts"], steps=3, batch_size=2, max_new_tokens=4)
    if name == "sft":
        monkeypatch.setattr(sft, "sft_loss", NaNOn(sft.sft_loss, nan_calls))
        return sft.train_sft(SFTConfig(data=data["sft"], max_steps=3, batch_size=4, **common), progress=False)
    if name == "reward":
        monkeypatch.setattr(reward, "batch_loss", NaNOn(reward.batch_loss, nan_calls, index=0))
        return reward.train_reward(RewardConfig(data=data["pairs"], max_steps=3, batch_size=2, eval_fraction=0.0, **common),
                                   progress=False)
    if name == "dpo":
        monkeypatch.setattr(dpo, "batch_loss", NaNOn(dpo.batch_loss, nan_calls, index=0))
        return dpo.train_dpo(DPOConfig(data=data["pairs"], max_steps=3, batch_size=2, eval_fraction=0.0, **common), progress=False)
    reward_fn = NaNOn(lambda prompts, responses: torch.tensor([len(r) / 10 for r in responses]), nan_calls)  # varies: the tiny model writes no 'good'
    if name == "ppo":
        from rlhfkit.train.ppo import train_ppo

        return train_ppo(PPOConfig(minibatch_size=2, **pg, **common), reward_fn=reward_fn, progress=False)
    from rlhfkit.train.grpo import train_grpo
    from rlhfkit.train.reinforce import train_reinforce
    from rlhfkit.train.rloo import train_rloo

    train, cls = {"reinforce": (train_reinforce, ReinforceConfig), "rloo": (train_rloo, RLOOConfig),
                  "grpo": (train_grpo, GRPOConfig)}[name]
    return train(cls(samples_per_prompt=2, minibatch_size=4, **pg, **common), reward_fn=reward_fn, progress=False)


def _weights(ckpt):
    return load_file(str(ckpt / "model" / "model.safetensors"))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "ppo", "reinforce", "grpo"])  # rloo: reinforce's code
def test_a_non_finite_step_is_skipped_with_a_warning_naming_it(name, tmp_path, data, monkeypatch):
    """NaN in the loss (sft, reward, dpo) or the reward (ppo, reinforce, grpo) of step 2: no update
    at step 2 (checkpoint-2 holds checkpoint-1's weights), the others update, the run ends normally."""
    with pytest.warns(NonFiniteWarning, match=r"step 2\b.*non-finite (loss|reward).*update skipped") as record:
        out = _run(name, tmp_path, data, monkeypatch, nan_calls=[2])
    assert len([w for w in record if w.category is NonFiniteWarning]) == 1
    w1, w2, w3 = (_weights(out / f"checkpoint-{s}") for s in (1, 2, 3))
    assert _same(w1, w2), "step 2 updated the weights"
    assert not _same(w2, w3), "step 3 made no update"
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(out / "model.safetensors")).values())


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_max_nonfinite_steps_in_a_row_stop_the_run_with_a_clear_error(name, tmp_path, data, monkeypatch):
    with pytest.warns(NonFiniteWarning, match="step 2"), pytest.raises(NonFiniteError) as e:
        _run(name, tmp_path, data, monkeypatch, nan_calls=[2, 3], max_nonfinite_steps=2)
    msg = str(e.value)
    assert "step 3" in msg and "2 updates in a row" in msg and "max_nonfinite_steps 2" in msg and name in msg
    out = tmp_path / name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "model.safetensors").exists()  # no final model


def test_a_finite_step_resets_the_count(tmp_path, data, monkeypatch):
    """Steps 1 and 3 non-finite, 2 fine: never 2 in a row, so max_nonfinite_steps 2 does not stop the run."""
    with pytest.warns(NonFiniteWarning):
        out = _run("sft", tmp_path, data, monkeypatch, nan_calls=[1, 3], max_nonfinite_steps=2)
    assert (out / "model.safetensors").exists()


def test_a_ppo_minibatch_with_a_non_finite_loss_makes_no_update(tmp_path, data, monkeypatch):
    """The loss of PPO's minibatches at step 2 is NaN (the reward is fine): both skipped, named by step
    and minibatch, and no weight (policy or value head) moves at step 2."""
    from rlhfkit import ops

    calls = {"n": 0}
    real = ops.ppo_policy_loss

    def policy_loss(*a, **kw):
        calls["n"] += 1
        loss, clip = real(*a, **kw)
        return (loss * float("nan") if calls["n"] in (3, 4) else loss), clip  # 2 minibatches a step

    monkeypatch.setattr(ops, "ppo_policy_loss", policy_loss)
    with pytest.warns(NonFiniteWarning, match=r"step 2 \(epoch 1, minibatch [12]\): non-finite loss") as record:
        out = _run("ppo", tmp_path, data, monkeypatch, nan_calls=[])
    assert len([w for w in record if w.category is NonFiniteWarning]) == 2
    assert _same(_weights(out / "checkpoint-1"), _weights(out / "checkpoint-2"))
    heads = [load_file(str(out / f"checkpoint-{s}" / "value_head.safetensors")) for s in (1, 2)]
    assert _same(*heads)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from rlhfkit.train.run import TrainingRun

    run = TrainingRun(SFTConfig(model="tiny", data="unused.jsonl", out=str(tmp_path / "run"), save_every=1,
                                mixed_precision="no"), "SFT", progress=False)
    w = torch.nn.Parameter(torch.tensor([1.0, math.inf]))
    run.track(torch.optim.AdamW([w]), save=lambda ckpt: (ckpt / "model").mkdir())
    with pytest.raises(NonFiniteError, match="checkpoint-1 not written"):
        run.checkpoint(1)
    with pytest.raises(NonFiniteError, match="final model"):
        run.finish(lambda out: (out / "model.safetensors").write_text("x"))
    assert not list((tmp_path / "run").glob("*checkpoint-1*")) and not (tmp_path / "run" / "model.safetensors").exists()
