"""Attention for training in bf16 on a CPU: PyTorch's SDPA (the flash kernel, what transformers' "sdpa" runs)
in bf16, the same kernel on the inputs cast to fp32 (``rlhfkit.attention.sdpa_in_fp32``), and eager attention
(two bf16 matmuls around an fp32 softmax, transformers' "eager"), forward and forward+backward, per key length,
and which of the first two ``rlhfkit.attention`` runs there.

    .venv/bin/python bench/attention.py [--rows 32] [--lengths 64,128,192,256,384,512] [--repeats 7]

Shapes are SmolLM2-135M's (9 query heads of 64, 3 key/value heads), causal, with a quarter of the rows
left-padded by a quarter of their length; rows x length is kept near rows x 128 tokens, as a minibatch of
fixed token count would be.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import cpu_flags, cpu_model  # noqa: E402

from rlhfkit import attention  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def eager(q, k, v, mask, scaling: float) -> torch.Tensor:
    """transformers' eager attention (modeling_llama.eager_attention_forward) in bf16: scores from a bf16 matmul,
    the softmax in fp32, its weights in bf16 for the product with v."""
    n = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n, 1), v.repeat_interleave(n, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32, help="rows at length 128 (rows x length stays about this x 128)")
    ap.add_argument("--lengths", default="64,128,192,256,384,512")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}; threads: {torch.get_num_threads()}; "
          f"torch {torch.__version__}; rlhfkit.attention.FP32_MAX_KEYS = {attention.FP32_MAX_KEYS}")
    print("ms per layer, bf16 inputs: forward | forward+backward")
    print(f"{'length':>6} {'rows':>4}  {'sdpa bf16':>17}  {'sdpa on fp32':>17}  {'eager':>17}  rlhfkit runs")
    torch.manual_seed(0)
    results = {}
    for T in (int(x) for x in args.lengths.split(",")):
        B = max(1, args.rows * 128 // T)
        q = torch.randn(B, 9, T, 64, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, 3, T, 64, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, 3, T, 64, dtype=torch.bfloat16, requires_grad=True)
        real = torch.ones(B, T, dtype=torch.bool)
        real[: B // 4, : T // 4] = False
        mask = (torch.ones(T, T, dtype=torch.bool).tril()[None] & real[:, None, :])[:, None]
        kinds = {"sdpa bf16": lambda: attention.sdpa(q, k, v, mask, 0.125),
                 "sdpa on fp32": lambda: attention.sdpa_in_fp32(q, k, v, mask, 0.125),
                 "eager": lambda: eager(q, k, v, mask, 0.125)}
        cells, results[T] = [], {}
        for name, fn in kinds.items():
            with torch.no_grad():
                f = best_ms(fn, args.repeats)
            fb = best_ms(lambda: fn().float().sum().backward(), args.repeats)
            results[T][name] = (f, fb)
            cells.append(f"{f:7.1f} | {fb:7.1f}")
        runs = "sdpa on fp32" if attention.upcast(q, k) else "sdpa bf16"
        print(f"{T:>6} {B:>4}  " + "  ".join(f"{c:>17}" for c in cells) + f"  {runs}", flush=True)
    return results


if __name__ == "__main__":
    main()
