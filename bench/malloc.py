"""What keeping freed memory in the process saves (``rlhfkit/memory.py``): ``bench/rl_step.py`` run in a fresh
process with malloc as glibc sets it (``RLHFKIT_KEEP_FREED_MEMORY=0``) and with rlhfkit's setting, alternated
A B B A ..., printing each run's seconds per PPO step by phase, its minor page faults, system time and peak resident memory.

    .venv/bin/python bench/malloc.py [--rounds 2] [--steps 2] [--model smollm2-135m] [--bf16 | --fp32]

Precision: the machine's ``auto`` choice unless given. Each run loads the model and takes a warm-up step before
the measured steps (rl_step.py); the faults, system time and peak memory are the whole process's, loading included.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from precision import cpu_flags, cpu_model  # noqa: E402

PHASES = ("total", "generation", "reference+values", "update")


def run_once(keep: bool, steps: int, bf16: bool, model: str = "smollm2-135m") -> dict:
    """One rl_step.py process: its seconds per phase, and its own minor faults, system seconds and peak memory."""
    env = dict(os.environ, RLHFKIT_KEEP_FREED_MEMORY="1" if keep else "0")
    cmd = [sys.executable, str(HERE / "rl_step.py"), "--steps", str(steps), "--model", model] + (["--bf16"] if bf16 else [])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    line = next(l for l in stdout.splitlines() if l.startswith("seconds per PPO step"))
    values = {p: float(re.search(rf"{re.escape(p)} (\d+\.\d+)", line).group(1)) for p in PHASES}
    values.update(faults=usage.ru_minflt, sys_s=usage.ru_stime, peak_gb=usage.ru_maxrss / 2**20)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (one each way), alternated A B B A")
    ap.add_argument("--steps", type=int, default=2, help="measured PPO steps per run (after a warm-up step)")
    ap.add_argument("--model", default="smollm2-135m")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--bf16", action="store_true", help="bf16 autocast (default: where the CPU has native bf16)")
    prec.add_argument("--fp32", action="store_true")
    args = ap.parse_args()

    from rlhfkit.precision import native_bf16

    bf16 = args.bf16 or (not args.fp32 and native_bf16("cpu"))
    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}; precision: {'bf16' if bf16 else 'fp32'}; "
          f"bench/rl_step.py --model {args.model} --steps {args.steps} (32 prompts x 32 new tokens) per run")
    rows = {False: [], True: []}
    print(f"{'malloc':<22} " + " ".join(f"{p:>17}" for p in PHASES) + f" {'minor faults':>13} {'system s':>9} {'peak GB':>8}")
    for r in range(args.rounds):
        for keep in ((False, True) if r % 2 == 0 else (True, False)):
            v = run_once(keep, args.steps, bf16, args.model)
            rows[keep].append(v)
            name = "rlhfkit (keep freed)" if keep else "glibc's default"
            print(f"{name:<22} " + " ".join(f"{v[p]:>17.2f}" for p in PHASES) + f" {v['faults']:>13,} {v['sys_s']:>9.1f} {v['peak_gb']:>8.2f}", flush=True)
    mean = {k: {p: sum(v[p] for v in rows[k]) / len(rows[k]) for p in PHASES + ("faults", "sys_s", "peak_gb")} for k in rows}
    print("mean s/step: " + ", ".join(f"{p} {mean[False][p]:.2f} -> {mean[True][p]:.2f} ({mean[False][p] / mean[True][p]:.2f}x)"
                                       for p in PHASES))
    print(f"minor faults per run {mean[False]['faults']:,.0f} -> {mean[True]['faults']:,.0f}; "
          f"system time {mean[False]['sys_s']:.1f} -> {mean[True]['sys_s']:.1f} s; "
          f"peak resident memory {mean[False]['peak_gb']:.2f} -> {mean[True]['peak_gb']:.2f} GB")


if __name__ == "__main__":
    main()
