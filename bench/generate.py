"""Sampling throughput of rlhfkit.rollout.generate on SmolLM2-135M, on the demo's eval prompts.

    .venv/bin/python bench/generate.py [--batch-size 96] [--prompts 96] [--new-tokens 40] [--precision auto]
    .venv/bin/python bench/generate.py --prompts 12 --samples 16 [--no-share]   # best-of-n's shape
    .venv/bin/python bench/generate.py --vs-hf [--rounds 2]     # side by side with transformers' generate

--samples N draws N responses per prompt (as best-of-n and the preference stage do); each prompt's
prefill then runs once for its N rows, unless --no-share turns that off to show what it saves.

--vs-hf runs rlhfkit's sampler and Hugging Face ``model.generate`` on the same model object, the same
encoded prompts (left-padded, one batch), the same sampling settings (temperature 1, no top-k, top-p 1)
and precision, alternating rlhfkit, HF, rlhfkit, HF after a warm-up of each, in two modes:
  fixed   every row samples exactly --new-tokens tokens (HF: min_new_tokens = max_new_tokens; rlhfkit: EOS
          never ends a row), so both produce the same number of tokens;
  eos     both stop a row at EOS (HF keeps finished rows in the batch; rlhfkit drops them), tokens counted.
It prints seconds, tokens and tok/s per round and the ratio, with the CPU model and precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import time


def cpu_words() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "unknown CPU")
    flags = next((l for l in lscpu.splitlines() if l.startswith("Flags")), "")
    return f"{name}, {'avx512_bf16' if 'avx512_bf16' in flags else 'no avx512_bf16'}"


def vs_hf(lm, tok, prompts, cfg, bf16: bool, rounds: int) -> list[dict]:
    """The side-by-side rounds (see the module docstring); returns one dict per measured round."""
    import torch

    from rlhfkit.forward import autocast_context, encode_prompts
    from rlhfkit.rollout import sample_batch

    ids, mask = encode_prompts(tok, prompts, cfg.system_prompt)
    N = cfg.max_new_tokens

    def ours(mode):
        g = torch.Generator().manual_seed(0)
        eos = tok.eos_token_id if mode == "eos" else -1  # -1: no token ends a row
        _, m, _, _ = sample_batch(lm, ids, mask, cfg, eos, tok.pad_token_id, g, bf16)
        return int(m.sum())

    def hf(mode):
        torch.manual_seed(0)
        kw = dict(min_new_tokens=N) if mode == "fixed" else {}
        with torch.no_grad(), autocast_context("cpu", bf16):
            out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=N, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)
        new = out[:, ids.shape[1]:]
        # tokens up to and including each row's EOS (HF pads finished rows)
        ended = (new == tok.eos_token_id).int().cumsum(1)
        return int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())

    print(f"{cpu_words()}; precision {'bf16' if bf16 else 'fp32'}; {len(prompts)} sequences in one batch, "
          f"prompt width {ids.shape[1]} tokens, <= {N} new tokens, temperature 1, top-k 0, top-p 1")
    rows = []
    for mode in ("fixed", "eos"):
        ours(mode), hf(mode)  # warm-up
        print(f"[{mode}] round  rlhfkit s (tokens, tok/s)      HF generate s (tokens, tok/s)   HF/rlhfkit time")
        for r in range(rounds):
            t = time.perf_counter(); n_ours = ours(mode); t_ours = time.perf_counter() - t
            t = time.perf_counter(); n_hf = hf(mode); t_hf = time.perf_counter() - t
            print(f"[{mode}] {r + 1:>5}  {t_ours:7.2f} ({n_ours:5d}, {n_ours / t_ours:6.0f})        "
                  f"{t_hf:7.2f} ({n_hf:5d}, {n_hf / t_hf:6.0f})        {t_hf / t_ours:5.2f}x")
            rows.append({"mode": mode, "rlhfkit_s": t_ours, "rlhfkit_tokens": n_ours, "hf_s": t_hf, "hf_tokens": n_hf})
    return rows


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "no"],
                    help="auto: bf16 only where the CPU computes it natively")
    ap.add_argument("--samples", type=int, default=1, help="responses per prompt")
    ap.add_argument("--no-share", action="store_true", help="prefill every row, even when prompts repeat")
    ap.add_argument("--vs-hf", action="store_true", help="side by side with transformers' generate (see above)")
    ap.add_argument("--rounds", type=int, default=2, help="--vs-hf: measured rounds per mode")
    args = ap.parse_args(argv)

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    from rlhfkit import forward
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.precision import resolve_bf16
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks import load_task

    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("eval")][: args.prompts]
    prompts = [p for p in prompts for _ in range(args.samples)]
    forward.SHARE_REPEATED_PROMPTS = not args.no_share
    bf16 = resolve_bf16(args.precision)
    tok, lm = load_tokenizer(args.model), load_causal_lm(args.model, trainable=False)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.batch_size,
                           system_prompt="You are a helpful assistant.")
    if args.vs_hf:
        return vs_hf(lm, tok, prompts[: args.batch_size], dataclasses.replace(cfg, batch_size=args.batch_size), bf16, args.rounds)
    generate(lm, tok, prompts[:8], cfg, seed=1, bf16=bf16)  # warm-up
    t = time.perf_counter()
    ro = generate(lm, tok, prompts, cfg, seed=0, bf16=bf16)
    dt = time.perf_counter() - t
    n = int(ro.response_mask.sum())
    print(f"{cpu_words()}: {len(prompts) // args.samples} prompts x {args.samples} samples, batch {args.batch_size}, "
          f"bf16={bf16}, shared prefill={not args.no_share}: {n} new tokens in {dt:.1f} s = "
          f"{n / dt:.0f} tok/s (mean response {n / len(prompts):.1f} tokens, EOS rate {ro.ended.float().mean():.2f})")


if __name__ == "__main__":
    main()
