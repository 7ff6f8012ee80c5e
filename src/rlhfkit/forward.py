"""Encoding prompts and responses, and running a model forward over them: what sampling, scoring and
training share.

Prompts are left-padded and responses right-padded, so that a prompt's last token and a response's
first sit side by side in every row and positions come from the attention mask. ``forward_response``
computes the per-token log-probs (and values, entropy) of given responses, each distinct prompt run
once when several rows repeat it (``distinct_rows``, ``prefill_distinct``, ``continue_from_cache``); without
gradient, on a plain Llama on a CPU, it runs through ``rlhfkit.engine`` (the same values, packed weights).
Sampling itself lives in ``rlhfkit.rollout``.
"""

from __future__ import annotations

import contextlib

import torch

from rlhfkit import ops
from rlhfkit.data import Conversation, check_chat_template


def uses_chat_template(tokenizer, chat_template: str = "auto") -> bool:
    """``auto``: the chat template when the tokenizer has one; ``never``: raw text (as TRL reads a plain
    string prompt)."""
    return check_chat_template(chat_template) == "auto" and bool(getattr(tokenizer, "chat_template", None))


def prompt_format(tokenizer, chat_template: str = "auto") -> str:
    """What a run records about its prompts: "chat template" or "raw text"."""
    return "chat template" if uses_chat_template(tokenizer, chat_template) else "raw text"


def format_prompts(tokenizer, prompts: list, system_prompt: str | None = None, chat_template: str = "auto") -> list[str]:
    """The text the model sees for each prompt: a string becomes one user turn of the chat template (or
    stays raw text, see ``uses_chat_template``); a Conversation is templated whole. ``system_prompt``
    (None: the template's default) is inserted only where the prompt has no system message of its own."""
    templated = uses_chat_template(tokenizer, chat_template)
    out = []
    for p in prompts:
        if isinstance(p, Conversation):
            if not templated:
                why = "chat_template is 'never'" if chat_template == "never" else "the tokenizer has no chat template"
                raise ValueError(f"a conversation prompt needs a chat template, but {why}")
            messages = p.to_messages()
        elif not templated:
            out.append(p)
            continue
        else:
            messages = [{"role": "user", "content": p}]
        if system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return out


def encode_prompts(tokenizer, prompts: list, system_prompt: str | None = None, device="cpu", chat_template: str = "auto"):
    """Format (``format_prompts``) and left-pad prompts. Returns (ids (B, P), mask (B, P))."""
    texts = format_prompts(tokenizer, prompts, system_prompt, chat_template)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def encode_responses(tokenizer, responses: list[str], add_eos: bool = True, max_tokens: int | None = None, device="cpu"):
    """Right-pad response texts (an EOS appended, as the model would have emitted). Returns (ids, mask)."""
    eos = tokenizer.eos_token_id
    rows = []
    for r in responses:
        ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        if max_tokens is not None:
            ids = ids[: max_tokens - (1 if add_eos else 0)]
        rows.append(ids + ([eos] if add_eos else []))
    T = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    """Pad the rows of ``x`` (N, W) with ``value`` to ``width`` columns, on the left (prompts) or the right
    (responses)."""
    if x.shape[1] == width:
        return x
    pad = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def autocast_context(device: torch.device | str, bf16: bool):
    """bf16 autocast where asked; whether to ask is ``rlhfkit.precision``'s decision (bf16 is fast only on
    devices that compute it natively)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# run a prompt that several rows repeat once (off only to measure what it saves: bench/generate.py --no-share)
SHARE_REPEATED_PROMPTS = True


def distinct_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """Rows that repeat a prompt (n samples of one prompt, K responses to rank): ``(first, inverse)``
    with ``prompt_ids[first][inverse] == prompt_ids``, or None when every row is distinct."""
    if not SHARE_REPEATED_PROMPTS:
        return None
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = int(inverse.max().item()) + 1 if len(inverse) else 0
    if n == len(key):
        return None
    rows = torch.arange(len(key), device=key.device)
    first = torch.full((n,), len(key), dtype=torch.long, device=key.device).scatter_reduce(0, inverse, rows, "amin")
    return first, inverse


def prefill_distinct(model, prompt_ids, prompt_mask, groups=None, **kwargs):
    """Run each distinct prompt once with a KV cache, then copy its cache rows to every row that repeats
    it. The prompt is most of a row's tokens here (a 78-token chat prompt, ~35 response tokens), so n
    samples of one prompt cost one prompt pass instead of n. ``model`` is a causal LM (returns
    ``(cache, logits)``) or a bare backbone (returns ``(cache, last_hidden_state)``). Positions come
    from the mask (left padding). ``groups``: ``distinct_rows``' answer, when the caller already has it."""
    groups = groups if groups is not None else distinct_rows(prompt_ids, prompt_mask)
    if groups is not None:
        first, inverse = groups
        prompt_ids, prompt_mask = prompt_ids[first], prompt_mask[first]
    attn = prompt_mask.long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True, **kwargs)
    rows = out.logits if hasattr(out, "logits") else out.last_hidden_state
    cache = out.past_key_values
    if groups is not None:
        repeat_cache_rows(cache, inverse)
        rows = rows.index_select(0, inverse)
    return cache, rows


def repeat_cache_rows(cache, index: torch.Tensor) -> None:
    """``cache.batch_select_indices(index)`` through ``index_select``, whose backward adds the gradients of
    rows that repeat a prompt in index order (``index_add_``). transformers' advanced indexing (``keys[index]``)
    would add them through ``index_put_(accumulate=True)``, which on a CPU with more than one thread uses
    parallel atomic float adds for tensors over 32768 elements: their order, and so the gradient's last bits,
    then follow thread timing (a resumed DPO run differed from the uninterrupted one in the 7th digit under load)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None:
        return cache.batch_select_indices(index)
    for layer in layers:
        if type(layer).batch_select_indices is not DynamicLayer.batch_select_indices:
            layer.batch_select_indices(index)  # a layer of another kind: its own selection
        elif layer.get_seq_length() > 0:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)


def continue_from_cache(model, cache, prompt_mask, ids, mask, **kwargs):
    """Forward ``ids`` (right-padded, (B, T)) after the cached left-padded prompts: positions continue
    from each row's real prompt length."""
    T = ids.shape[1]
    attn = torch.cat([prompt_mask.long(), mask.long()], dim=1)
    pos = prompt_mask.long().sum(1, keepdim=True) + torch.arange(T, device=ids.device)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, **kwargs)


# drop the columns that are padding in every row before a transformers forward (off only to measure what it saves:
# bench/update_padding.py, bench/rl_step.py --no-trim)
TRIM_PADDING = True


def padding_columns(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int] | None:
    """``(first, width)``: the rows' left-padded prompts need their columns from ``first`` on and their
    right-padded responses the first ``width`` columns (at least one), when that drops any column; else None.
    A minibatch drawn from a rollout keeps the whole rollout's widths: its longest prompt and response set them,
    and a minibatch without them pays for columns that are padding in each of its rows."""
    T = response_mask.shape[1]
    used = prompt_mask.bool().any(0).nonzero()
    first = int(used[0]) if len(used) else 0  # no prompt token in any row: nothing to gain, keep the columns
    used = response_mask.bool().any(0).nonzero()
    width = max(int(used[-1]) + 1 if len(used) else 0, 1)
    return (first, width) if first > 0 or width < T else None


def forward_response(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float = 1.0,
                     with_values: bool = False, with_entropy: bool = False, share_prompts: bool = False):
    """Per-token log-probs of the response under ``model`` (and values when it is a PolicyWithValue).

    Only the response positions' logits are computed (``logits_to_keep``): the LM head is a large part
    of a small model's cost and the prompt's logits are never used. Returns a dict with ``logprobs``
    (B, T), optionally ``values`` (B, T) and ``entropy`` (B, T). ``share_prompts``: run each distinct
    prompt once (for several responses to one prompt; no values). It works with gradient too: the
    prefix's keys and values are computed once and indexed out to the rows that repeat it, so autograd
    adds the K rows' gradients in the one prefix pass -- the same gradient as K separate prefix passes,
    for 1/K of their cost (the REINFORCE/RLOO update). Columns that are padding in every row (a minibatch
    of a rollout keeps the rollout's widths) are dropped before a transformers forward (``padding_columns``);
    every output is 0 there, as at the engine's padding.
    """
    T = response_ids.shape[1]
    lm = _engine_lm(model, with_values, with_entropy, prompt_mask) if T else None
    if lm is not None:
        return _engine_forward_response(model, lm, prompt_ids, prompt_mask, response_ids, response_mask, temperature,
                                        with_values)
    cut = padding_columns(prompt_mask, response_mask) if TRIM_PADDING else None
    if cut is not None:
        first, width = cut
        out = forward_response(model, prompt_ids[:, first:], prompt_mask[:, first:], response_ids[:, :width],
                               response_mask[:, :width], temperature, with_values, with_entropy, share_prompts)
        return {k: pad_to(v, T, 0.0, left=False) for k, v in out.items()}
    groups = distinct_rows(prompt_ids, prompt_mask) if share_prompts and not with_values else None
    if groups is not None:
        cache, last = prefill_distinct(model, prompt_ids, prompt_mask, groups, logits_to_keep=1)
        rest = continue_from_cache(model, cache, prompt_mask, response_ids[:, :-1], response_mask[:, :-1]).logits if T > 1 else last[:, :0]
        logits = torch.cat([last, rest], dim=1)
        return _logprobs_entropy(logits, response_ids, temperature, with_entropy)
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attn = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    if with_values:
        logits, values = model(ids, attn, logits_to_keep=T + 1)
    else:
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1,
                       use_cache=False).logits
        values = None
    # logits at position i predict token i+1: the T+1 kept positions are the last prompt token and the
    # response tokens; the first T of them predict the T response tokens
    out = _logprobs_entropy(logits[:, :-1], response_ids, temperature, with_entropy)
    if values is not None:
        out["values"] = values[:, :-1]
    return out


def _engine_lm(model, with_values: bool, with_entropy: bool, prompt_mask):
    """The causal LM whose scoring pass the engine runs (``rlhfkit.engine``), or None for transformers' path:
    without gradient, without entropy, on a plain Llama (or a PolicyWithValue around one) that the engine
    computes in the caller's precision."""
    from rlhfkit import engine

    if with_entropy:
        return None
    # PPO's pi_old and values (the with_values pass) must be the update's own function, which runs transformers'
    # forward with gradient: in fp32 the engine equals it within 1e-4, but in bf16 its rounding differs from
    # autocast's by up to a few tenths of a nat per token, which would move PPO's first ratios off 1 and clip them
    if with_values and engine.autocast_bf16():
        return None
    lm = getattr(model, "lm", None) if with_values else model
    if lm is None or (with_values and not hasattr(model, "value_head")):
        return None
    return lm if engine.scores(lm, prompt_mask) else None


def _engine_forward_response(model, lm, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float,
                             with_values: bool) -> dict:
    """``forward_response`` through the engine: the response positions' hidden states (each distinct
    prompt once; the real tokens alone through the GEMMs when the responses are right-padded), the LM head
    and log-softmax at the mask's positions a block at a time (no (B, T, V) logits of the whole batch, none at
    padding), and the value head on the same hidden states. Padding positions get log-prob 0 (and value 0
    when packed); every caller masks them."""
    from rlhfkit import engine

    B, T = response_ids.shape
    hidden = engine.response_states(lm, prompt_ids, prompt_mask, response_ids, response_mask=response_mask)
    real = response_mask.bool().flatten().nonzero().squeeze(1)  # the only positions any caller reads
    states, labels = hidden.flatten(0, 1)[real], response_ids.flatten()[real]
    logprobs = torch.zeros(B * T)
    for i in range(0, len(real), 1024):  # ~50M logits a block
        logits = engine.head_logits(lm, states[i : i + 1024])
        logprobs[real[i : i + 1024]] = ops.token_logprobs_and_entropy(logits, labels[i : i + 1024], temperature,
                                                                     with_entropy=False)[0].float()
    out = {"logprobs": logprobs.view(B, T)}
    if with_values:
        out["values"] = model.value_head(hidden)
    return out


def _logprobs_entropy(logits, response_ids, temperature: float, with_entropy: bool) -> dict:
    """The response tokens' log-probs (with gradient) and, when asked, the entropy (without), in one
    blockwise pass over the (B, T, V) logits (``ops.token_logprobs_and_entropy``)."""
    logp, entropy = ops.token_logprobs_and_entropy(logits, response_ids, temperature, with_entropy=with_entropy)
    return {"logprobs": logp, **({"entropy": entropy} if with_entropy else {})}
