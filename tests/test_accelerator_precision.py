"""Trainers run one after another in one process may ask for different precisions (on a CPU with native bf16,
``auto`` is bf16 while a run can ask for fp32): accelerate's process-wide state must not refuse the second."""

from __future__ import annotations

import warnings

from rlhfkit.config import SFTConfig
from rlhfkit.train.common import make_accelerator


def test_accelerators_of_different_precisions_in_one_process():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an explicit bf16 on a CPU without it warns
        first = make_accelerator(SFTConfig(model="tiny", data="unused.jsonl", mixed_precision="bf16"))
    assert first.mixed_precision == "bf16"
    second = make_accelerator(SFTConfig(model="tiny", data="unused.jsonl", mixed_precision="no"))
    assert second.mixed_precision == "no"
    third = make_accelerator(SFTConfig(model="tiny", data="unused.jsonl", mixed_precision="no"))
    assert third.mixed_precision == "no" and third.device == second.device
