"""PPO's KL bookkeeping: the reference is the model the run was given (also when it is an adapter
folder), the max_kl stop saves a policy whose KL was measured within the budget, and target_kl acts per
minibatch (so it acts with one PPO epoch too)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, SFTConfig
from toy import WORDS, good_fraction, write_jsonl

@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """The tiny model taught strings of 'good'/'bad', fully (a plain folder) and with LoRA (whose
    checkpoint-N/model is an adapter folder: the shape of `rlhfkit sft --lora-r 8 --save-every N`)."""
    from rlhfkit.train.sft import train_sft

    d = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    rows = [{"prompt": f"Say words {i}.", "completion": " ".join(rng.choice(WORDS) for _ in range(8))} for i in range(64)]
    data = write_jsonl(d / "sft.jsonl", rows)
    full = train_sft(SFTConfig(model="tiny", data=str(data), out=str(d / "full"), max_steps=30, batch_size=16, lr=1e-2,
                               mixed_precision="no"), progress=False)
    lora = train_sft(SFTConfig(model="tiny", data=str(data), out=str(d / "lora"), max_steps=10, batch_size=16, lr=2e-2,
                               lora_r=8, save_every=10, mixed_precision="no"), progress=False)
    adapter = lora / "checkpoint-10" / "model"
    assert (adapter / "adapter_config.json").exists()
    return {"full": full, "adapter": adapter}


def _cfg(tmp_path, model, out, **kw):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say words {i}."} for i in range(48)])
    base = dict(model=str(model), prompts=str(prompts), out=str(out), steps=1, batch_size=8, minibatch_size=4,
                ppo_epochs=1, lr=3e-3, max_new_tokens=8, mixed_precision="no")
    base.update(kw)
    return PPOConfig(**base)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora_r", [0, 8])
def test_reference_is_the_adapter_folder_the_run_starts_from(tmp_path, sft_runs, lora_r):
    """Samples drawn before any update come from the reference itself: KL 0. (The bug: with --model an
    adapter folder the reference was "adapters off" = the pre-SFT base; KL k1 0.113 on SmolLM2.)"""
    from rlhfkit.train.ppo import train_ppo

    out = train_ppo(_cfg(tmp_path, sft_runs["adapter"], tmp_path / "ppo", lora_r=lora_r), reward_fn=good_fraction, progress=False)
    first = _metrics(out)[0]
    assert abs(first["kl_k1"]) < 1e-4, first["kl_k1"]
    assert abs(first["kl_k3"]) < 1e-4, first["kl_k3"]


def test_adapter_folder_start_trains_the_merged_model_in_full(tmp_path, sft_runs):
    """lora_r=0 from an adapter folder is full fine-tuning of the function the folder stands for."""
    from rlhfkit.models import is_peft, load_causal_lm

    lm = load_causal_lm(sft_runs["adapter"], lora=None, merge=True)
    assert not is_peft(lm)
    assert all(p.requires_grad for p in lm.parameters())
    frozen = load_causal_lm(sft_runs["adapter"], trainable=False)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(lm(input_ids=ids).logits, frozen(input_ids=ids).logits, atol=1e-5)


def test_max_kl_saves_the_last_policy_measured_within_the_budget(tmp_path, sft_runs):
    """The KL of pi_s is measured on the samples of step s+1. When that passes max_kl, the run stops
    and the saved policy is pi_{s-1} (its KL, measured at step s, was within the budget), not pi_s."""
    from rlhfkit.train.ppo import train_ppo

    max_kl = 0.5
    out = train_ppo(_cfg(tmp_path, sft_runs["full"], tmp_path / "ppo", steps=30, lr=1e-2, ppo_epochs=2, init_kl_coef=0.0,
                         max_kl=max_kl, save_every=1), reward_fn=good_fraction, progress=False)
    rows = _metrics(out)
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert "passed max_kl" in summary["stopped"], (summary, [r["kl_k1"] for r in rows])
    last = rows[-1]
    assert last["updated"] == 0 and last["kl_k1"] > max_kl  # measured, no update made on it
    s = last["step"] - 1  # the policy that drew the last batch: pi_s, over the budget
    saved = summary["saved"]
    assert saved["policy_after_update"] == s - 1 and saved["kl_measured"]
    assert saved["kl_k1"] == pytest.approx(rows[-2]["kl_k1"]) and saved["kl_k1"] <= max_kl
    final = load_file(str(out / "model.safetensors"))
    if s - 1 == 0:
        return  # the start model itself
    kept = load_file(str(out / f"checkpoint-{s - 1}" / "model" / "model.safetensors"))
    over = load_file(str(out / f"checkpoint-{s}" / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], kept[k]) for k in kept)
    assert any(not torch.equal(final[k], over[k]) for k in over)


def test_steps_ending_the_run_say_the_last_policy_kl_was_not_measured(tmp_path, sft_runs):
    from rlhfkit.train.ppo import train_ppo

    out = train_ppo(_cfg(tmp_path, sft_runs["full"], tmp_path / "ppo", steps=2, max_kl=50.0), reward_fn=good_fraction, progress=False)
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["stopped"] == "steps"
    assert summary["saved"] == {**summary["saved"], "policy_after_update": 2, "kl_measured": False, "kl_k1": None}


def test_target_kl_acts_per_minibatch_with_one_epoch(tmp_path, sft_runs):
    """With one PPO epoch the old epoch-end check never acted. Per minibatch, a tiny target stops the
    batch after its first minibatch (approx KL is 0 there, > 0 after one step)."""
    from rlhfkit.train.ppo import train_ppo

    kw = dict(steps=2, batch_size=8, minibatch_size=2, ppo_epochs=1, lr=1e-2)
    free = train_ppo(_cfg(tmp_path, sft_runs["full"], tmp_path / "free", **kw), reward_fn=good_fraction, progress=False)
    assert [r["ppo_minibatches_done"] for r in _metrics(free)] == [4, 4]
    capped = train_ppo(_cfg(tmp_path, sft_runs["full"], tmp_path / "capped", target_kl=1e-12, **kw), reward_fn=good_fraction,
                       progress=False)
    assert [r["ppo_minibatches_done"] for r in _metrics(capped)] == [1, 1]


def test_old_logprobs_and_values_from_sampling_equal_a_recomputation(tmp_path, sft_runs):
    """pi_old's log-probs and values taken from the sampling pass (the CPU engine keeps the hidden states)
    equal those of one more forward pass, so PPO may skip that pass (``old_from_sampling``)."""
    from rlhfkit.train.ppo import PPOTrainer

    cfg = _cfg(tmp_path, sft_runs["full"], tmp_path / "ppo")
    prompts = [f"Say words {i}." for i in range(8)]
    trainer = PPOTrainer(cfg, good_fraction, prompts, progress=False)
    with torch.no_grad():  # a non-zero value head (it starts at zero)
        trainer.unwrapped.value_head.summary.weight.normal_(0, 0.5)
        trainer.unwrapped.value_head.summary.bias.fill_(0.3)
    ro = trainer.sample(prompts)
    assert ro.hidden is not None and ro.hidden.shape[:2] == ro.response_ids.shape
    from_sampling = trainer.score_logprobs_values(ro)
    trainer.cfg.old_from_sampling = False
    recomputed = trainer.score_logprobs_values(ro)
    m = ro.response_mask.bool()
    for a, b in zip(from_sampling, recomputed):
        torch.testing.assert_close(a[m], b[m], rtol=0, atol=1e-4)
    assert from_sampling[1][m].abs().min() > 0  # the values really were compared
