"""Sampling throughput of rlhfkit.rollout.generate on SmolLM2-135M (bf16 autocast), on the demo's eval prompts.

    .venv/bin/python bench/generate.py [--batch-size 96] [--prompts 96] [--new-tokens 40] [--no-bf16]
    .venv/bin/python bench/generate.py --prompts 12 --samples 16 [--no-share]   # best-of-n's shape

--samples N draws N responses per prompt (as best-of-n and the preference stage do); each prompt's
prefill then runs once for its N rows, unless --no-share turns that off to show what it saves.
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
    ap.add_argument("--samples", type=int, default=1, help="responses per prompt")
    ap.add_argument("--no-share", action="store_true", help="prefill every row, even when prompts repeat")
    args = ap.parse_args()

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit import forward
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks import load_task

    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("eval")][: args.prompts]
    prompts = [p for p in prompts for _ in range(args.samples)]
    forward.SHARE_REPEATED_PROMPTS = not args.no_share
    tok, lm = load_tokenizer(args.model), load_causal_lm(args.model, trainable=False)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.batch_size,
                           system_prompt="You are a helpful assistant.")
    generate(lm, tok, prompts[:8], cfg, seed=1, bf16=not args.no_bf16)  # warm-up
    t = time.perf_counter()
    ro = generate(lm, tok, prompts, cfg, seed=0, bf16=not args.no_bf16)
    dt = time.perf_counter() - t
    n = int(ro.response_mask.sum())
    print(f"{len(prompts) // args.samples} prompts x {args.samples} samples, batch {args.batch_size}, bf16={not args.no_bf16}, "
          f"shared prefill={not args.no_share}: {n} new tokens in {dt:.1f} s = "
          f"{n / dt:.0f} tok/s (mean response {n / len(prompts):.1f} tokens, EOS rate {ro.ended.float().mean():.2f})")


if __name__ == "__main__":
    main()
