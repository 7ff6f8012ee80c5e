"""Seconds per PPO step on SmolLM2-135M, split by phase, with achieved GFLOP/s beside a matmul
measured in the same run.

    .venv/bin/python bench/rl_step.py [--prompts 32] [--new-tokens 32] [--steps 2] [--bf16] [--lora-r 16] [--no-trim] [--sdpa]

The reward is a cheap programmatic one (VADER sentiment) so that the figures are the RL machinery's.
The first step is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def matmul_gflops(n: int = 2048, dtype=torch.float32, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="measured steps (after one warm-up step)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for sampling, scoring and the update")
    ap.add_argument("--lora-r", type=int, default=0)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--ppo-epochs", type=int, default=1)
    ap.add_argument("--no-trim", action="store_true",
                    help="keep the columns that are padding in every row of a minibatch (to measure what dropping them saves)")
    ap.add_argument("--sdpa", action="store_true",
                    help="transformers' SDPA as it is (rlhfkit.attention off: bf16 attention in bf16), to measure what attending in fp32 saves")
    args = ap.parse_args()

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    from rlhfkit import attention, forward

    forward.TRIM_PADDING = not args.no_trim
    if args.sdpa:
        attention.FP32_MAX_KEYS = 0
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from rlhfkit.config import PPOConfig
    from rlhfkit.models import load_causal_lm, resolve
    from rlhfkit.tasks import load_task
    from rlhfkit.train.ppo import PPOTrainer

    resolve(args.model)  # export/cache outside the timing
    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("unlabeled")]
    vader = SentimentIntensityAnalyzer()

    def reward(ps, rs):
        return torch.tensor([vader.polarity_scores(r)["compound"] for r in rs])

    with tempfile.TemporaryDirectory() as out:
        pf = Path(out) / "prompts.jsonl"
        pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        cfg = PPOConfig(model=args.model, prompts=str(pf), out=out, steps=args.steps + 1, batch_size=args.prompts,
                        minibatch_size=args.minibatch, ppo_epochs=args.ppo_epochs, max_new_tokens=args.new_tokens,
                        lora_r=args.lora_r, mixed_precision="bf16" if args.bf16 else "no", temperature=1.0,
                        system_prompt=task.system_prompt if hasattr(task, "system_prompt") else None)
        trainer = PPOTrainer(cfg, reward, prompts, progress=False)
        lm = load_causal_lm(args.model, trainable=False)
        n_params = sum(p.numel() for n, p in lm.named_parameters() if "embed" not in n)
        vocab, width = lm.config.vocab_size, lm.config.hidden_size
        del lm
        rows = []
        for i in range(args.steps + 1):
            res = trainer.step()
            if i == 0:
                continue
            rows.append(res)
    t = {k: sum(r["timings"][k] for r in rows) / len(rows) for k in rows[0]["timings"]}
    length = sum(r["metrics"]["response_length"] for r in rows) / len(rows)
    gen_tokens = length * args.prompts
    total = t["time_generate"] + t["time_reward"] + t["time_ref_values"] + t["time_update"]
    # FLOPs: 2 * params per token forward; x3 forward+backward. Forward passes see prompt + response;
    # the LM head (vocab x width) runs only on response positions.
    from rlhfkit.forward import encode_prompts
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(args.model)
    ids, mask = encode_prompts(tok, prompts[: args.prompts], cfg.system_prompt)
    prompt_len = mask.sum(1).float().mean().item()
    seq = prompt_len + length
    head = 2 * vocab * width
    fwd = args.prompts * (2 * n_params * seq + head * length)
    # policy(+values) and reference; pi_old's log-probs and values come from the sampling pass where the
    # sampler keeps hidden states (PPOConfig.old_from_sampling with the CPU engine): the reference pass only
    from rlhfkit import engine

    one_pass = cfg.old_from_sampling and not args.bf16 and engine.applies(trainer.unwrapped.lm, args.bf16)
    flops_ref_values = (1 if one_pass else 2) * fwd
    flops_update = 3 * fwd * args.ppo_epochs
    flops_gen = args.prompts * (2 * n_params * (prompt_len + length) + head * length)
    from rlhfkit.precision import native_bf16

    # a bf16 matmul on a CPU without native bf16 runs at ~0.3 GFLOP/s here (40 s of this bench for a figure
    # nobody uses): measured only where bf16 is native or asked for
    mm32 = matmul_gflops(dtype=torch.float32)
    mm16 = matmul_gflops(dtype=torch.bfloat16) if args.bf16 or native_bf16() else None
    print(f"model {args.model}: {n_params / 1e6:.0f}M non-embedding params; {args.prompts} prompts x {args.new_tokens} new tokens "
          f"(mean prompt {prompt_len:.0f} tokens, mean response {length:.1f}); bf16={args.bf16} lora_r={args.lora_r} "
          f"ppo_epochs={args.ppo_epochs} minibatch={args.minibatch} trim_padding={not args.no_trim} fp32_attention_max_keys={attention.FP32_MAX_KEYS}; threads={torch.get_num_threads()}")
    print(f"seconds per PPO step: total {total:.2f} = generation {t['time_generate']:.2f} + reward {t['time_reward']:.2f} "
          f"+ reference+values {t['time_ref_values']:.2f} + update {t['time_update']:.2f}")
    print(f"generated tokens/s: {gen_tokens / t['time_generate']:.1f}")
    print(f"reference+values: {'the reference pass only (old log-probs and values from sampling)' if one_pass else 'policy and reference passes'}")
    # the work counted is the plain computation's (every prompt token of every row through the model); the
    # sampler's shared prompt prefix does less, so its figure reads as useful GFLOP/s
    print(f"achieved GFLOP/s: generation {flops_gen / t['time_generate'] / 1e9:.1f}, reference+values "
          f"{flops_ref_values / t['time_ref_values'] / 1e9:.1f}, update {flops_update / t['time_update'] / 1e9:.1f}")
    bf16_words = f"{mm16:.1f} GFLOP/s" if mm16 is not None else "not measured (no native bf16 on this CPU)"
    print(f"matmul 2048^3 in this run: fp32 {mm32:.1f} GFLOP/s, bf16 {bf16_words}")


if __name__ == "__main__":
    main()
