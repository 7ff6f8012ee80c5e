"""Sampling throughput of rlhfkit.rollout.generate on SmolLM2-135M (bf16 autocast), on the demo's eval prompts.

    .venv/bin/python bench/generate.py [--batch-size 96] [--prompts 96] [--new-tokens 40] [--no-bf16]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args()

    from rlhfkit.cli import _quiet_libraries

    _quiet_libraries()
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks import load_task

    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("eval")][: args.prompts]
    tok, lm = load_tokenizer(args.model), load_causal_lm(args.model, trainable=False)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.batch_size,
                           system_prompt="You are a helpful assistant.")
    generate(lm, tok, prompts[:8], cfg, seed=1, bf16=not args.no_bf16)  # warm-up
    t = time.perf_counter()
    ro = generate(lm, tok, prompts, cfg, seed=0, bf16=not args.no_bf16)
    dt = time.perf_counter() - t
    n = int(ro.response_mask.sum())
    print(f"{len(prompts)} prompts, batch {args.batch_size}, bf16={not args.no_bf16}: {n} new tokens in {dt:.1f} s = "
          f"{n / dt:.0f} tok/s (mean response {n / len(prompts):.1f} tokens, EOS rate {ro.ended.float().mean():.2f})")


if __name__ == "__main__":
    main()
