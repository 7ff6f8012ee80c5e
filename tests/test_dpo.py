"""DPO: ops.dpo_loss (with cDPO label smoothing and pair weights) against a naive float64 loop, rankings
turned into pairs, bad input refused before any model loads, learning on held-out pairs of a learnable toy,
resume, LoRA's reference, `rlhfkit dpo --preset smoke`, and the pipeline's dpo stage. Tiny model, seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlhfkit import ops
from rlhfkit.cli import app
from rlhfkit.config import DPOConfig
from rlhfkit.data import DataError
from toy import write_jsonl

F64 = torch.float64


# ---- the loss against a naive loop ----------------------------------------------------------------------


def naive_dpo(pc, pr, rc, rr, beta, eps, weight=None):
    """Per pair with Python floats and math: h = (pc - rc) - (pr - rr),
    l = (1 - eps) * -log sigmoid(beta h) + eps * -log sigmoid(-beta h); weighted mean."""
    losses, chosen, rejected = [], [], []
    for i in range(len(pc)):
        c, r = beta * (float(pc[i]) - float(rc[i])), beta * (float(pr[i]) - float(rr[i]))
        z = c - r
        nls = lambda x: math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))  # -log sigmoid(x)
        losses.append((1 - eps) * nls(z) + eps * nls(-z))
        chosen.append(c)
        rejected.append(r)
    w = [1.0] * len(pc) if weight is None else [float(x) for x in weight]
    return sum(l * x for l, x in zip(losses, w)) / sum(w), chosen, rejected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("weighted", [False, True])
def test_dpo_loss_equals_the_naive_reference(seed, beta, eps, weighted):
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-(torch.randn(7, generator=g, dtype=F64) * 20).abs() for _ in range(4))  # large gaps too
    weight = ops.prompt_weights(torch.tensor([0, 0, 0, 1, 2, 2, 3])).to(F64) if weighted else None
    before = [t.clone() for t in (pc, pr, rc, rr)]
    loss, chosen, rejected = ops.dpo_loss(pc, pr, rc, rr, beta, eps, weight=weight)
    ref_loss, ref_c, ref_r = naive_dpo(pc, pr, rc, rr, beta, eps, weight)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(chosen, torch.tensor(ref_c, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(rejected, torch.tensor(ref_r, dtype=F64), rtol=0, atol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip((pc, pr, rc, rr), before))  # inputs untouched


def test_dpo_label_smoothing_by_hand_and_its_limits():
    # h = (-1 - -2) - (-3 - -2) = 2, beta 0.5: z = 1; eps 0.25: 0.75 ln(1 + e^-1) + 0.25 ln(1 + e)
    t = lambda x: torch.tensor([x], dtype=F64)
    loss, _, _ = ops.dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.25)
    assert loss.item() == pytest.approx(0.75 * math.log1p(math.exp(-1)) + 0.25 * math.log1p(math.e), abs=1e-12)
    # the smoothed loss is minimised at a finite margin: its gradient vanishes at z = log((1 - eps) / eps)
    z = torch.tensor([math.log(0.75 / 0.25)], dtype=F64, requires_grad=True)
    ops.dpo_loss(z, torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), 1.0, 0.25)[0].backward()
    assert abs(z.grad.item()) < 1e-12
    for bad in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match="label_smoothing"):
            ops.dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), label_smoothing=bad)


# ---- data: rankings -> pairs, bad input ---------------------------------------------------------------------


def test_rankings_become_all_their_pairs(tmp_path):
    from rlhfkit.train.dpo import load_pairs, pair_index
    from rlhfkit.train.reward import group_pairs

    data = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Review A.", "responses": ["ok", "best", "worst"], "ranking": [1, 0, 2]},
        {"prompt": "Review B.", "chosen": "yes", "rejected": "no"},
        {"prompt": "Review C.", "chosen": "same", "rejected": "same"},  # no signal: dropped
    ])
    pairs, dropped = load_pairs(str(data))
    assert dropped == 1
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Review A.", "best", "ok"), ("Review A.", "best", "worst"), ("Review A.", "ok", "worst"), ("Review B.", "yes", "no")]
    keys, ci, ri, owner = pair_index(group_pairs(pairs))
    assert len(keys) == 5  # the ranking's 3 pairs need its 3 responses only
    assert [keys[i][1] for i in ci] == ["best", "best", "ok", "yes"] and [keys[i][1] for i in ri] == ["ok", "worst", "worst", "no"]
    assert owner == [0, 0, 0, 1]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "permutation"),
    ({"prompt": "p", "chosen": "a"}, "rejected"),
    ({"responses": ["a", "b"], "ranking": [0, 1]}, "prompt"),
])
def test_bad_preference_lines_stop_before_any_model_loads(tmp_path, row, message):
    from rlhfkit.train.dpo import train_dpo

    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    # a model that does not exist: the data error must come first
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: .*{message}"):
        train_dpo(DPOConfig(model=str(tmp_path / "no-model"), data=str(data), out=str(tmp_path / "out")), progress=False)


@pytest.mark.parametrize("option, value", [("beta", 0.0), ("label_smoothing", 0.5), ("batch_size", 0)])
def test_bad_options_are_refused_by_name(tmp_path, option, value):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    res = CliRunner().invoke(app, ["dpo", "--preset", "smoke", "--data", str(data), "--out", str(tmp_path / "o"),
                                   f"--{option.replace('_', '-')}", str(value)])
    assert res.exit_code == 2 and f"--{option.replace('_', '-')}" in res.output, res.output
    res = CliRunner().invoke(app, ["dpo", "--preset", "smoke", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--data" in res.output  # the preset does not name data


# ---- learning ----------------------------------------------------------------------------------------


def toy_prefs(tmp_path: Path, n: int = 24) -> Path:
    """A learnable toy: the preferred answer always praises the film, the other pans it; rankings of 3 and
    pairs, mixed. What is learned must carry over to the held-out prompts (other titles)."""
    rows = []
    for i in range(n):
        prompt = f"Review the film number {i}."
        good, fine, bad = f"a great great film {i}", f"an ok film {i}", f"a dull dull film {i}"
        if i % 2:
            rows.append({"prompt": prompt, "responses": [bad, good, fine], "ranking": [1, 2, 0]})
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return write_jsonl(tmp_path / "prefs.jsonl", rows)


def smoke_kw(tmp_path: Path, **kw) -> dict:
    """The smoke preset's options on the toy, a quarter of the prompts held out; ``out`` only when given."""
    preset = {k: v for k, v in DPOConfig.presets["smoke"].items() if k != "out"}
    return {**preset, "data": str(toy_prefs(tmp_path)), "eval_fraction": 0.25, **kw}


def test_dpo_raises_the_held_out_margin_on_a_learnable_toy(tmp_path):
    from rlhfkit.train.dpo import train_dpo

    out = train_dpo(DPOConfig(**smoke_kw(tmp_path, out=str(tmp_path / "dpo"), max_steps=12, eval_every=4)), progress=False)
    ev = json.loads((out / "eval.json").read_text())
    held, ref = ev["eval"], ev["reference"]
    assert held["eval_prompts"] == 6 and held["eval_pairs"] > 6  # 6 of 24 prompts held out, rankings among them
    # the policy's log-prob margin chosen - rejected on pairs it never trained on rises well above the reference's
    assert held["eval_logp_margin"] > ref["eval_logp_margin"] + 1.0, ev
    assert held["eval_accuracy"] >= 0.9 and held["eval_reward_margin"] > 0 and held["eval_loss"] < math.log(2)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"loss", "accuracy", "reward_margin", "reward_chosen", "reward_rejected", "logp_margin", "lr"} <= set(rows[0])
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [4, 8, 12]
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # the first batch: policy == reference
    assert rows[-1]["loss"] < rows[0]["loss"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["pairs"] == 12 * 1 + 12 * 3 and info["train_groups"] == 18
    assert (out / "config.json").exists()  # a model folder: `--model` and the pipeline's eval load it


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    from rlhfkit.train.dpo import train_dpo

    kw = smoke_kw(tmp_path, save_every=2, eval_every=2)
    full = train_dpo(DPOConfig(**{**kw, "out": str(tmp_path / "full"), "max_steps": 4}), progress=False)
    part = tmp_path / "part"
    train_dpo(DPOConfig(**{**kw, "out": str(part), "max_steps": 2}), progress=False)
    assert (part / "checkpoint-2" / "trainer_state.pt").exists()
    train_dpo(DPOConfig(**{**kw, "out": str(part), "max_steps": 4, "resume": str(part)}), progress=False)
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert (part / "eval.json").read_text() == (full / "eval.json").read_text()


def test_lora_reference_is_the_model_with_adapters_off(tmp_path):
    from rlhfkit.models import LoraSettings, load_causal_lm, load_tokenizer
    from rlhfkit.train.dpo import reference_logps, train_dpo

    keys = [("Review the film number 1.", "a great film"), ("Review the film number 1.", "a dull film"), ("Other.", "x")]
    cfg = DPOConfig(**smoke_kw(tmp_path, out=str(tmp_path / "unused")))
    tok = load_tokenizer("tiny")
    frozen = reference_logps(load_causal_lm("tiny", trainable=False), tok, keys, cfg, "cpu", False)
    peft = load_causal_lm("tiny", lora=LoraSettings(r=4))
    with torch.no_grad():  # adapters that are not a no-op: "off" must really take them out
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    adapters_off = reference_logps(peft, tok, keys, cfg, "cpu", False)
    assert adapters_off == pytest.approx(frozen, abs=1e-5)
    out = train_dpo(DPOConfig(**smoke_kw(tmp_path, out=str(tmp_path / "lora"), lora_r=4, lr=3e-3, max_steps=4)), progress=False)
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()  # merged


def test_help_lists_every_option_and_the_preset():
    import dataclasses

    res = CliRunner().invoke(app, ["dpo", "--help"])
    assert res.exit_code == 0, res.output
    text = "".join(res.output.split())
    assert "--preset" in res.output and "smoke" in res.output and "--config" in res.output
    for f in dataclasses.fields(DPOConfig):
        assert "--" + f.name.replace("_", "-") in res.output and "".join(f.metadata["help"].split()) in text, f.name
    assert " dpo " in CliRunner().invoke(app, ["--help"]).output


def test_cli_smoke_preset(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["dpo", "--preset", "smoke", "--data", str(toy_prefs(tmp_path)), "--out", str(out),
                                   "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert "held-out: accuracy" in res.output and "DPO policy written to" in res.output
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert cfg["model"] == "tiny" and cfg["max_steps"] == 3 and cfg["beta"] == DPOConfig.presets["smoke"]["beta"]  # flag > preset


# ---- the pipeline's dpo stage -------------------------------------------------------------------------


def test_dpo_stage_is_off_by_default_and_evaluated_like_the_others(tmp_path):
    from rlhfkit.pipeline.config import PipelineConfig

    assert "dpo" not in PipelineConfig().stages.split(",")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["demo", "--preset", "smoke", "--out", str(out),
                                   "--set", "stages=sft,preferences,reward,dpo,eval"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "DPO held-out implicit-reward accuracy" in res.output
    w = json.loads((out / "winrates.json").read_text())["methods"]
    assert set(w) == {"initial", "sft", "dpo"}
    assert {"win_rate", "stderr", "gold_reward", "proxy_reward", "kl", "n"} <= set(w["dpo"]) and w["dpo"]["n"] == 12
    rows = [json.loads(l) for l in (out / "samples" / "dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"response", "gold", "proxy", "kl", "outcome", "reference_response"} <= set(rows[0])
    dpo_cfg = __import__("yaml").safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["model"] == str(out / "sft") and dpo_cfg["data"] == str(out / "prefs" / "rankings.jsonl")
    assert "DPO" in (out / "report.md").read_text()
