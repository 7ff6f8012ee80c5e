"""Attention for transformers models on a CPU in bf16: SDPA on fp32 copies of the inputs at short lengths.

PyTorch's CPU flash kernel (what transformers' "sdpa" runs) is slow in bf16 on short sequences, above all in
its backward: at 64-160 keys, 9 heads, a forward+backward in bf16 took 1.5-2.1x the time of the same kernel
on the inputs cast to fp32, for about the same forward time; the two tie at 192-256 keys, and from ~384 the
bf16 kernel is the faster (``bench/attention.py`` prints both, and eager attention, per key length). Our sequences (prompt + response)
are ~100-130 tokens, so SFT, the reward model and every RL update ran their attention in the slow case.

``use(model)`` gives a transformers model the implementation ``"rlhfkit"``: per call, SDPA on the query,
keys and values rounded to bf16 and then cast to fp32, its output rounded back to bf16, when the attention
computes in bf16 on a CPU (bf16 tensors, or CPU autocast to bf16) over at most ``FP32_MAX_KEYS`` keys;
transformers' SDPA as it is otherwise (fp32, GPUs, long sequences). The inputs are the bf16 values SDPA
would get, and the products and sums run in fp32, as the bf16 kernel accumulates them: the same function
to within the rounding of the output (the engine's bf16 mode attends in fp32 too). The choice depends on
dtype, device and key length only, never on grad mode, so a no-grad pass (PPO's pi_old) and the update's
forward over the same rows compute the same function. The name is not saved with the model (transformers
does not write ``_attn_implementation``), so saved folders load anywhere as before.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

NAME = "rlhfkit"


def _max_keys_from_env(default: int) -> int:
    """RLHFKIT_ATTENTION_FP32_MAX_KEYS when set (a number of keys >= 0), else ``default``."""
    text = os.environ.get("RLHFKIT_ATTENTION_FP32_MAX_KEYS", str(default)).strip()
    if not text.isdigit():
        raise ValueError(f"RLHFKIT_ATTENTION_FP32_MAX_KEYS must be a number of keys >= 0, got {text!r}")
    return int(text)


# at most this many keys: bf16 attention on a CPU runs SDPA in fp32. bench/attention.py on 2 cores of an AMD EPYC
# Zen 5 (avx512_bf16), forward+backward: 1.5-2.1x faster at 64-160 keys, 1.08x at 192, a tie at 256, 0.94x at 384.
# RLHFKIT_ATTENTION_FP32_MAX_KEYS=0 turns it off (the bf16 kernel everywhere: the numbers of before 0ab03f7), so that
# a whole run (`rlhfkit demo --seed N`) can be made at either rounding, to compare PPO's verdict over seeds.
FP32_MAX_KEYS = _max_keys_from_env(256)


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype attention computes in: autocast's where it is on (under CPU autocast transformers' rotary
    embedding hands over fp32 queries and keys, which SDPA then casts to bf16), else q's."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return q.dtype


def upcast(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether SDPA runs on fp32 copies here: bf16 attention on a CPU, at most FP32_MAX_KEYS keys."""
    return q.device.type == "cpu" and compute_dtype(q) == torch.bfloat16 and k.shape[-2] <= FP32_MAX_KEYS


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, heads, S, D): each key/value head serves heads / Hkv query heads (GQA)."""
    n = heads // x.shape[1]
    return x if n == 1 else x[:, :, None].expand(-1, -1, n, -1, -1).flatten(1, 2)


def sdpa(q, k, v, mask, scaling: float, causal: bool = True):
    """PyTorch's scaled_dot_product_attention in q's dtype: q (B, H, T, D); k, v (B, Hkv, S, D); ``mask``
    boolean (True: attend) or additive, or None (causal when ``causal`` and T > 1). Returns (B, H, T, D)."""
    H, T = q.shape[1], q.shape[2]
    k, v = _repeat_kv(k, H), _repeat_kv(v, H)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, is_causal=mask is None and causal and T > 1)


def sdpa_in_fp32(q, k, v, mask, scaling: float, causal: bool = True):
    """``sdpa`` on q, k, v rounded to the compute dtype and cast to fp32; the output in the compute dtype."""
    dtype = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        out = sdpa(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), mask, scaling, causal)
    return out.to(dtype)


def attend(q, k, v, mask, scaling: float, causal: bool = True):
    """What a model given ``use`` computes: ``sdpa_in_fp32`` where ``upcast`` holds, ``sdpa`` elsewhere."""
    return (sdpa_in_fp32 if upcast(q, k) else sdpa)(q, k, v, mask, scaling, causal)


def _transformers_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            is_causal=None, **kwargs):
    """transformers' attention interface: its SDPA function, on fp32 copies where ``upcast`` holds."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not upcast(query, key):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    dtype = compute_dtype(query)
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.to(dtype).float(), key.to(dtype).float(), value.to(dtype).float(),
                                              attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    return out.to(dtype), weights


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, _transformers_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as "sdpa"
        _registered = True


def use(model):
    """Give ``model`` (a transformers model, or a module holding them) rlhfkit's attention where it runs
    transformers' SDPA; any other implementation (eager, flash-attention kernels on a GPU) is left as it is.
    Returns the model."""
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel) and getattr(m.config, "_attn_implementation", None) == "sdpa":
            _register()
            m.set_attn_implementation(NAME)
    return model
