"""The backward pass of expanding a shared prompt's rows to its K samples, two ways, with the CPU named:
advanced indexing (``keys[index]``, transformers' ``batch_select_indices``; backward ``index_put_`` with
accumulate) against ``index_select`` (what ``forward.prefill_distinct`` uses; backward ``index_add_``).

    .venv/bin/python bench/shared_rows.py [--prompts 15] [--samples 4] [--prompt-tokens 80] [--reps 50]

Shapes are SmolLM2-135M's: a key or value tensor of one layer (3 KV heads x 64) -- 60 of them per pass --
and the kept last-position logits (49152). For each way it prints milliseconds per backward and how many
distinct gradients (bit patterns) the repeats gave: on a CPU with 2+ threads, index_put_'s parallel
atomic float adds can give more than one, which made a resumed run differ from an uninterrupted one in
the last bits. Run it beside two busy processes to see that (the adds' order follows thread timing), with
``--prompts 3``: there one prompt's rows fall on both threads, and more often than with the default's 15.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import cpu_flags, cpu_model  # noqa: E402


def measure(src: torch.Tensor, grad: torch.Tensor, index: torch.Tensor, way: str, reps: int) -> tuple[float, int]:
    """(ms per forward+backward, distinct gradients over ``reps``)."""
    seen = set()

    def once():
        src.grad = None
        out = src[index] if way == "advanced indexing" else src.index_select(0, index)
        out.backward(grad)
        return src.grad

    for _ in range(3):
        once()
    total = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        g = once()
        total += time.perf_counter() - t
        seen.add(hashlib.md5(g.numpy().tobytes()).hexdigest())
    return total / reps * 1e3, len(seen)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=15, help="distinct prompts (odd: a prompt's rows then straddle the two threads' halves)")
    ap.add_argument("--samples", type=int, default=4, help="K: rows per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=80)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    index = torch.arange(args.prompts).repeat_interleave(args.samples)
    rows = len(index)
    tensors = {
        "keys of one layer": torch.randn(args.prompts, 3, args.prompt_tokens, 64, generator=g),
        "last-position logits": torch.randn(args.prompts, 1, 49152, generator=g),
    }
    bf16 = "avx512_bf16" in cpu_flags()
    print(f"CPU: {cpu_model()}; avx512_bf16: {'yes' if bf16 else 'no'}; threads: {torch.get_num_threads()}; "
          f"{args.prompts} prompts x {args.samples} rows")
    results = {}
    for name, t in tensors.items():
        src = t.requires_grad_()
        grad = torch.randn(rows, *t.shape[1:], generator=g)
        for way in ("advanced indexing", "index_select"):
            ms, distinct = measure(src, grad, index, way, args.reps)
            results[f"{name}, {way}"] = {"ms": ms, "distinct_gradients": distinct}
            print(f"{name:22s} {way:18s} {ms:7.2f} ms per backward   {distinct} distinct gradient(s) in {args.reps}")
    return results


if __name__ == "__main__":
    main()
