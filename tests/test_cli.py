"""The command line: every command's --help, YAML + flag precedence, usage errors, data errors before any
model loads, `generate`, `ppo --reward-fn`, and resuming a reward-model run. Runs on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import BestOfNConfig, ExpertIterationConfig, PPOConfig, RewardConfig, SFTConfig
from rlhfkit.pipeline.config import PipelineConfig, top_level_fields

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def invoke(*args: str):
    # catch_exceptions=False would hide the exit code of a UsageError; keep the default and show what escaped
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def squash(text: str) -> str:
    """Help text with all whitespace removed: click re-wraps (and may split at hyphens) to the terminal width."""
    return "".join(text.split())


@pytest.fixture
def sft_data(tmp_path) -> Path:
    rows = [{"prompt": f"Describe film {i}.", "completion": f"A fine film number {i}."} for i in range(12)]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


# ---- --help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sft", "reward", "ppo", "generate", "pipeline", "demo", "eval",
                                     "feedback", "data"])
def test_help_of_every_command_exits_0(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and command in result.output


def test_top_level_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for command in ["sft", "reward", "ppo", "best-of-n", "expert-iteration", "generate", "pipeline", "demo", "eval", "feedback", "data"]:
        assert f" {command} " in result.output, command


@pytest.mark.parametrize("command, cls", [("sft", SFTConfig), ("reward", RewardConfig), ("ppo", PPOConfig), ("best-of-n", BestOfNConfig),
                                          ("expert-iteration", ExpertIterationConfig), ("pipeline", PipelineConfig)])
def test_help_lists_every_config_field_with_its_help(command, cls):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = squash(result.output)
    # the pipeline: a flag per top-level option; its sections are the commands above (--set SECTION.OPTION=VALUE)
    for f in (top_level_fields() if cls is PipelineConfig else dataclasses.fields(cls)):
        flag = "--" + f.name.replace("_", "-")
        assert f"{flag} " in result.output or f"{flag}/" in result.output or f"{flag}\n" in result.output, flag
        help_text = f.metadata.get("help", "")
        assert help_text, f"{cls.__name__}.{f.name} has no help text"
        assert squash(help_text) in text, (f.name, help_text)
    if command != "pipeline":
        assert "--config" in result.output


# ---- YAML + flags -------------------------------------------------------------------------------------


def test_sft_yaml_values_used_and_flags_override(tmp_path, sft_data):
    out = tmp_path / "run"
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "tiny", "data": str(sft_data), "out": str(out), "batch_size": 3,
                                        "lr": 1e-3, "seed": 5, "max-completion-tokens": 16}))
    result = invoke("sft", "--config", cfg_file, "--max-steps", 2, "--lr", 0.002)
    assert result.exit_code == 0, (result.output, result.exception)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.002  # the flag beat the file
    assert saved["max_steps"] == 2
    assert (saved["batch_size"], saved["seed"], saved["max_completion_tokens"], saved["model"]) == (3, 5, 16, "tiny")  # from the file
    assert saved["weight_decay"] == SFTConfig.weight_decay  # neither: the default
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(0.002)
    assert (out / "model.safetensors").exists()
    assert f"SFT model written to {out}" in result.output


def test_sft_yaml_unknown_key_is_a_usage_error(tmp_path, sft_data):
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "tiny", "data": str(sft_data), "learning_rate_typo": 0.1}))
    result = invoke("sft", "--config", cfg_file, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "learning_rate_typo" in result.output and "unknown option" in result.output
    assert not (tmp_path / "run").exists()


def test_sft_missing_required_data_is_a_usage_error(tmp_path):
    result = invoke("sft", "--model", "tiny", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "--data" in result.output and "missing required option" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_flag_is_a_usage_error():
    result = invoke("sft", "--learning-rate", "1")
    assert result.exit_code == 2 and "--learning-rate" in result.output


# ---- data errors --------------------------------------------------------------------------------------


def test_malformed_preference_line_exits_2_before_loading_a_model(tmp_path):
    good = '{"prompt": "p", "chosen": "a", "rejected": "b"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good, good, '{"prompt": "p", "chosen": "a"}', good]) + "\n")
    # a model that does not exist: reaching the model would fail with another message
    result = invoke("reward", "--data", bad, "--model", "no-such-model-anywhere", "--out", tmp_path / "rm")
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"error: {bad}:3: " in result.output and 'missing "rejected"' in result.output
    assert "no-such-model-anywhere" not in result.output


def test_missing_model_is_an_error_naming_it(tmp_path):
    """The counterpart of the test above: with good data, the same command fails at the model."""
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    result = invoke("reward", "--data", good, "--model", "no-such-model-anywhere", "--out", tmp_path / "rm")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error: " in result.output and "no-such-model-anywhere" in result.output


# ---- generate -----------------------------------------------------------------------------------------


def test_generate_writes_num_samples_lines_per_prompt(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello there."}, {"messages": [{"role": "user", "content": "Name a film."}]},
                                                 {"prompt": "Say words."}])
    out = tmp_path / "o.jsonl"
    result = invoke("generate", "--model", "tiny", "--prompts", prompts, "--out", out, "--num-samples", 2, "--max-new-tokens", 4)
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert set(r) == {"prompt", "response", "source", "sample"}
        assert isinstance(r["response"], str) and r["source"] == "tiny"
    assert [r["prompt"] for r in rows[:2]] == ["Hello there.", "Hello there."]
    assert [r["prompt"] for r in rows[4:]] == ["Say words.", "Say words."]
    assert [r["sample"] for r in rows] == [0, 1, 0, 1, 0, 1]
    assert "6 responses written" in result.output


# ---- ppo --reward-fn ----------------------------------------------------------------------------------


REWARD_MODULE = '''
import torch

CALLS = []

def count_e(prompts, responses):
    CALLS.append(len(responses))
    return torch.tensor([float(r.count("e")) for r in responses])

NOT_CALLABLE = 3
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    name = f"rlhfkit_test_reward_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_ppo_with_reward_fn_runs_2_steps(tmp_path, reward_module):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say words {i}."} for i in range(8)])
    out = tmp_path / "ppo"
    result = invoke("ppo", "--model", "tiny", "--prompts", prompts, "--reward-fn", f"{reward_module}:count_e", "--out", out,
                    "--steps", 2, "--batch-size", 4, "--minibatch-size", 2, "--ppo-epochs", 1, "--max-new-tokens", 4)
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert sys.modules[reward_module].CALLS == [4, 4]  # our function scored each batch of 4
    assert json.loads((out / "ppo_summary.json").read_text())["steps"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["reward_fn"] == f"{reward_module}:count_e"
    assert (out / "model.safetensors").exists() and (out / "value_head.safetensors").exists()


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "--reward-fn 'no_colon_here': expected 'module:function'"),
    ("{mod}:NOT_CALLABLE", "--reward-fn '{mod}:NOT_CALLABLE': NOT_CALLABLE is not a callable in {mod}"),
    ("{mod}:missing_function", "--reward-fn '{mod}:missing_function': missing_function is not a callable in {mod}"),
    ("rlhfkit_no_such_module_xyz:f", "--reward-fn 'rlhfkit_no_such_module_xyz:f': cannot import 'rlhfkit_no_such_module_xyz'"),
])
def test_ppo_bad_reward_fn_fails_before_any_model_naming_the_spec(tmp_path, reward_module, spec, message):
    spec, message = spec.format(mod=reward_module), message.format(mod=reward_module)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say words."}])
    # a model that does not exist: the spec is checked first
    result = invoke("ppo", "--model", "no-such-model-anywhere", "--prompts", prompts, "--reward-fn", spec, "--out", tmp_path / "ppo")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error: " + message in result.output
    assert not (tmp_path / "ppo").exists()


def test_ppo_bad_reward_fn_is_reported_like_a_usage_problem(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say words."}])
    result = invoke("ppo", "--model", "tiny", "--prompts", prompts, "--reward-fn", "no_colon_here", "--out", tmp_path / "ppo")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error: " in result.output and "no_colon_here" in result.output


# ---- reward-model resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("stop, total", [(2, 4), (10, 12)])  # (10, 12): the held-out eval logged at step 10 survives
def test_reward_resume_reproduces_uninterrupted_run(tmp_path, stop, total):
    from rlhfkit.train.reward import train_reward

    rows = [{"prompt": f"Review {i}.", "responses": [f"great film {i}", f"fine film {i}", f"dull film {i}"], "ranking": [0, 1, 2]}
            for i in range(20)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    kw = dict(model="tiny", data=str(data), batch_size=4, lr=1e-3, save_every=2, eval_fraction=0.2)
    full = train_reward(RewardConfig(out=str(tmp_path / "full"), max_steps=total, **kw), progress=False)
    part = tmp_path / "part"
    train_reward(RewardConfig(out=str(part), max_steps=stop, **kw), progress=False)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == stop
    assert (part / f"checkpoint-{stop}" / "trainer_state.pt").exists()
    train_reward(RewardConfig(out=str(part), max_steps=total, resume=str(part), **kw), progress=False)
    full_rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in full_rows] == list(range(1, total + 1))
    assert [r["step"] for r in full_rows if "eval_accuracy" in r] == [s for s in (10,) if s <= total]
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert (part / "eval.json").read_text() == (full / "eval.json").read_text()
    assert json.loads((full / "eval.json").read_text())["eval"]["eval_pairs"] == 4 * 3


# ---- the installed console script ---------------------------------------------------------------------


def test_console_script_help():
    exe = ROOT / ".venv" / "bin" / "rlhfkit"
    if not exe.exists():
        exe = Path(sys.executable).parent / "rlhfkit"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: rlhfkit" in proc.stdout
    for command in ["sft", "reward", "ppo", "best-of-n", "expert-iteration", "generate", "pipeline", "demo", "eval", "feedback", "data"]:
        assert command in proc.stdout
