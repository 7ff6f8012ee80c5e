"""The parts of the sampling engine (rlhfkit/engine.py) measured one by one, with the CPU named.

    .venv/bin/python bench/engine_parts.py [--rows 32] [--model smollm2-135m] [--precision bf16] [--compile]

1. GEMM at M = rows on SmolLM2-135M's shapes (30 layers' worth of distinct weights, so they stream from memory
   as in a decode step): torch's F.linear (MKL, packs the weight on every call) against oneDNN with the weight
   packed once (what the engine does);
2. one sampling step over (rows, vocabulary) logits: the previous sampler (log_softmax, float64 cumsum of the whole
   vocabulary) against the current one (fused softmax, two-level inverse CDF);
3. one decode step of the model at a ~100-token cache: transformers' forward with its DynamicCache against the
   engine's step. Run it once with OMP_WAIT_POLICY=PASSIVE in the environment to see what that setting costs;
4. a forward over the prompts alone: transformers' model forward (hidden states; no LM head) against the
   engine's prefill (which runs the shared system turn once and the LM head at the last position): what
   scoring passes could gain from the engine;
5. attention for one decode query per row at that cache (SDPA with GQA, every layer) in fp32 and in bf16:
   why the engine's bf16 mode attends in fp32;
6. a scoring pass (``forward_response``, no gradient): the log-probs of 2 responses per prompt (the task's
   demonstrations, <= 40 tokens), each distinct prompt once, with transformers' forward against the engine's
   (prefill, then each response as one block, its real tokens alone through the GEMMs, and once more with
   padded blocks, ``engine.PACK_RESPONSES = False``): the pass behind the reference log-probs, the panel's
   fluency, the reward model and PPO's pi_old/values;
7. (only with --compile) torch.compile (inductor) of the engine's per-layer pieces (``PackedLlama.qkv`` and
   ``attend_and_mlp``: norms, rotary, attention, activations and residual adds fused; the oneDNN GEMMs stay
   outside the graph, inductor cannot lower a pre-packed weight): the first prefill (which compiles), then a
   prefill and a decode step, eager against compiled.

--precision bf16 (meant for CPUs with native bf16; emulated elsewhere, and slow) measures parts 1, 3, 4 and 6 in
bf16: F.linear under autocast (which casts the weight on every call) against oneDNN with the weight packed once
in bf16, and transformers' forward under autocast against the engine's bf16 mode.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def timed(f, reps: int = 20) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def old_sampler(logits: torch.Tensor, generator) -> torch.Tensor:
    """The sampler before the engine: log_softmax, exp, float64 cumsum over the whole vocabulary."""
    logp = torch.log_softmax(logits, -1)
    cdf = logp.exp().double().cumsum(-1)
    u = torch.rand((logits.shape[0], 1), generator=generator, dtype=torch.float64) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u).squeeze(-1)
    return logp.gather(-1, tok[:, None]).squeeze(-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="also part 7: torch.compile of the engine's layers (compiles for a minute or more)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of part 7 (inductor: what the README measured; aot_eager traces the same graphs without generating C++, as the test does)")
    args = ap.parse_args(argv)
    bf16 = args.precision == "bf16"
    from rlhfkit.precision import native_bf16

    if bf16 and not native_bf16("cpu"):
        # oneDNN packs bf16 weights only on CPUs that compute bf16 (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
        print("--precision bf16: this CPU has no native bf16, so the engine runs only in fp32 here (oneDNN cannot "
              "pack bf16 weights on it); nothing measured. Run without --precision.")
        return
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).with_name("generate.py"))
    sibling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sibling)
    cpu_words = sibling.cpu_words

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    from rlhfkit import engine
    from rlhfkit.forward import encode_prompts, encode_responses, forward_response, prefill_distinct
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import GenerationConfig, _sample_token
    from rlhfkit.tasks import load_task

    M = args.rows
    print(f"{cpu_words()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; {args.precision}; M = {M} rows")
    dtype = torch.bfloat16 if bf16 else torch.float32
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    tok, lm = load_tokenizer(args.model), load_causal_lm(args.model, trainable=False)
    c = lm.config
    d, inter, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    print("1. GEMM (30 distinct weights each; the LM head once): F.linear vs oneDNN packed once")
    for name, (n_in, n_out, count) in {"q+k+v fused": (d, d + 2 * kv, 30), "o_proj": (d, d, 30),
                                       "gate+up fused": (d, 2 * inter, 30), "down_proj": (inter, d, 30),
                                       "lm_head": (d, c.vocab_size, 1)}.items():
        ws = [torch.randn(n_out, n_in) * 0.02 for _ in range(count)]
        x = torch.randn(M, n_in)
        packed = [engine._pack(w, dtype) for w in ws]

        def plain():
            with cast:
                return [torch.nn.functional.linear(x, w) for w in ws]

        t_lin = timed(plain, 10)
        t_pk = timed(lambda: [engine._linear(x, p) for p in packed], 10)
        flops = 2 * M * n_in * n_out * count
        print(f"   {name:14s} {n_in}x{n_out}: F.linear{' (autocast)' if bf16 else ''} {t_lin * 1e3:7.2f} ms "
              f"({flops / t_lin / 1e9:5.0f} GFLOP/s)   "
              f"oneDNN packed {t_pk * 1e3:7.2f} ms ({flops / t_pk / 1e9:5.0f} GFLOP/s)")
    logits = torch.randn(M, c.vocab_size) * 3
    g = torch.Generator().manual_seed(0)
    t_old = timed(lambda: old_sampler(logits, g))
    t_new = timed(lambda: _sample_token(logits, GenerationConfig(), g))
    print(f"2. sampling step over ({M}, {c.vocab_size}): previous {t_old * 1e3:.1f} ms, now {t_new * 1e3:.1f} ms")
    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("eval")][:M]
    ids, mask = encode_prompts(tok, prompts, "You are a helpful assistant.")
    with torch.no_grad(), cast:
        cache, logits = prefill_distinct(lm, ids, mask.long(), logits_to_keep=1)
        attn, pos, nxt = mask.long(), mask.sum(1), logits[:, -1].argmax(-1)
        hf = []
        for _ in range(12):
            attn = torch.cat([attn, attn.new_ones((M, 1))], 1)
            t = time.perf_counter()
            out = lm(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos[:, None], past_key_values=cache,
                     use_cache=True)
            hf.append(time.perf_counter() - t)
            cache, pos, nxt = out.past_key_values, pos + 1, out.logits[:, -1].argmax(-1)
        dec = engine.EngineDecoder(lm, 16, bf16=bf16)
        nxt = dec.prefill(ids, mask).argmax(-1)
        ours = []
        for _ in range(12):
            t = time.perf_counter()
            nxt = dec.step(nxt).argmax(-1)
            ours.append(time.perf_counter() - t)
    hf_s, our_s = sum(hf[2:]) / 10, sum(ours[2:]) / 10
    print(f"3. decode step, {M} rows, prompt width {ids.shape[1]}: transformers{' (autocast)' if bf16 else ''} "
          f"{hf_s * 1e3:.0f} ms, engine {our_s * 1e3:.0f} ms ({hf_s / our_s:.2f}x)")

    def hf_forward():
        with torch.no_grad(), cast:
            return lm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))

    t_hf = timed(hf_forward, 3)
    t_en = timed(lambda: engine.EngineDecoder(lm, 1, bf16=bf16).prefill(ids, mask), 3)
    print(f"4. forward over {M} prompts of width {ids.shape[1]}: transformers{' (autocast)' if bf16 else ''} "
          f"{t_hf:.2f} s, engine prefill {t_en:.2f} s ({t_hf / t_en:.2f}x)")
    H, Hkv = c.num_attention_heads, c.num_key_value_heads
    D, S = c.hidden_size // H, ids.shape[1] + 12
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(M, h, t, D, generator=g) for h, t in ((H, 1), (Hkv, S), (Hkv, S)))
    visible = torch.ones(M, 1, 1, S, dtype=torch.bool)
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b, cc = (t.to(dt) for t in (q, k, v))
        times[dt] = timed(lambda: [torch.nn.functional.scaled_dot_product_attention(a, b, cc, attn_mask=visible,
                                                                                    enable_gqa=True)
                                   for _ in range(c.num_hidden_layers)], 5)
    print(f"5. attention for one decode query, {M} rows, {S} keys, {c.num_hidden_layers} layers: "
          f"fp32 {times[torch.float32] * 1e3:.1f} ms, bf16 {times[torch.bfloat16] * 1e3:.1f} ms")
    demos = [r["completion"] for r in map(json.loads, task.path("sft").read_text().splitlines()[: 2 * M])]
    r_ids, r_mask = encode_responses(tok, demos, max_tokens=40)
    p_ids, p_mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)

    def scoring(on: bool, packed: bool = True):
        was = engine.ENABLED, engine.PACK_RESPONSES
        engine.ENABLED, engine.PACK_RESPONSES = on, packed
        try:
            with torch.no_grad(), cast:
                return forward_response(lm, p_ids, p_mask, r_ids, r_mask, share_prompts=True)["logprobs"].float()
        finally:
            engine.ENABLED, engine.PACK_RESPONSES = was

    gap = (scoring(True) - scoring(False))[r_mask.bool()].abs().max().item()
    t_hf, t_en = timed(lambda: scoring(False), 3), timed(lambda: scoring(True), 3)
    t_pad = timed(lambda: scoring(True, packed=False), 3)
    print(f"6. scoring pass, {2 * M} responses ({int(r_mask.sum())} tokens, {r_mask.numel()} padded) to {M} prompts: "
          f"transformers{' (autocast)' if bf16 else ''} {t_hf:.2f} s, engine {t_en:.2f} s ({t_hf / t_en:.2f}x; "
          f"without packing the responses' real tokens {t_pad:.2f} s); largest log-prob difference {gap:.1e}")
    if args.compile:
        compiled_layers(lm, ids, mask, bf16, backend=args.compile_backend)


def compiled_layers(lm, ids, mask, bf16: bool, backend: str = "inductor") -> None:
    """Part 7: the engine's prefill and decode step with its per-layer pieces eager, then compiled with ``backend``."""
    from rlhfkit import engine

    def prefill_and_step() -> tuple[float, float]:
        dec = engine.EngineDecoder(lm, 16, bf16=bf16)
        t = time.perf_counter()
        nxt = dec.prefill(ids, mask).argmax(-1)
        prefill_s, steps = time.perf_counter() - t, []
        for _ in range(12):
            t = time.perf_counter()
            nxt = dec.step(nxt).argmax(-1)
            steps.append(time.perf_counter() - t)
        return prefill_s, sum(steps[2:]) / 10

    eager = [prefill_and_step() for _ in range(2)][-1]
    P, saved = engine.PackedLlama, (engine.PackedLlama.qkv, engine.PackedLlama.attend_and_mlp, engine._linear)
    engine._linear = torch.compiler.disable(engine._linear)  # a graph break around each GEMM
    P.qkv = torch.compile(P.qkv, dynamic=True, backend=backend)
    P.attend_and_mlp = torch.compile(P.attend_and_mlp, dynamic=True, backend=backend)
    try:
        t = time.perf_counter()
        prefill_and_step()
        first = time.perf_counter() - t
        compiled = [prefill_and_step() for _ in range(2)][-1]
    finally:
        P.qkv, P.attend_and_mlp, engine._linear = saved
        torch._dynamo.reset()
    print(f"7. torch.compile ({backend}) of the engine's layers, {len(ids)} rows: first prefill + 12 steps {first:.1f} s (compiling); "
          f"prefill eager {eager[0]:.2f} s, compiled {compiled[0]:.2f} s ({eager[0] / compiled[0]:.2f}x); "
          f"decode step eager {eager[1] * 1e3:.0f} ms, compiled {compiled[1] * 1e3:.0f} ms ({eager[1] / compiled[1]:.2f}x)")


if __name__ == "__main__":
    main()
