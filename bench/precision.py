"""What this machine computes fast: fp32 vs bf16 matmul throughput, a Linear forward+backward under bf16
autocast, and what rlhfkit's `auto` precision chooses here.

    .venv/bin/python bench/precision.py [--size 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="n of the n x n x n matmul")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from rlhfkit.precision import native_bf16, resolve

    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}; "
          f"amx_bf16: {'yes' if 'amx_bf16' in flags else 'no'}; threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"oneDNN native bf16: {native_bf16('cpu')}; rlhfkit auto chooses: {resolve('auto', 'cpu', announce=False)}")
    n = args.size
    flop = 2 * n**3
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        s = best_seconds(lambda: a @ b, args.repeats)
        print(f"matmul {n}^3 {str(dtype).replace('torch.', ''):>8}: {flop / s / 1e9:8.1f} GFLOP/s ({s * 1e3:.1f} ms)")
    layer = torch.nn.Linear(576, 1536)  # a SmolLM2-135M MLP projection
    x = torch.randn(8 * 128, 576)

    def fwd_bwd(bf16: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = layer(x)
            y.float().sum().backward()
        return run

    t32, t16 = best_seconds(fwd_bwd(False), args.repeats), best_seconds(fwd_bwd(True), args.repeats)
    print(f"Linear 576->1536 fwd+bwd on 1024 tokens: fp32 {t32 * 1e3:.1f} ms, bf16 autocast {t16 * 1e3:.1f} ms "
          f"(bf16 / fp32 = {t16 / t32:.1f}x)")


if __name__ == "__main__":
    main()
