"""What dropping padding columns saves in PPO's update, on one fixed rollout, with the CPU named.

    .venv/bin/python bench/update_padding.py [--prompts 32] [--new-tokens 40] [--minibatch 8] [--rounds 3] [--precision auto] [--null]

Samples one rollout of SmolLM2-135M on the movie-review prompts (as the demo's PPO does: the task's framing, the
chat template), then runs PPO's update pass over it -- per minibatch of a fixed permutation, ``forward_response``
with values and entropy, then backward (no optimiser step, so every round does the same work) -- alternating
``forward.TRIM_PADDING`` off and on (which one runs first alternates by round) after a warm-up of each. Prints
seconds per pass over the rollout, and the token positions each variant runs against the real tokens.
``--null`` trims in both columns: the ratio then shows the bench's own noise and order.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["auto", "bf16", "no"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null", action="store_true", help="trim in both columns (the ratio then measures noise and order alone)")
    args = ap.parse_args(argv)

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).with_name("generate.py"))
    bench_generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_generate)
    from rlhfkit import forward
    from rlhfkit.forward import autocast_context, forward_response
    from rlhfkit.models import PolicyWithValue, load_causal_lm, load_tokenizer
    from rlhfkit.precision import resolve_bf16
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks import load_task

    bf16 = resolve_bf16(args.precision, "cpu")
    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("unlabeled")][: args.prompts]
    tok = load_tokenizer(args.model)
    policy = PolicyWithValue(load_causal_lm(args.model, trainable=True))
    system = getattr(task, "system_prompt", None)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, batch_size=len(prompts), system_prompt=system)
    ro = generate(policy.lm, tok, prompts, cfg, generator=torch.Generator().manual_seed(args.seed), bf16=bf16)
    perm = torch.randperm(len(ro), generator=torch.Generator().manual_seed(args.seed)).tolist()
    minibatches = [torch.tensor(perm[i : i + args.minibatch]) for i in range(0, len(ro), args.minibatch)]

    def columns(trim: bool) -> tuple[int, int]:
        """(token positions run, real tokens), summed over the minibatches."""
        run = real = 0
        for j in minibatches:
            p, r = ro.prompt_mask[j], ro.response_mask[j]
            cut = forward.padding_columns(p, r) if trim else None
            width = (p.shape[1] - cut[0] + cut[1]) if cut else p.shape[1] + r.shape[1]
            run += width * len(j)
            real += int(p.sum() + r.sum())
        return run, real

    def update_pass() -> None:
        for j in minibatches:
            with autocast_context("cpu", bf16):
                out = forward_response(policy, ro.prompt_ids[j], ro.prompt_mask[j], ro.response_ids[j], ro.response_mask[j],
                                       with_values=True, with_entropy=True)
            m = ro.response_mask[j].float()
            loss = -(out["logprobs"].float() * m).sum() / m.sum() + (out["values"].float() * m).square().mean()
            loss.backward()
            policy.zero_grad(set_to_none=True)

    print(f"{bench_generate.cpu_words()}; precision {'bf16' if bf16 else 'fp32'}; {len(ro)} rows, prompt width "
          f"{ro.prompt_ids.shape[1]}, response width {ro.response_ids.shape[1]} (mean response "
          f"{ro.response_mask.sum(1).float().mean():.1f} tokens); minibatches of {args.minibatch}; threads {torch.get_num_threads()}")
    for trim in (False, True):
        run, real = columns(trim)
        print(f"trim_padding={trim}: {run} token positions run, {real} real ({100 * (1 - real / run):.1f}% padding)")
    times, setting = {False: [], True: []}, forward.TRIM_PADDING
    try:
        for r in range(args.rounds + 1):
            for trim in ((False, True) if r % 2 else (True, False)):  # ABBA: which one runs first alternates
                forward.TRIM_PADDING = trim or args.null
                t = time.perf_counter()
                update_pass()
                if r:  # round 0 is the warm-up
                    times[trim].append(time.perf_counter() - t)
    finally:
        forward.TRIM_PADDING = setting
    print("round  untrimmed s  trimmed s  untrimmed/trimmed" + ("  (--null: both trimmed)" if args.null else ""))
    for r, (a, b) in enumerate(zip(times[False], times[True]), 1):
        print(f"{r:5d}  {a:11.2f}  {b:9.2f}  {a / b:17.2f}x")
    return {"columns": {trim: columns(trim) for trim in (False, True)}, "seconds": times}


if __name__ == "__main__":
    main()
