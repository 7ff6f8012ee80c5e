"""Two processes through ``accelerate launch --config_file examples/accelerate/cpu_2proc.yaml`` (torchrun,
CPU, gloo) against one process: each
process gets its share of every global batch, losses and metrics are the global batch's, so 2 processes x
batch b train as 1 process x batch 2b (SFT and the reward model: loss curve and final weights within
1e-4); only the main process writes files; a 2-process checkpoint resumes to the uninterrupted run's
numbers (PPO included: each process's sampling RNG is saved and restored). PPO is not compared with one
process: each process samples with its own generator, so a 2-process batch is not a 1-process batch."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import RewardConfig, SFTConfig
from toy import write_jsonl

HERE = Path(__file__).parent
TOL = 1e-4  # fp32; the processes' gradients are summed in another order than one process's


def _data(work: Path) -> None:
    rng = random.Random(3)
    words = "a fine film with warm funny sad long short music story".split()
    # completions of different lengths: the processes' shares hold different numbers of loss tokens
    write_jsonl(work / "sft.jsonl", [{"prompt": f"Describe film {i}.", "completion": " ".join(rng.choices(words, k=2 + i % 7))}
                                     for i in range(24)])
    rows = []
    for i in range(16):
        resp = [" ".join(rng.choices(words, k=3)) + " wonderful" * q for q in (2, 1, 0)]
        rows.append({"prompt": f"Review {i}.", "responses": resp, "ranking": [0, 1, 2]} if i % 2 else
                    {"prompt": f"Review {i}.", "chosen": resp[0], "rejected": resp[2]})
    write_jsonl(work / "prefs.jsonl", rows)
    write_jsonl(work / "prompts.jsonl", [{"prompt": f"Say words {i}."} for i in range(8)])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate's launcher is not installed")
    from rlhfkit.models import tiny_dir

    tiny_dir()  # made once here, not by two processes at the same time
    work = tmp_path_factory.mktemp("multiprocess")
    _data(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    launcher = str(Path(sys.executable).parent / "accelerate")
    config = HERE.parent / "examples" / "accelerate" / "cpu_2proc.yaml"
    proc = subprocess.run([launcher, "launch", "--config_file", str(config), str(HERE / "multiprocess_driver.py"), str(work)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("NON_MAIN_WRITES ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return work, json.loads(lines[0].split(" ", 1)[1])


def test_two_processes_train_sft_as_one_with_twice_the_batch(two_process_runs, tmp_path):
    from rlhfkit.train.sft import train_sft

    work, _ = two_process_runs
    one = train_sft(SFTConfig(model="tiny", data=str(work / "sft.jsonl"), out=str(tmp_path / "sft1"), max_steps=4,
                              batch_size=4, lr=1e-3, mixed_precision="no", save_every=2), progress=False)
    m1, m2 = _metrics(one), _metrics(work / "sft2")
    assert [m["step"] for m in m2] == [1, 2, 3, 4]
    for a, b in zip(m1, m2):
        assert a["tokens"] == b["tokens"] and abs(a["epoch"] - b["epoch"]) < 1e-12  # the same examples, split
        assert abs(a["loss"] - b["loss"]) < TOL, (a, b)
    assert _max_weight_diff(one, work / "sft2") < TOL


def test_two_processes_train_reward_model_as_one_with_twice_the_batch(two_process_runs, tmp_path):
    from rlhfkit.train.reward import train_reward

    work, _ = two_process_runs
    one = train_reward(RewardConfig(model="tiny", data=str(work / "prefs.jsonl"), out=str(tmp_path / "rm1"), max_steps=4,
                                    batch_size=4, lr=1e-3, eval_fraction=0.25, mixed_precision="no", save_every=2),
                       progress=False)
    m1, m2 = _metrics(one), _metrics(work / "rm2")
    assert len(m2) == 4
    for a, b in zip(m1, m2):
        for k in ("loss", "accuracy", "gap"):
            assert abs(a[k] - b[k]) < TOL, (k, a, b)
    assert _max_weight_diff(one, work / "rm2") < TOL
    e1, e2 = (json.loads((d / "eval.json").read_text()) for d in (one, work / "rm2"))
    assert abs(e1["eval"]["eval_loss"] - e2["eval"]["eval_loss"]) < TOL


def test_only_the_main_process_writes(two_process_runs):
    work, writes = two_process_runs
    assert [w for w in writes if str(work) in w] == []
    # and the main process wrote what a run writes
    for run in ("sft2", "rm2", "ppo2"):
        assert (work / run / "metrics.jsonl").exists() and (work / run / "config.yaml").exists()


def test_resume_from_a_two_process_checkpoint(two_process_runs):
    work, _ = two_process_runs
    assert (work / "sft2_part" / "metrics.jsonl").read_text() == (work / "sft2" / "metrics.jsonl").read_text()
    assert _max_weight_diff(work / "sft2_part", work / "sft2") == 0.0
    # PPO: each process's sampling generator comes back (else both would draw the same samples after a resume)
    state = torch.load(work / "ppo2_part" / "checkpoint-1" / "trainer_state.pt", weights_only=False)
    assert len(state["rng_processes"]) == 2
    assert not torch.equal(state["rng_processes"][0]["generator"], state["rng_processes"][1]["generator"])
    assert (work / "ppo2_part" / "metrics.jsonl").read_text() == (work / "ppo2" / "metrics.jsonl").read_text()
    assert [m["step"] for m in _metrics(work / "ppo2")] == [1, 2]
