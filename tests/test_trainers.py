"""Trainers learn, on the tiny random model: SFT loss falls, the reward model learns a learnable
preference, PPO raises a programmatic reward, resume reproduces an uninterrupted run exactly, and a
malformed line stops a command with FILE:LINE."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.data import DataError
from toy import WORDS, write_jsonl


def good_fraction(prompts, responses):
    """The programmatic reward: the share of words that are 'good'."""
    out = []
    for r in responses:
        w = r.split()
        out.append(sum(x == "good" for x in w) / max(len(w), 1))
    return torch.tensor(out)


@pytest.fixture(scope="session")
def good_bad_sft(tmp_path_factory):
    """The tiny model taught to write random strings of 'good' and 'bad': a policy whose samples
    vary in the programmatic reward, so that PPO has something to choose between."""
    from rlhfkit.train.sft import train_sft

    d = tmp_path_factory.mktemp("sft_goodbad")
    rng = random.Random(0)
    rows = [{"prompt": f"Say words {i}.", "completion": " ".join(rng.choice(WORDS) for _ in range(8))} for i in range(64)]
    data = write_jsonl(d / "sft.jsonl", rows)
    out = train_sft(SFTConfig(model="tiny", data=str(data), out=str(d / "run"), max_steps=40, batch_size=16, lr=1e-2), progress=False)
    return out


def test_sft_loss_falls(tmp_path):
    from rlhfkit.train.sft import train_sft

    rows = [{"prompt": f"Describe film {i}.", "completion": "A warm and funny film with a great cast."} for i in range(32)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = train_sft(SFTConfig(model="tiny", data=str(data), out=str(tmp_path / "sft"), max_steps=12, batch_size=8, lr=5e-3), progress=False)
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()


def test_reward_model_learns_synthetic_preference(tmp_path):
    """Preferred responses carry more 'wonderful's; K=4 rankings -> 6 pairs each."""
    from rlhfkit.models import RewardModel
    from rlhfkit.precision import resolve
    from rlhfkit.scoring import RewardScorer
    from rlhfkit.train.reward import train_reward

    rng = random.Random(1)
    filler = "the movie film plot actor scene music story long short city night".split()
    rows = []
    for i in range(120):
        base = [" ".join(rng.choices(filler, k=6)) for _ in range(4)]
        resp = [b + " wonderful" * q for b, q in zip(base, [3, 2, 1, 0])]
        order = list(range(4))
        rng.shuffle(order)
        responses = [resp[o] for o in order]
        ranking = sorted(range(4), key=lambda j: order[j])
        rows.append({"prompt": f"Review {i}: " + " ".join(rng.choices(filler, k=4)), "responses": responses, "ranking": ranking})
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = train_reward(RewardConfig(model="tiny", data=str(data), out=str(tmp_path / "rm"), epochs=2, lr=3e-3, batch_size=8, eval_fraction=0.2), progress=False)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["eval"]["eval_pairs"] == 24 * 6
    assert ev["eval"]["eval_accuracy"] >= 0.95, ev
    # saved with from_pretrained, normalised so that the data's responses score std 1 (folded into the
    # head) and, centred, mean 0
    rm = RewardModel.from_pretrained(out)
    assert abs(rm.reference_mean - ev["normalization"]["reference_mean"]) < 1e-6
    assert abs(rm.reference_mean - ev["normalization"]["raw_mean"] / ev["normalization"]["raw_std"]) < 1e-5
    scorer = RewardScorer.load(out, center=True)
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [x for r in rows for x in r["responses"]]
    s = scorer(prompts, responses)
    # normalised in the run's precision, scored here in fp32: bf16 (auto on a CPU with native bf16) rounds the raw
    # scores (std ~10 here) to ~3 significant digits, a few thousandths of the normalised scale
    tol = 1e-2 if resolve("auto", "cpu", announce=False) == "bf16" else 1e-3
    assert abs(s.mean().item()) < tol and abs(s.std().item() - 1) < 1e-2
    hi, lo = scorer(["Review x"], ["a film" + " wonderful" * 3]), scorer(["Review x"], ["a film"])
    assert hi.item() > lo.item()


def test_ppo_raises_programmatic_reward(tmp_path, good_bad_sft, monkeypatch):
    from rlhfkit.train.ppo import train_ppo

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say words {i}."} for i in range(64)])
    cfg = PPOConfig(model=str(good_bad_sft), prompts=str(prompts), out=str(tmp_path / "ppo"), steps=25, batch_size=16,
                    minibatch_size=8, ppo_epochs=2, lr=3e-3, max_new_tokens=10, init_kl_coef=0.02, vf_coef=0.1)
    out = train_ppo(cfg, reward_fn=good_fraction, progress=False)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 26))
    # start: the one batch drawn before any update (at lr 3e-3 the score is already up by step 3); end: the last 10
    # steps, since at this lr the toy's score swings by +-0.3 from step to step (seen on an AMD EPYC Zen 3)
    start = rows[0]["score"]
    end = sum(r["score"] for r in rows[-10:]) / 10
    assert 0.2 < start < 0.8, start  # the SFT policy mixes both words
    assert end > start + 0.2 and end > 0.65, (start, end)
    for r in rows:
        for k in ("kl_k1", "kl_k3", "entropy", "policy_loss", "value_loss", "clip_frac", "approx_kl", "explained_var",
                  "response_length", "eos_rate", "kl_coef"):
            assert k in r
        assert r["kl_k3"] is not None and 0 <= r["kl_k3"] < 50
    assert rows[-1]["kl_k1"] > 0.0  # the policy moved away from the reference, and we measured it
    timings = [json.loads(l) for l in (out / "timings.jsonl").read_text().splitlines()]
    assert {"time_generate", "time_reward", "time_ref_values", "time_update", "tokens_per_s"} <= set(timings[0])


def _ppo_cfg(tmp_path, model, out, steps, **kw):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say words {i}."} for i in range(40)])
    return PPOConfig(model=str(model), prompts=str(prompts), out=str(out), steps=steps, batch_size=8, minibatch_size=4,
                     ppo_epochs=2, lr=3e-3, max_new_tokens=8, adaptive_kl=True, kl_target=1.0, kl_horizon=100,
                     save_every=2, **kw)


@pytest.mark.parametrize("lora_r", [0, 8])
def test_ppo_resume_reproduces_uninterrupted_run(tmp_path, good_bad_sft, lora_r):
    from rlhfkit.train.ppo import train_ppo

    full = train_ppo(_ppo_cfg(tmp_path, good_bad_sft, tmp_path / "full", 4, lora_r=lora_r), reward_fn=good_fraction, progress=False)
    part = tmp_path / "part"
    train_ppo(_ppo_cfg(tmp_path, good_bad_sft, part, 2, lora_r=lora_r), reward_fn=good_fraction, progress=False)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 2
    train_ppo(_ppo_cfg(tmp_path, good_bad_sft, part, 4, lora_r=lora_r, resume=str(part)), reward_fn=good_fraction, progress=False)
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


def test_sft_resume_reproduces_uninterrupted_run(tmp_path):
    from rlhfkit.train.sft import train_sft

    rows = [{"prompt": f"Describe film {i}.", "completion": f"A fine film number {i}."} for i in range(24)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    kw = dict(model="tiny", data=str(data), batch_size=4, lr=1e-3, save_every=2)
    full = train_sft(SFTConfig(out=str(tmp_path / "full"), max_steps=4, **kw), progress=False)
    train_sft(SFTConfig(out=str(tmp_path / "part"), max_steps=2, **kw), progress=False)
    part = train_sft(SFTConfig(out=str(tmp_path / "part"), max_steps=4, resume=str(tmp_path / "part"), **kw), progress=False)
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "chosen": "a"}', 'missing "rejected"'),
        ('{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]}', '"ranking" must be a permutation of 0..2'),
        ('{"prompt": 3, "chosen": "a", "rejected": "b"}', '"prompt" must be a string'),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}', '"margin" must be a number'),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_preferences_stop_before_training(tmp_path, line, message):
    from rlhfkit.train.reward import train_reward

    good = '{"prompt": "p", "chosen": "a", "rejected": "b"}'
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join([good, good, line, good]) + "\n")
    with pytest.raises(DataError) as e:
        train_reward(RewardConfig(model="does-not-exist", data=str(path), out=str(tmp_path / "rm")), progress=False)
    assert str(e.value).startswith(f"{path}:3: ")
    assert message in str(e.value)


def test_malformed_sft_and_prompts(tmp_path):
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.train.sft import train_sft

    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"sft.jsonl:2: missing \"completion\""):
        train_sft(SFTConfig(model="does-not-exist", data=str(sft), out=str(tmp_path / "o")), progress=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: \"messages\"\[0\].role must be"):
        train_ppo(PPOConfig(model="does-not-exist", prompts=str(prompts), out=str(tmp_path / "o"), reward_fn="x:y"), progress=False)


def test_reward_model_train_top_layers_freezes_the_rest(tmp_path):
    """train_top_layers=1 of the tiny model's 2: the embeddings and the lower layer keep their starting weights to
    the bit; the top layer, the final norm and the head learn."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import RewardModel, resolve
    from rlhfkit.train.reward import train_reward

    rows = [{"prompt": f"Review {i}:", "chosen": "a wonderful film wonderful", "rejected": "a film"} for i in range(32)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = train_reward(RewardConfig(model="tiny", data=str(data), out=str(tmp_path / "rm"), max_steps=4, lr=1e-2, batch_size=8,
                                    train_top_layers=1, mixed_precision="no"), progress=False)
    start = AutoModelForCausalLM.from_pretrained(resolve("tiny")).model.state_dict()
    rm = RewardModel.from_pretrained(out)
    assert rm.model.score.weight.abs().sum() > 0  # the head starts at zero
    trained = rm.model.model.state_dict()
    assert start.keys() == trained.keys()
    for name, w in start.items():
        same = torch.equal(w, trained[name])
        assert same == (name.startswith("embed_tokens") or name.startswith("layers.0.")), name
