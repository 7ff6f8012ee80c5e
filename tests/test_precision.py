"""Precision chosen by the machine: 'auto' takes bf16 only where the device computes it natively."""

import dataclasses
import warnings

import pytest
import torch
import yaml

from rlhfkit import precision
from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.pipeline.config import PipelineConfig, bundled_config_path


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what the oneDNN probe answers."""

    def set_native(value: bool):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: value)

    return set_native


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu_bf16):
    cpu_bf16(True)
    assert precision.native_bf16("cpu")
    assert precision.resolve("auto", "cpu", announce=False) == "bf16"
    assert precision.resolve_bf16(None, "cpu", announce=False) is True


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_bf16):
    cpu_bf16(False)
    assert not precision.native_bf16("cpu")
    assert precision.resolve("auto", "cpu", announce=False) == "no"
    assert precision.resolve_bf16(None, "cpu", announce=False) is False
    assert precision.resolve_bf16("auto", "cpu", announce=False) is False


def test_explicit_bf16_without_native_support_warns_and_is_honoured(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert precision.resolve("bf16", "cpu", announce=False) == "bf16"
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("bf16", "cpu", announce=False) == "bf16"
        assert precision.resolve("no", "cpu", announce=False) == "no"
        assert precision.resolve(False, "cpu", announce=False) == "no"


def test_the_choice_is_said_once(cpu_bf16, capsys, monkeypatch):
    monkeypatch.setattr(precision, "_announced", set())
    cpu_bf16(False)
    precision.resolve("auto", "cpu")
    precision.resolve("auto", "cpu")
    err = capsys.readouterr().err
    assert err.count("precision: fp32 (this CPU has no native bf16)") == 1


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="use one of auto, no, bf16, fp16"):
        precision.resolve("float8", "cpu", announce=False)


def test_every_command_and_the_demo_default_to_auto():
    for cls in (SFTConfig, RewardConfig, PPOConfig):
        assert {f.name: f.default for f in dataclasses.fields(cls)}["mixed_precision"] == "auto"
    assert PipelineConfig().bf16 is None
    demo = yaml.safe_load(bundled_config_path().read_text())
    assert "bf16" not in demo


def test_trainers_resolve_auto_in_place(cpu_bf16):
    from rlhfkit.train.common import resolve_config_precision

    cpu_bf16(False)
    cfg = SFTConfig(data="x.jsonl")
    assert resolve_config_precision(cfg) == "no" and cfg.mixed_precision == "no"
    cpu_bf16(True)
    cfg = SFTConfig(data="x.jsonl")
    assert resolve_config_precision(cfg) == "bf16"


def test_pipeline_context_follows_the_probe(cpu_bf16, tmp_path, monkeypatch):
    from rlhfkit.pipeline.stages import Context

    monkeypatch.setenv("RLHFKIT_DEVICE", "cpu")
    for native in (False, True):
        cpu_bf16(native)
        ctx = Context(PipelineConfig(out=str(tmp_path / f"run{native}"), model="tiny"), progress=False)
        assert ctx.cfg.bf16 is native
        assert ctx.mp == ("bf16" if native else "no")
    cpu_bf16(True)
    ctx = Context(PipelineConfig(out=str(tmp_path / "forced"), model="tiny", bf16=False), progress=False)
    assert ctx.cfg.bf16 is False
