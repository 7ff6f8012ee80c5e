"""Batched, left-padded sampling with a KV cache, and the forward passes that score what was sampled.

``generate(model, tokenizer, prompts, cfg)`` returns a ``Rollout``: prompt and response token ids, the
response mask built from generated lengths (correct when pad == EOS, as in SmolLM2), and the log-probs
of the sampled tokens at the sampling temperature. Finished rows leave the batch (and the KV cache) as
soon as they emit EOS, so a batch costs what its live rows cost.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from rlhfkit import ops


@dataclass
class GenerationConfig:
    """How to sample. ``temperature=0`` means greedy."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    system_prompt: str | None = None
    chat_template: str = "auto"  # "auto": the tokenizer's chat template when it has one; "never": raw text


@dataclass
class Rollout:
    """One batch of sampled responses.

    prompt_ids: (B, P) left-padded prompt tokens; prompt_mask: (B, P) 1 on real prompt tokens.
    response_ids: (B, T) sampled tokens, pad after the end; response_mask: (B, T) 1 on real response
    tokens, EOS included when it was generated. logprobs: (B, T) log pi(y_t | x, y_<t) at the sampling
    temperature (before top-p truncation), 0 where masked. ended: (B,) True where EOS was emitted.
    """

    prompts: list  # str or data.Conversation
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ended: torch.Tensor
    responses: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1).long()

    def select(self, idx: list[int] | torch.Tensor) -> "Rollout":
        idx = torch.as_tensor(idx, dtype=torch.long)
        t = lambda x: x[idx]  # noqa: E731
        return Rollout(
            prompts=[self.prompts[i] for i in idx.tolist()],
            prompt_ids=t(self.prompt_ids),
            prompt_mask=t(self.prompt_mask),
            response_ids=t(self.response_ids),
            response_mask=t(self.response_mask),
            logprobs=t(self.logprobs),
            ended=t(self.ended),
            responses=[self.responses[i] for i in idx.tolist()] if self.responses else [],
        )


def uses_chat_template(tokenizer, chat_template: str = "auto") -> bool:
    """``auto``: the chat template when the tokenizer has one; ``never``: raw text (as TRL reads a plain
    string prompt)."""
    from rlhfkit.data import check_chat_template

    return check_chat_template(chat_template) == "auto" and bool(getattr(tokenizer, "chat_template", None))


def prompt_format(tokenizer, chat_template: str = "auto") -> str:
    """What a run records about its prompts: "chat template" or "raw text"."""
    return "chat template" if uses_chat_template(tokenizer, chat_template) else "raw text"


def format_prompts(tokenizer, prompts: list, system_prompt: str | None = None, chat_template: str = "auto") -> list[str]:
    """The text the model sees for each prompt: a string becomes one user turn of the chat template (or
    stays raw text, see ``uses_chat_template``); a Conversation is templated whole. ``system_prompt``
    (None: the template's default) is inserted only where the prompt has no system message of its own."""
    from rlhfkit.data import Conversation

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


def _sample_token(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None):
    """logits: (N, V) -> (tokens (N,), log-probs at the sampling temperature (N,))."""
    logits = logits.float()
    if cfg.temperature <= 0:
        logp = torch.log_softmax(logits, -1)
        tok = logp.argmax(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / cfg.temperature if cfg.temperature != 1.0 else logits, -1)
    filtered = logp
    if cfg.top_k and cfg.top_k > 0:
        kth = torch.topk(filtered, min(cfg.top_k, filtered.shape[-1]), dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logp, order = torch.sort(filtered, descending=True, dim=-1)
        cum = sorted_logp.exp().cumsum(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = (cum - sorted_logp.exp()) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    # unnormalised after top-k/top-p: the uniform draw below is scaled by each row's total mass instead
    probs = filtered.exp()
    # inverse-CDF sampling: one uniform number per row instead of one per vocabulary entry. On a CPU,
    # torch.multinomial (and any per-entry random draw) over a 49k vocabulary took a fifth of the sampling
    # time; a float64 cumsum and a binary search take a few milliseconds. Zero-probability tokens have
    # empty intervals and are never drawn.
    cdf = probs.double().cumsum(-1)
    # the uniform numbers come from a CPU generator whatever the device: one seed, one stream, on any machine
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64).to(probs.device) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


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
        cache.batch_select_indices(inverse)
        rows = rows[inverse]
    return cache, rows


def continue_from_cache(model, cache, prompt_mask, ids, mask, **kwargs):
    """Forward ``ids`` (right-padded, (B, T)) after the cached left-padded prompts: positions continue
    from each row's real prompt length."""
    T = ids.shape[1]
    attn = torch.cat([prompt_mask.long(), mask.long()], dim=1)
    pos = prompt_mask.long().sum(1, keepdim=True) + torch.arange(T, device=ids.device)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, **kwargs)


@torch.no_grad()
def sample_batch(model, prompt_ids, prompt_mask, cfg: GenerationConfig, eos_token_id: int, pad_token_id: int,
                 generator: torch.Generator | None = None, bf16: bool = False):
    """Sample up to ``cfg.max_new_tokens`` per row with a KV cache; rows leave the batch at EOS.

    Returns (response_ids (B, T), response_mask (B, T), logprobs (B, T), ended (B,))."""
    device = prompt_ids.device
    B, T = prompt_ids.shape[0], cfg.max_new_tokens
    resp = torch.full((B, T), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, T), dtype=torch.long, device=device)
    logps = torch.zeros((B, T), dtype=torch.float32, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    attn = prompt_mask.long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with autocast_context(device, bf16):
        cache, logits = prefill_distinct(model, prompt_ids, attn, logits_to_keep=1)
    logits = logits[:, -1]
    live = torch.arange(B, device=device)
    next_pos = pos[:, -1] + 1
    for t in range(T):
        tok, lp = _sample_token(logits, cfg, generator)
        resp[live, t], logps[live, t], mask[live, t] = tok, lp, 1
        done = tok == eos_token_id
        ended[live[done]] = True
        if t == T - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            live, tok, attn, next_pos = live[keep], tok[keep], attn[keep], next_pos[keep]
            cache.batch_select_indices(keep)
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        with autocast_context(device, bf16):
            out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                        past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_pos = next_pos + 1
    # trim trailing all-pad columns
    width = int(mask.sum(1).max().item()) if B else 0
    width = max(width, 1)
    return resp[:, :width], mask[:, :width], logps[:, :width], ended


def decode_responses(tokenizer, response_ids, response_mask) -> list[str]:
    """Text of each response without its EOS."""
    out = []
    eos = tokenizer.eos_token_id
    for ids, m in zip(response_ids.tolist(), response_mask.tolist()):
        toks = [t for t, k in zip(ids, m) if k]
        if toks and toks[-1] == eos:
            toks = toks[:-1]
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out


def generate(model, tokenizer, prompts: list[str], cfg: GenerationConfig, *, seed: int | None = None,
             generator: torch.Generator | None = None, bf16: bool = False, progress=None) -> Rollout:
    """Sample one response per prompt in batches of ``cfg.batch_size``; returns one padded Rollout."""
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(0 if seed is None else seed)
    was_training = model.training
    model.eval()
    parts = []
    try:
        # equal chunks of at most batch_size (300 prompts at 96: 4 x 75, not 96, 96, 96 and a slow 12)
        n_chunks = max(1, math.ceil(len(prompts) / cfg.batch_size))
        size = math.ceil(len(prompts) / n_chunks)
        for i in range(0, len(prompts), size):
            chunk = prompts[i : i + size]
            ids, mask = encode_prompts(tokenizer, chunk, cfg.system_prompt, device, cfg.chat_template)
            r_ids, r_mask, r_lp, ended = sample_batch(
                model, ids, mask, cfg, tokenizer.eos_token_id, tokenizer.pad_token_id, generator, bf16
            )
            parts.append((chunk, ids, mask, r_ids, r_mask, r_lp, ended))
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    ro = concat_rollouts(parts, tokenizer.pad_token_id)
    ro.responses = decode_responses(tokenizer, ro.response_ids, ro.response_mask)
    return ro


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def concat_rollouts(parts, pad_id: int) -> Rollout:
    P = max(p[1].shape[1] for p in parts)
    T = max(p[3].shape[1] for p in parts)
    return Rollout(
        prompts=[s for p in parts for s in p[0]],
        prompt_ids=torch.cat([_pad_to(p[1], P, pad_id, True) for p in parts]),
        prompt_mask=torch.cat([_pad_to(p[2], P, 0, True) for p in parts]),
        response_ids=torch.cat([_pad_to(p[3], T, pad_id, False) for p in parts]),
        response_mask=torch.cat([_pad_to(p[4], T, 0, False) for p in parts]),
        logprobs=torch.cat([_pad_to(p[5], T, 0.0, False) for p in parts]),
        ended=torch.cat([p[6] for p in parts]),
    )


def forward_response(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float = 1.0,
                     with_values: bool = False, with_entropy: bool = False, share_prompts: bool = False):
    """Per-token log-probs of the response under ``model`` (and values when it is a PolicyWithValue).

    Only the response positions' logits are computed (``logits_to_keep``): the LM head is a large part
    of a small model's cost and the prompt's logits are never used. Returns a dict with ``logprobs``
    (B, T), optionally ``values`` (B, T) and ``entropy`` (B, T). ``share_prompts``: run each distinct
    prompt once (for several responses to one prompt; no values).
    """
    T = response_ids.shape[1]
    groups = distinct_rows(prompt_ids, prompt_mask) if share_prompts and not with_values else None
    if groups is not None:
        cache, last = prefill_distinct(model, prompt_ids, prompt_mask, groups, logits_to_keep=1)
        rest = continue_from_cache(model, cache, prompt_mask, response_ids[:, :-1], response_mask[:, :-1]).logits if T > 1 else last[:, :0]
        logits = torch.cat([last, rest], dim=1)
        out = {"logprobs": ops.token_logprobs(logits, response_ids, temperature=temperature)}
        if with_entropy:
            with torch.no_grad():
                out["entropy"] = ops.entropy_from_logits(logits.detach().float() / temperature)
        return out
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
    logits = logits[:, :-1]
    out = {"logprobs": ops.token_logprobs(logits, response_ids, temperature=temperature)}
    if values is not None:
        out["values"] = values[:, :-1]
    if with_entropy:
        with torch.no_grad():
            out["entropy"] = ops.entropy_from_logits(logits.detach().float() / temperature)
    return out
