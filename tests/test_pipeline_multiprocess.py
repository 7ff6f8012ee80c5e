"""The smoke pipeline on two processes (``accelerate launch --config_file examples/accelerate/cpu_2proc.yaml
-m rlhfkit.cli demo --preset smoke``, CPU, gloo): it finishes; only the main process writes, and each of the
pipeline's files once; the sampling stages, which split their prompts between the processes, draw what one
process draws for the same models (each sample row keeps its own random stream), so that one process
rerunning preferences, best-of-n, expert iteration's first sampling and the evaluation on the two-process
run's models writes the same files byte for byte (the KL column within float rounding: each process's
share is sampled and scored in batches of its own), and a winrates.json of the same methods and counts.
The scoring passes (the panel's fluency, the reward model) are split too, cut at their batch size: the
gold, proxy and best-of-n score columns are one process's to the last bit, not merely within 1e-5."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
STAGES = ("sft", "preferences", "reward", "ppo", "best_of_n", "expert_iteration", "eval")
METHODS = ("initial", "sft", "ppo", "best_of_n")  # those whose models the rerun below shares with the 2-process run


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate's launcher is not installed")
    from rlhfkit.models import tiny_dir

    tiny_dir()  # made once here, not by two processes at the same time
    run = tmp_path_factory.mktemp("pipeline2") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    launcher = str(Path(sys.executable).parent / "accelerate")
    config = HERE.parent / "examples" / "accelerate" / "cpu_2proc.yaml"
    log = run.parent / "writes"
    proc = subprocess.run([launcher, "launch", "--config_file", str(config), str(HERE / "pipeline_multiprocess_driver.py"),
                           str(run), str(log)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    writes = {rank: json.loads(Path(f"{log}.{rank}.json").read_text()) for rank in (0, 1)}
    parts = {rank: json.loads(Path(f"{log}.{rank}.parts.json").read_text()) for rank in (0, 1)}
    return run, writes, proc.stdout, parts


def test_two_process_smoke_pipeline_finishes_and_only_the_main_process_writes(two_process_run):
    run, writes, stdout, _ = two_process_run
    assert all((run / "stages" / f"{s}.done").exists() for s in STAGES)
    assert stdout.count("== sft") == 1 and stdout.count("Win-rate against Initial") == 1  # one process echoes
    assert writes[1] == [], writes[1][:10]  # the other process wrote, renamed, made or removed nothing in the run
    # the main process wrote each of the pipeline's files once (each is written to a temporary name, then renamed)
    renamed = [e[2] for e in writes[0] if e[0] in ("os.rename", "os.replace")]  # os.replace audits as os.rename
    files = ["pipeline.yaml", "prefs/rankings.jsonl", "prefs/agreement.json", "best_of_n/candidates.jsonl",
             "best_of_n/responses.jsonl", "expert_iteration/round-1.jsonl", "expert_iteration/round-2.jsonl",
             "winrates.json", "report.md", *(f"samples/{m}.jsonl" for m in (*METHODS, "expert_iteration")),
             *(f"stages/{s}.done" for s in STAGES)]
    assert {f: renamed.count(str(run / f)) for f in files} == dict.fromkeys(files, 1)
    # timings.json: once after each stage and once at the end, by the main process alone
    assert renamed.count(str(run / "timings.json")) == len(STAGES) + 1


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sharded_sampling_stages_draw_what_one_process_draws(two_process_run, tmp_path):
    from rlhfkit.pipeline.config import bundled_config_path, load_pipeline_config, preset_overrides
    from rlhfkit.pipeline.stages import run_pipeline

    two, _, _, _ = two_process_run
    one = tmp_path / "run"
    shutil.copytree(two, one)
    for f in ("prefs/rankings.jsonl", "best_of_n/candidates.jsonl", "expert_iteration/round-1.jsonl", "winrates.json"):
        (one / f).unlink()  # rewritten by this one-process rerun (on the 2-process run's SFT, reward and PPO models)
    cfg = load_pipeline_config(bundled_config_path(), preset_overrides("smoke"),
                               {"out": str(one), "stages": "preferences,best_of_n,expert_iteration,eval"})
    run_pipeline(cfg, progress=False, echo=lambda *a: None)
    for f in ("prefs/rankings.jsonl", "prefs/agreement.json", "best_of_n/candidates.jsonl", "expert_iteration/round-1.jsonl"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    for m in METHODS:
        a, b = _rows(one / "samples" / f"{m}.jsonl"), _rows(two / "samples" / f"{m}.jsonl")
        assert [{k: v for k, v in r.items() if k != "kl"} for r in a] == [{k: v for k, v in r.items() if k != "kl"} for r in b], m
        assert max(abs(x["kl"] - y["kl"]) for x, y in zip(a, b)) < 1e-4, m
    w1, w2 = json.loads((one / "winrates.json").read_text()), json.loads((two / "winrates.json").read_text())
    assert sorted(w1["methods"]) == sorted(w2["methods"]) == sorted((*METHODS, "expert_iteration"))
    assert {m: (r["n"], r["samples"]) for m, r in w1["methods"].items()} == {m: (r["n"], r["samples"]) for m, r in w2["methods"].items()}
    for m in METHODS:  # expert iteration's round-1 SFT trained on 2 processes there: another model
        r1, r2 = w1["methods"][m], w2["methods"][m]
        assert {k: v for k, v in r1.items() if k != "kl"} == {k: v for k, v in r2.items() if k != "kl"}, m
        assert abs(r1["kl"] - r2["kl"]) < 1e-4, m


def test_scoring_passes_are_split_between_the_processes(two_process_run):
    """The eval's forward passes of judging and scoring (the panel's fluency under the initial model, the
    reward model's proxy) ran in two parts, one per process, cut at their batch size (64), that together
    cover every item once; the rerun above finds their gold and proxy columns equal to one process's."""
    _, _, _, parts = two_process_run
    assert [p[:2] for p in parts[0]] == [p[:2] for p in parts[1]]  # the same calls, on the same items, in order
    for (what, n, lo0, hi0), (_, _, lo1, hi1) in zip(parts[0], parts[1]):
        assert (lo0, hi0, hi1) == (0, lo1, n) and lo1 % 64 == 0, what
    split = {what for (what, n, _, _), (_, _, lo1, hi1) in zip(parts[0], parts[1]) if 0 < lo1 < hi1}
    assert {"InitialModelFluency._score", "score_on_processes.<locals>.<lambda>"} <= split, parts[0]
