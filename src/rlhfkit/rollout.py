"""Batched, left-padded sampling with a KV cache.

``generate(model, tokenizer, prompts, cfg)`` returns a ``Rollout``: prompt and response token ids, the
response mask built from generated lengths (correct when pad == EOS, as in SmolLM2), and the log-probs
of the sampled tokens at the sampling temperature. Finished rows leave the batch (and the KV cache) as
soon as they emit EOS, so a batch costs what its live rows cost. Encoding and the forward passes that
score what was sampled are in ``rlhfkit.forward``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from rlhfkit.forward import autocast_context, encode_prompts, pad_to, prefill_distinct


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
    hidden: torch.Tensor | None = None  # (B, T, d) final hidden states behind the tokens, when asked and kept

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
            hidden=None if self.hidden is None else t(self.hidden),
        )


def _sample_token(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None):
    """logits: (N, V) -> (tokens (N,), log-probs at the sampling temperature (N,))."""
    logits = logits.float()
    if cfg.temperature <= 0:
        logp = torch.log_softmax(logits, -1)
        tok = logp.argmax(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    x = logits / cfg.temperature if cfg.temperature != 1.0 else logits
    if (cfg.top_k and cfg.top_k > 0) or cfg.top_p < 1.0:
        logp = torch.log_softmax(x, -1)
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
        # unnormalised after top-k/top-p: the draw is scaled by each row's total mass instead
        tok, _ = _inverse_cdf(filtered.exp(), generator)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    # no truncation: one fused softmax serves the draw and the token's log-prob (log of its probability:
    # equal to log_softmax within float32 rounding; a token whose probability underflows is never drawn)
    probs = torch.softmax(x, -1)
    tok, _ = _inverse_cdf(probs, generator)
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1).log()


_CDF_BLOCK = 256


def row_stream(seed: int, row: int) -> torch.Generator:
    """The random stream of row ``row`` of a sample seeded with ``seed`` (``sample_grouped``): a CPU generator
    seeded with the first 8 bytes of SHA-256("rlhfkit-row:{seed}:{row}") (top bit cleared). A row that
    keeps its own stream draws the same numbers whichever batch, or process, it is sampled in."""
    digest = hashlib.sha256(f"rlhfkit-row:{int(seed)}:{int(row)}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _uniforms(n: int, generator) -> torch.Tensor:
    """(n, 1) float64 uniforms: from one generator in row order, or one from each row's own generator (a list)."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.rand((1, 1), generator=g, dtype=torch.float64) for g in generator])
    return torch.rand((n, 1), generator=generator, dtype=torch.float64)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None):
    """One token per row of ``probs`` (N, V) (unnormalised, >= 0) by inverse-CDF sampling; returns
    (tokens (N,), row totals (N,) float64).

    One uniform number per row: on a CPU, torch.multinomial (any per-entry random draw) over a 49k
    vocabulary took a fifth of the sampling time. The CDF is taken in two levels, sums of blocks of
    256 entries and a float64 cumsum inside the chosen block only: the same token as one cumsum over the
    whole vocabulary (up to float rounding at interval ends), for a fraction of its cost (a (96, 49k) float64 cumsum
    was ~45 ms a step). Zero-probability tokens have empty intervals and are never drawn."""
    N, V = probs.shape
    nb = -(-V // _CDF_BLOCK)
    if nb * _CDF_BLOCK != V:
        probs = torch.nn.functional.pad(probs, (0, nb * _CDF_BLOCK - V))
    blocks = probs.view(N, nb, _CDF_BLOCK)
    # block sums in float32 (a float64 sum copies the whole row: 20 ms at (96, 49k)), their cumsum in float64
    block_cdf = blocks.sum(-1).double().cumsum(-1)  # (N, nb)
    # the uniform numbers come from a CPU generator whatever the device: one seed, one stream, on any machine
    u = _uniforms(N, generator).to(probs.device) * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, u).clamp(max=nb - 1)  # (N, 1)
    before = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inside = blocks.gather(1, b[:, :, None].expand(-1, -1, _CDF_BLOCK)).squeeze(1)  # (N, block)
    j = torch.searchsorted(inside.double().cumsum(-1), u - before)
    # rounding can put the target past the block's last entry: take its last non-zero one
    last = torch.where(inside > 0, torch.arange(_CDF_BLOCK, device=probs.device), 0).max(-1, keepdim=True).values
    tok = (b * _CDF_BLOCK + torch.minimum(j, last)).squeeze(-1)
    return tok, block_cdf[:, -1]


class HFDecoder:
    """transformers' forward with its DynamicCache: every model, device and precision. A finished row
    leaves the cache at once (``compact_fraction = 0``)."""

    compact_fraction = 0.0
    last_hidden = None  # not kept on this path: callers that need hidden states recompute them

    def __init__(self, model, bf16: bool):
        self.model, self.bf16 = model, bf16

    def prefill(self, prompt_ids, prompt_mask, groups=None):
        self.attn = prompt_mask.long()
        self.next_pos = self.attn.sum(1)
        with autocast_context(prompt_ids.device, self.bf16):
            self.cache, logits = prefill_distinct(self.model, prompt_ids, self.attn, groups, logits_to_keep=1)
        return logits[:, -1]

    def step(self, tokens):
        self.attn = torch.cat([self.attn, self.attn.new_ones((self.attn.shape[0], 1))], dim=1)
        with autocast_context(tokens.device, self.bf16):
            out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=self.next_pos[:, None],
                             past_key_values=self.cache, use_cache=True)
        self.cache, self.next_pos = out.past_key_values, self.next_pos + 1
        return out.logits[:, -1]

    def select(self, keep):
        self.cache.batch_select_indices(keep)
        self.attn, self.next_pos = self.attn[keep], self.next_pos[keep]


def decoder_for(model, bf16: bool, max_new_tokens: int):
    """The engine (``rlhfkit.engine``) where it computes the same function faster, else transformers'."""
    from rlhfkit import engine

    if engine.applies(model, bf16):
        return engine.EngineDecoder(model, max_new_tokens, bf16)
    return HFDecoder(model, bf16)


@torch.no_grad()
def sample_batch(model, prompt_ids, prompt_mask, cfg: GenerationConfig, eos_token_id: int, pad_token_id: int,
                 generator: torch.Generator | None = None, bf16: bool = False, decoder=None, keep_hidden: bool = False):
    """Sample up to ``cfg.max_new_tokens`` per row with a KV cache; rows leave the batch at EOS.

    ``keep_hidden``: also return the final normed hidden state behind each sampled token (B, T, d) -- what
    a value head reads -- or None where the decoder does not keep it (transformers' path).
    Only the rows still sampling draw random numbers, in row order, whichever decoder runs (so the
    engine and transformers' path draw the same samples from the same logits).
    Returns (response_ids (B, T), response_mask (B, T), logprobs (B, T), ended (B,)), and the hidden
    states as a fifth element when ``keep_hidden``."""
    device = prompt_ids.device
    B, T = prompt_ids.shape[0], cfg.max_new_tokens
    resp = torch.full((B, T), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, T), dtype=torch.long, device=device)
    logps = torch.zeros((B, T), dtype=torch.float32, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    dec = decoder if decoder is not None else decoder_for(model, bf16, T)
    logits = dec.prefill(prompt_ids, prompt_mask)
    hidden = None
    if keep_hidden and dec.last_hidden is not None:
        hidden = torch.zeros((B, T, dec.last_hidden.shape[-1]), dtype=torch.float32, device=device)
    rows = torch.arange(B, device=device)  # the batch row of each decoder row
    alive = torch.ones(B, dtype=torch.bool, device=device)  # decoder rows still sampling
    for t in range(T):
        idx = alive.nonzero().squeeze(-1)
        live = rows[idx]
        # one stream per row (a list): the live rows' own streams, in row order
        gen = [generator[i] for i in live.tolist()] if isinstance(generator, (list, tuple)) else generator
        tok, lp = _sample_token(logits if len(idx) == len(alive) else logits[idx], cfg, gen)
        resp[live, t], logps[live, t], mask[live, t] = tok, lp, 1
        if hidden is not None:
            hidden[live, t] = dec.last_hidden[idx].float()
        done = tok == eos_token_id
        ended[live[done]] = True
        alive[idx[done]] = False
        n_alive = len(idx) - int(done.sum())
        if t == T - 1 or n_alive == 0:
            break
        feed = torch.full((len(alive),), pad_token_id, dtype=torch.long, device=device)
        feed[idx] = tok
        if len(alive) - n_alive > dec.compact_fraction * len(alive):
            keep = alive.nonzero().squeeze(-1)
            dec.select(keep)
            rows, alive, feed = rows[keep], alive[keep], feed[keep]
        logits = dec.step(feed)
    # trim trailing all-pad columns
    width = int(mask.sum(1).max().item()) if B else 0
    width = max(width, 1)
    out = (resp[:, :width], mask[:, :width], logps[:, :width], ended)
    return out + (None if hidden is None else hidden[:, :width],) if keep_hidden else out


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
             generator: torch.Generator | list[torch.Generator] | None = None, bf16: bool = False, progress=None,
             keep_hidden: bool = False) -> Rollout:
    """Sample one response per prompt in batches of ``cfg.batch_size``; returns one padded Rollout
    (with ``hidden`` when ``keep_hidden`` and the sampler kept it: see ``sample_batch``). ``generator``: one
    stream for the whole sample, or a list of one per prompt (``row_stream``: each row's draws then do not
    depend on the batch it is in)."""
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
            r_ids, r_mask, r_lp, ended, *hid = sample_batch(
                model, ids, mask, cfg, tokenizer.eos_token_id, tokenizer.pad_token_id,
                generator[i : i + size] if isinstance(generator, (list, tuple)) else generator, bf16,
                keep_hidden=keep_hidden,
            )
            parts.append((chunk, ids, mask, r_ids, r_mask, r_lp, ended, hid[0] if hid else None))
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    ro = concat_rollouts(parts, tokenizer.pad_token_id)
    ro.responses = decode_responses(tokenizer, ro.response_ids, ro.response_mask)
    return ro


def concat_rollouts(parts, pad_id: int) -> Rollout:
    P = max(p[1].shape[1] for p in parts)
    T = max(p[3].shape[1] for p in parts)
    return Rollout(
        prompts=[s for p in parts for s in p[0]],
        prompt_ids=torch.cat([pad_to(p[1], P, pad_id, True) for p in parts]),
        prompt_mask=torch.cat([pad_to(p[2], P, 0, True) for p in parts]),
        response_ids=torch.cat([pad_to(p[3], T, pad_id, False) for p in parts]),
        response_mask=torch.cat([pad_to(p[4], T, 0, False) for p in parts]),
        logprobs=torch.cat([pad_to(p[5], T, 0.0, False) for p in parts]),
        ended=torch.cat([p[6] for p in parts]),
        hidden=None if any(p[7] is None for p in parts)
        else torch.cat([torch.nn.functional.pad(p[7], (0, 0, 0, T - p[7].shape[1])) for p in parts]),
    )
