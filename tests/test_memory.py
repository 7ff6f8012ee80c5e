"""rlhfkit/memory.py: malloc keeps freed memory, so a block freed and allocated again faults no new pages.

Each check runs in a fresh interpreter: the setting is process-wide and this test process has set it already
(every model load does)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="malloc's options are glibc's")

# 256 MB allocated and freed, then 128 MB: the minor page faults of the second allocation (smaller, so that the
# interpreter's own small allocations, carved from the freed block meanwhile, leave room for it there)
PROBE = """
import resource, torch
from rlhfkit import memory
set_ = memory.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(64 << 20); del x
f = faults(); y = torch.ones(32 << 20)
print(set_, faults() - f)
"""


def probe(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "RLHFKIT_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["RLHFKIT_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    set_, faults = out.stdout.split()
    return set_ == "True", int(faults)


def test_freed_memory_is_reused_without_new_page_faults():
    set_, faults = probe(None)
    assert set_
    assert faults < 1000  # 128 MB is 32,768 pages: those of the freed block served it


def test_opting_out_leaves_glibcs_default():
    set_, faults = probe("0")
    assert not set_
    assert faults > 30_000  # glibc unmapped the block, and the new one faults in every page


def test_loading_a_model_sets_it(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    from rlhfkit.models import RewardModel, load_causal_lm

    load_causal_lm("tiny", trainable=False)
    RewardModel.from_pretrained("tiny")
    assert len(calls) == 2


def test_malloc_bench_runs_both_ways_on_the_tiny_model(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_malloc", Path(__file__).resolve().parents[1] / "bench" / "malloc.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["malloc.py", "--rounds", "1", "--steps", "1", "--model", "tiny", "--fp32"])
    bench.main()
    out = capsys.readouterr().out
    assert "glibc's default" in out and "rlhfkit (keep freed)" in out and "minor faults per run" in out
