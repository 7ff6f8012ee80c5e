"""rlhfkit.attention: bf16 attention on a CPU runs SDPA on fp32 copies of its inputs at short key lengths.
It must compute what SDPA computes (within the rounding of its bf16 output, forward and gradient; exactly
where it does not upcast), honour the masks transformers hands it, choose by dtype, device and key length
only, and leave saved models loadable without rlhfkit."""

from __future__ import annotations

import json

import torch

from rlhfkit import attention
from rlhfkit.attention import attend, sdpa, sdpa_in_fp32, upcast
from rlhfkit.models import load_causal_lm, load_tokenizer


def _qkv(B=3, H=6, Hkv=2, T=5, S=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, 8, generator=g), torch.randn(B, Hkv, S, 8, generator=g),
            torch.randn(B, Hkv, S, 8, generator=g))


def _padded_causal_mask(B, T, S):
    """Causal over the last T of S positions, the first row's first 3 keys padding (as left padding is)."""
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)[None].repeat(B, 1, 1)
    mask[0, :, :3] = False
    mask[0, :, 3] = True  # every query keeps a key
    return mask[:, None]


def _ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """Half a bf16 unit in the last place of each value: the rounding of a bf16 output."""
    return x.abs().clamp(min=1e-3) * 2.0**-8


def test_sdpa_in_fp32_is_bf16_sdpa_to_the_rounding_of_its_output():
    mask = _padded_causal_mask(3, 5, 7)
    q, k, v = (t.bfloat16() for t in _qkv())
    exact = sdpa(q.float(), k.float(), v.float(), mask, 0.3)  # the bf16 inputs' attention, in fp32 throughout
    ours = sdpa_in_fp32(q, k, v, mask, 0.3)
    assert ours.dtype == torch.bfloat16
    assert ((ours.float() - exact).abs() <= _ulp_bf16(exact) + 1e-6).all()  # the exact value, rounded once
    theirs = sdpa(q, k, v, mask, 0.3).float()  # the bf16 kernel: within a few roundings of it
    torch.testing.assert_close(ours.float(), theirs, atol=3e-2, rtol=3e-2)
    # under autocast the inputs arrive in fp32 (transformers' rotary) and are rounded to bf16 first, as SDPA would
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sdpa_in_fp32(*_qkv(), mask, 0.3)
    torch.testing.assert_close(auto, ours, atol=0, rtol=0)
    # the mask matters: without it the first row moves (a mutation the comparisons above must catch)
    assert not torch.allclose(sdpa_in_fp32(q, k, v, torch.ones_like(mask), 0.3)[0].float(), exact[0], atol=1e-2)


def test_sdpa_in_fp32_gradients_are_the_fp32_gradients_of_the_bf16_inputs():
    mask = _padded_causal_mask(3, 5, 7)
    grads = []
    for fn, dtype in ((sdpa_in_fp32, torch.bfloat16), (sdpa, torch.float32)):
        q, k, v = (t.bfloat16().to(dtype).requires_grad_() for t in _qkv())
        fn(q, k, v, mask, 0.3).float().pow(2).sum().backward()
        grads.append([q.grad.float(), k.grad.float(), v.grad.float()])
    for ours, exact in zip(*grads):
        torch.testing.assert_close(ours, exact, atol=2e-2, rtol=2e-2)


def test_the_transformers_interface_is_sdpa_on_fp32_copies():
    """The function a model given ``use`` calls, on a real attention module: transformers' SDPA output layout
    ((B, T, H, D)), the exact fp32 attention of the bf16 inputs rounded once; transformers' own function where
    it does not upcast."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = load_causal_lm("tiny").model.layers[0].self_attn
    H, Hkv = module.config.num_attention_heads, module.config.num_key_value_heads
    mask = _padded_causal_mask(3, 5, 7)
    q, k, v = (t.bfloat16() for t in _qkv(H=H, Hkv=Hkv))
    ours, _ = attention._transformers_attention(module, q, k, v, mask, scaling=0.3)
    exact, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask, scaling=0.3)
    assert ours.dtype == torch.bfloat16 and ours.shape == exact.shape == (3, 5, H, 8)
    assert ((ours.float() - exact).abs() <= _ulp_bf16(exact) + 1e-6).all()
    q, k, v = _qkv(H=H, Hkv=Hkv)  # fp32: transformers' SDPA itself
    torch.testing.assert_close(attention._transformers_attention(module, q, k, v, mask, scaling=0.3)[0],
                               sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0], atol=0, rtol=0)


def test_the_choice_depends_on_dtype_device_and_key_length_only():
    short, long = attention.FP32_MAX_KEYS, attention.FP32_MAX_KEYS + 1
    q16, k16 = torch.zeros(1, 1, 4, 8, dtype=torch.bfloat16), torch.zeros(1, 1, short, 8, dtype=torch.bfloat16)
    assert upcast(q16, k16)
    assert not upcast(q16, torch.zeros(1, 1, long, 8, dtype=torch.bfloat16))  # long: the bf16 kernel is the faster
    assert not upcast(q16.float(), k16.float())  # fp32 already
    with torch.autocast("cpu", dtype=torch.bfloat16):  # transformers' rotary hands over fp32 under autocast
        assert upcast(q16.float(), k16.float())
    with torch.no_grad():
        assert upcast(q16, k16)  # not grad mode: PPO's pi_old pass and its update compute one function
    q, k, v = (t.bfloat16() for t in _qkv())
    torch.testing.assert_close(attend(q, k, v, None, 0.3), sdpa_in_fp32(q, k, v, None, 0.3), atol=0, rtol=0)
    q, k, v = _qkv()
    torch.testing.assert_close(attend(q, k, v, None, 0.3), sdpa(q, k, v, None, 0.3), atol=0, rtol=0)


def _batch():
    tok = load_tokenizer("tiny")
    enc = tok(["Write one sentence about a cat.", "Hi", "Describe a rainy afternoon in Paris, please."],
              return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def test_a_model_computes_what_sdpa_computes(monkeypatch):
    ids, mask = _batch()
    model = load_causal_lm("tiny")
    assert model.config._attn_implementation == attention.NAME
    calls = []
    real_upcast = attention.upcast
    monkeypatch.setattr(attention, "upcast", lambda q, k: calls.append(real_upcast(q, k)) or calls[-1])
    real = mask.bool()

    def run(impl: str, bf16: bool):
        model.set_attn_implementation(impl)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logits[real].logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits[real].detach(), grads

    # fp32: transformers' SDPA as it is, the same numbers exactly
    base, gbase = run("sdpa", False)
    ours, gours = run(attention.NAME, False)
    assert calls == [False] * model.config.num_hidden_layers
    torch.testing.assert_close(ours, base, atol=0, rtol=0)
    # bf16 autocast: fp32 copies in every layer, within bf16 rounding of SDPA's bf16 kernel, forward and gradient
    calls.clear()
    base, gbase = run("sdpa", True)
    ours, gours = run(attention.NAME, True)
    assert calls == [True] * model.config.num_hidden_layers
    torch.testing.assert_close(ours, base, atol=0.1, rtol=0.05)
    for name in gbase:
        assert torch.nn.functional.cosine_similarity(gours[name].flatten(), gbase[name].flatten(), dim=0) > 0.99, name
    # the padding matters to the comparison: without the mask the real positions' logits move
    model.set_attn_implementation(attention.NAME)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unmasked = model(input_ids=ids, attention_mask=torch.ones_like(mask), use_cache=False).logits.float()
    assert not torch.allclose(unmasked[real], ours, atol=0.1, rtol=0.05)


def test_saved_models_do_not_name_rlhfkit_attention(tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_causal_lm("tiny")
    model.save_pretrained(tmp_path)
    assert attention.NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert plain.config._attn_implementation != attention.NAME


def test_the_fp32_key_limit_comes_from_the_environment_when_set():
    """RLHFKIT_ATTENTION_FP32_MAX_KEYS sets FP32_MAX_KEYS for a whole process (0: the bf16 kernel everywhere);
    a value that is not a number of keys stops the import with an error naming the variable."""
    import os
    import subprocess
    import sys

    def limit(value):
        env = {k: v for k, v in os.environ.items() if k != "RLHFKIT_ATTENTION_FP32_MAX_KEYS"}
        if value is not None:
            env["RLHFKIT_ATTENTION_FP32_MAX_KEYS"] = value
        return subprocess.run([sys.executable, "-c", "import rlhfkit.attention as a; print(a.FP32_MAX_KEYS)"],
                              env=env, capture_output=True, text=True)

    assert limit(None).stdout.strip() == "256"
    assert limit("0").stdout.strip() == "0"
    bad = limit("-3")
    assert bad.returncode != 0 and "RLHFKIT_ATTENTION_FP32_MAX_KEYS" in bad.stderr
