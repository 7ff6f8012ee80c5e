"""A sampling (and scoring) engine for Llama-family models on a CPU: the same function as the model's
forward, in less time.

Measured on 2 AMD EPYC cores (AVX2, fp32), SmolLM2-135M, 32 rows (``bench/generate.py --vs-hf``),
transformers' decode step spends its time in small GEMMs (M = rows: MKL re-packs every weight on every
call and reaches ~50 GFLOP/s), in growing its cache with ``torch.cat`` and in per-module overhead; and its
prefill pays for left padding and for the chat template's system turn that every prompt shares. Here:

- each weight is packed once for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``), q/k/v and
  gate/up fused into one GEMM each: ~1.8x the GEMM throughput at M = 32 (a packed copy is kept per
  model and rebuilt only when a parameter changes: ``Tensor._version``);
- the KV cache is allocated once and written in place; attention is SDPA with its own GQA (no
  ``repeat_kv``) under a validity mask;
- the prefix that every prompt shares is run once; each distinct prompt's rest runs in chunks sorted by
  length, so padding costs little; rows that repeat a prompt (n samples of it) copy its cache;
- finished rows leave the batch in groups (``compact_fraction``), not one copy of the cache per row.

Scoring passes (log-probs, values and reward-model scores of given responses, without gradient; not PPO's
pi_old in bf16, which must be the update's own function) run it too:
``response_states`` prefills each distinct prompt once and then feeds every row's response as one block of
tokens (``EngineDecoder.extend``); ``forward.forward_response`` and ``models.RewardModel`` call it where
``applies`` holds. In fp32 that pass is ~1.5x transformers' (MKL's GEMMs are the slower ones); in bf16 both are
GEMM-bound at oneDNN's rate and the engine gains 1.1-1.3x, mostly the shared prefix (``bench/engine_parts.py``,
part 6).

It is used only where it is the same function: a plain ``LlamaForCausalLM`` (no adapters; for scoring also
its bare ``LlamaModel`` backbone, and a value head reading its hidden states) on a CPU with oneDNN present, in fp32, or in bf16 where the CPU computes it natively (AVX-512 BF16, AMX:
then it computes what autocast does, with the weights cast once -- autocast casts every weight on every
call -- and attention in fp32, ``PackedLlama``); everything else takes transformers' path (``rollout``).
Tests (tests/test_engine.py) hold its fp32 logits to the model's own forward within 1e-4, its bf16 logits
to the forward under autocast within bf16 rounding, and its samples to the other path's.
``RLHFKIT_ENGINE=0`` (or ``rlhfkit.engine.ENABLED = False``) turns it off.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F

# the switch (bench/generate.py --no-engine turns it off to show what it saves)
ENABLED = os.environ.get("RLHFKIT_ENGINE", "1") != "0"
# a chunk of the prefill holds at most this many prompt tokens (padding included): a few hundred rows of
# GEMM keep oneDNN near its peak while length-sorted chunks keep padding small
CHUNK_TOKENS = 2048


@torch.autocast("cpu", enabled=False)  # checked in fp32 even when the first caller runs under autocast
def _packed_linear_available() -> bool:
    try:
        w = torch.randn(8, 4)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 4), torch.ops.mkldnn._reorder_linear_weight(w, 2),
                                               None, "none", [], "")
        return bool(torch.allclose(y, torch.ones(2, 4) @ w.t(), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


_PACKED_OK: bool | None = None
_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def applies(model, bf16: bool) -> bool:
    """Whether ``model`` takes the engine: a plain Llama causal LM (or its bare ``LlamaModel`` backbone, for
    hidden states) with fp32 weights on a CPU with oneDNN, in fp32, or in bf16 (what autocast computes)
    where the CPU has native bf16."""
    global _PACKED_OK
    if not ENABLED or type(model).__name__ not in ("LlamaForCausalLM", "LlamaModel"):
        return False
    cfg = model.config
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32 or getattr(cfg, "mlp_bias", False):
        return False
    if model.training and getattr(cfg, "attention_dropout", 0.0):  # the engine has no dropout
        return False
    # every projection a plain Linear: adapters injected into the layers (peft's LoRA, inside a reward
    # model's backbone or a base model taken out of its PeftModel) would be left out of the packed weights
    body = model.model if hasattr(model, "lm_head") else model
    if any(type(m) is not torch.nn.Linear for layer in body.layers
           for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                     layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)):
        return False
    if hasattr(model, "lm_head") and type(model.lm_head) is not torch.nn.Linear:
        return False
    if bf16:
        from rlhfkit.precision import native_bf16

        if not native_bf16("cpu"):  # emulated bf16 is many times slower: transformers' path, as asked
            return False
    if _PACKED_OK is None:
        _PACKED_OK = _packed_linear_available()
    return _PACKED_OK


def _pack(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype).contiguous(), 32)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    # the input in the weights' precision, as autocast casts it (a no-op in fp32)
    return torch.ops.mkldnn._linear_pointwise(x.to(w.dtype), w, b, "none", [], "")


def _rms_norm(norm, h: torch.Tensor) -> torch.Tensor:
    """A Llama RMSNorm as one fused op (``F.rms_norm``: x * rsqrt(mean(x^2) + eps) * weight, on the fp32
    residual stream, as ``LlamaRMSNorm`` computes it in seven), any other norm module as it is."""
    if type(norm).__name__ == "LlamaRMSNorm" and h.dtype == torch.float32:
        return F.rms_norm(h, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(h)


class PackedLlama:
    """A Llama causal LM's weights packed for oneDNN, with the forward pieces the engine runs.

    ``dtype`` bfloat16 computes what the model computes under CPU autocast to bf16: every linear layer in
    bf16 (weights cast once here, not on every call as autocast does); the residual stream, the norms and
    the rotary embedding in fp32; attention reads queries, keys and values rounded to bf16, as autocast's
    does, but runs in fp32: torch's CPU flash-attention kernel is several times slower in bf16 for one query
    per row (the 30 layers' attention of a 32-row decode step: 57.5 ms in bf16, 10.7 ms in fp32 on an AMD
    EPYC with AVX-512 BF16, more than all the GEMMs; ``bench/engine_parts.py --precision bf16``, part 5)."""

    def __init__(self, model, dtype: torch.dtype = torch.float32):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rope = apply_rotary_pos_emb
        # a causal LM, or a bare backbone (no LM head: hidden states only, the reward model's body)
        body = model.model if hasattr(model, "lm_head") else model
        # the pieces used, not the model: the cache below is keyed weakly by the model
        self.rotary, self.norm, self.embed_tokens = body.rotary_emb, body.norm, body.embed_tokens
        cfg = model.config
        self.vocab_size = cfg.vocab_size
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.scale = self.D**-0.5
        self.inter = cfg.intermediate_size
        self.dtype = dtype
        self.versions = self.param_versions(model)
        self.layers = []
        with torch.no_grad():
            for layer in body.layers:
                a, mlp = layer.self_attn, layer.mlp
                qkv_bias = None
                if a.q_proj.bias is not None:
                    qkv_bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach().to(dtype)
                self.layers.append(dict(
                    norm1=layer.input_layernorm, norm2=layer.post_attention_layernorm, act=mlp.act_fn,
                    qkv=_pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), dtype), qkv_bias=qkv_bias,
                    o=_pack(a.o_proj.weight, dtype), o_bias=None if a.o_proj.bias is None else a.o_proj.bias.detach().to(dtype),
                    gate_up=_pack(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), dtype),
                    down=_pack(mlp.down_proj.weight, dtype),
                ))
            self.head = _pack(model.lm_head.weight, dtype) if hasattr(model, "lm_head") else None

    @staticmethod
    def param_versions(model) -> tuple:
        # every in-place change of a parameter (an optimizer step, load_state_dict) bumps its version
        return tuple(p._version for p in model.parameters())

    @classmethod
    def of(cls, model, dtype: torch.dtype = torch.float32) -> "PackedLlama":
        """The model's packed weights, packed again only when a parameter has changed since or another
        precision is asked (one packed copy per live model, freed with it)."""
        cached = _PACKED.get(model)
        if cached is None or cached.dtype != dtype or cached.versions != cls.param_versions(model):
            _PACKED.pop(model, None)  # free the old copy before packing the new one
            cached = _PACKED[model] = cls(model, dtype)
        return cached

    def rope_tables(self, h: torch.Tensor, pos: torch.Tensor):
        """The rotary embedding's (cos, sin) at positions pos (n, T): the same for every layer, so a pass
        computes them once (transformers' forward does too)."""
        return self.rotary(h, pos)

    def qkv(self, layer: dict, h: torch.Tensor, rope):
        """Normed, projected and rotated q (n, H, T, D) and k, v (n, Hkv, T, D) of hidden states h (n, T, d);
        ``rope``: ``rope_tables`` at the positions of h."""
        n, T, _ = h.shape
        return self.split_rotate(self.project_qkv(layer, h), n, T, rope)

    def project_qkv(self, layer: dict, h: torch.Tensor) -> torch.Tensor:
        """The fused q/k/v projection of the normed hidden states, any leading shape (..., d)."""
        return _linear(_rms_norm(layer["norm1"], h), layer["qkv"], layer["qkv_bias"])

    def split_rotate(self, qkv: torch.Tensor, n: int, T: int, rope):
        """``project_qkv``'s output (n, T, .) -> q (n, H, T, D), k and v (n, Hkv, T, D), q and k rotated."""
        H, Hkv, D = self.H, self.Hkv, self.D
        q = qkv[..., : H * D].view(n, T, H, D).transpose(1, 2)
        k = qkv[..., H * D : (H + Hkv) * D].view(n, T, Hkv, D).transpose(1, 2)
        v = qkv[..., (H + Hkv) * D :].view(n, T, Hkv, D).transpose(1, 2)
        q, k = self.rope(q, k, *rope)
        if self.dtype != torch.float32:  # the values autocast's attention reads (kept in fp32: see the class)
            q, k, v = (x.to(self.dtype).float() for x in (q, k, v))
        return q, k, v

    def attend(self, q, keys, values, mask) -> torch.Tensor:
        """Attention output (n, T, H * D), before o_proj. mask: bool (n, 1, T, S), True where a key is visible."""
        n, _, T, _ = q.shape
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return att.transpose(1, 2).reshape(n, T, self.H * self.D)

    def out_and_mlp(self, layer: dict, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """h + o_proj(att), then + the MLP's output; any leading shape (..., d)."""
        h = h + _linear(att, layer["o"], layer["o_bias"])
        gu = _linear(_rms_norm(layer["norm2"], h), layer["gate_up"])
        return h + _linear(layer["act"](gu[..., : self.inter]) * gu[..., self.inter :], layer["down"])

    def attend_and_mlp(self, layer: dict, h, q, keys, values, mask):
        """h + attention output, then + MLP output. mask: bool (n, 1, T, S), True where a key is visible."""
        return self.out_and_mlp(layer, h, self.attend(q, keys, values, mask))

    def logits(self, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits, final normed hidden state) of hidden states h (logits None for a bare backbone)."""
        normed = self.final_norm(h)
        return (None if self.head is None else _linear(normed, self.head)), normed

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return _rms_norm(self.norm, h)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)


class EngineDecoder:
    """Prefill and decode steps for ``rollout.sample_batch`` (the same interface as ``rollout.HFDecoder``).

    Cache layout, per row: [shared prefix (c) | the rest of the prompt, right-aligned (W) | new tokens (T)],
    with ``valid`` marking the real columns; positions count real tokens from 0, as with left padding."""

    compact_fraction = 0.125  # drop finished rows once they are this share of the batch
    last_hidden: torch.Tensor | None = None  # the final normed hidden state behind the last logits (B, d)

    def __init__(self, model, max_new_tokens: int, bf16: bool = False):
        self.w = PackedLlama.of(model, torch.bfloat16 if bf16 else torch.float32)
        self.max_new = max_new_tokens

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)  # the engine sets its own precision; a caller's autocast would run attention in bf16
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, groups=None) -> torch.Tensor:
        """Cache the prompts; returns the logits of each row's next token (B, V) (None for a bare backbone;
        ``last_hidden`` holds the final normed hidden states)."""
        from rlhfkit.forward import distinct_rows

        w = self.w
        B = prompt_ids.shape[0]
        groups = groups if groups is not None else distinct_rows(prompt_ids, prompt_mask)
        first, inverse = groups if groups is not None else (torch.arange(B), torch.arange(B))
        rows = [r[m.bool()] for r, m in zip(prompt_ids[first], prompt_mask[first])]
        if min(len(r) for r in rows) == 0:
            raise ValueError("an empty prompt: every prompt needs at least one token")
        # the prefix every prompt shares (a chat template's system turn), leaving each prompt >= 1 token
        c = 0
        shortest = min(len(r) for r in rows)
        while c < shortest - 1 and all(int(r[c]) == int(rows[0][c]) for r in rows):
            c += 1
        rest = [r[c:] for r in rows]
        W = max(len(r) for r in rest)
        S = c + W + self.max_new
        L = len(w.layers)
        # the prefix's columns and the new tokens' are written before any query reads them; of the prompts'
        # columns a shorter prompt leaves some unwritten, which must hold finite values (a masked key's weight
        # is 0, but 0 x NaN is NaN): those W columns are zeroed, not the whole cache (~0.1 GB at 96 rows)
        self.k = torch.empty(L, B, w.Hkv, S, w.D)
        self.v = torch.empty(L, B, w.Hkv, S, w.D)
        self.k[:, :, :, c : c + W].zero_()
        self.v[:, :, :, c : c + W].zero_()
        self.valid = torch.zeros(B, S, dtype=torch.bool)
        self.valid[:, :c] = True
        self.cur = c + W
        lengths = torch.tensor([len(r) for r in rest])
        self.next_pos = (c + lengths)[inverse].clone()
        for j, i in enumerate(inverse.tolist()):
            self.valid[j, c + W - int(lengths[i]) : c + W] = True

        prefix_kv = self._run_prefix(rows[0][:c]) if c else None
        if prefix_kv is not None:
            for li, (k, v) in enumerate(prefix_kv):
                self.k[li, :, :, :c] = k
                self.v[li, :, :, :c] = v

        logits = None if w.head is None else torch.empty(len(rows), w.vocab_size, dtype=w.dtype)
        hidden = torch.empty(len(rows), w.embed_tokens.weight.shape[1])
        order = torch.argsort(lengths, descending=True).tolist()
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])
            take = max(1, CHUNK_TOKENS // width)
            chunk = order[start : start + take]
            start += len(chunk)
            chunk_logits, hidden[chunk] = self._run_chunk([rest[i] for i in chunk], chunk, c, W, prefix_kv, inverse)
            if logits is not None:
                logits[chunk] = chunk_logits
        self.last_hidden = hidden[inverse]
        return None if logits is None else logits[inverse]

    def _run_prefix(self, ids: torch.Tensor):
        w = self.w
        c = len(ids)
        h = w.embed(ids[None])
        rope = w.rope_tables(h, torch.arange(c)[None])
        mask = torch.ones(c, c, dtype=torch.bool).tril()[None, None]
        kv = []
        for layer in w.layers:
            q, k, v = w.qkv(layer, h, rope)
            kv.append((k, v))
            h = w.attend_and_mlp(layer, h, q, k, v, mask)
        return kv

    def _run_chunk(self, seqs: list, distinct_idx: list, c: int, W: int, prefix_kv, inverse):
        """Run the rest of some distinct prompts (left-padded to the longest), write their keys and values
        into the cache rows that hold them, and return their next-token logits (n, V) and hidden states."""
        w = self.w
        n, width = len(seqs), len(seqs[0])
        ids = torch.zeros(n, width, dtype=torch.long)
        m = torch.zeros(n, width, dtype=torch.bool)
        for j, s in enumerate(seqs):
            ids[j, width - len(s) :] = s
            m[j, width - len(s) :] = True
        pos = (c + m.long().cumsum(1) - 1).clamp(min=c)
        # a query sees the prefix, the real earlier tokens of its own prompt and itself (so a padding
        # query is never fully masked: its finite output is never read)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (causal[None] & m[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
        if c:
            mask = torch.cat([mask.new_ones(n, width, c), mask], dim=2)
        mask = mask[:, None]
        # cache rows of these prompts (a repeated prompt fills every row that repeats it)
        where = {d: j for j, d in enumerate(distinct_idx)}
        dst = [r for r, d in enumerate(inverse.tolist()) if d in where]
        src = torch.tensor([where[d] for d in inverse.tolist() if d in where])
        dst = torch.tensor(dst)
        cols = slice(c + W - width, c + W)
        h = w.embed(ids)
        rope = w.rope_tables(h, pos)
        for li, layer in enumerate(w.layers):
            q, k, v = w.qkv(layer, h, rope)
            self.k[li, dst, :, cols] = k[src]
            self.v[li, dst, :, cols] = v[src]
            if prefix_kv is not None:
                pk, pv = prefix_kv[li]
                keys = torch.cat([pk.expand(n, -1, -1, -1), k], dim=2)
                values = torch.cat([pv.expand(n, -1, -1, -1), v], dim=2)
            else:
                keys, values = k, v
            h = w.attend_and_mlp(layer, h, q, keys, values, mask)
        return w.logits(h[:, -1])

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); returns the next logits (B, V)."""
        w = self.w
        c = self.cur
        if c >= self.k.shape[3]:
            raise RuntimeError("the engine's cache is full: more steps than max_new_tokens")
        self.valid[:, c] = True
        mask = self.valid[:, None, None, : c + 1]
        h = w.embed(tokens[:, None])
        rope = w.rope_tables(h, self.next_pos[:, None])
        for li, layer in enumerate(w.layers):
            q, k, v = w.qkv(layer, h, rope)
            self.k[li, :, :, c] = k[:, :, 0]
            self.v[li, :, :, c] = v[:, :, 0]
            h = w.attend_and_mlp(layer, h, q, self.k[li, :, :, : c + 1], self.v[li, :, :, : c + 1], mask)
        self.cur += 1
        self.next_pos = self.next_pos + 1
        logits, self.last_hidden = w.logits(h[:, -1])
        return logits

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    def extend(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Feed a block of T tokens per row at once after the cached prompts ((B, T), right-padded). Returns the
        final normed hidden states (B, T, d) of those positions. The block is not written to the cache: scoring,
        not sampling, uses it (after a prefill with ``max_new_tokens=0``).

        ``lengths`` (B,): each row's real columns (the first ``lengths[i]``); the per-token work (the GEMMs, the
        norms, the MLP) then runs on the real tokens alone, packed, and only attention on the padded block
        (responses to score differ in length, and a block is as wide as its longest). The padding columns'
        outputs are zeros. Without ``lengths`` every column runs (a padding column's output is then garbage
        that no real column reads)."""
        w = self.w
        B, T = ids.shape
        c = self.cur
        # a column sees the prompt's real tokens and the block's columns up to itself
        mask = torch.cat([self.valid[:, None, :c].expand(B, T, c), torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T)], dim=2)[:, None]
        h = w.embed(ids)
        rope = w.rope_tables(h, self.next_pos[:, None] + torch.arange(T))
        real = None
        if lengths is not None:
            real = (torch.arange(T)[None] < lengths[:, None]).flatten().nonzero().squeeze(1)
            if len(real) == B * T:
                real = None
        if real is None:
            for li, layer in enumerate(w.layers):
                q, k, v = w.qkv(layer, h, rope)
                keys = torch.cat([self.k[li, :, :, :c], k], dim=2)
                values = torch.cat([self.v[li, :, :, :c], v], dim=2)
                h = w.attend_and_mlp(layer, h, q, keys, values, mask)
            return w.final_norm(h)
        hp = h.flatten(0, 1)[real]  # (N, d): the real tokens
        for li, layer in enumerate(w.layers):
            qkv_p = w.project_qkv(layer, hp)
            qkv = qkv_p.new_zeros(B * T, qkv_p.shape[1])
            qkv[real] = qkv_p
            q, k, v = w.split_rotate(qkv.view(B, T, -1), B, T, rope)
            keys = torch.cat([self.k[li, :, :, :c], k], dim=2)
            values = torch.cat([self.v[li, :, :, :c], v], dim=2)
            hp = w.out_and_mlp(layer, hp, w.attend(q, keys, values, mask).flatten(0, 1)[real])
        out = hp.new_zeros(B * T, hp.shape[1])
        out[real] = w.final_norm(hp)
        return out.view(B, T, -1)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only these rows (indices into the current rows, increasing). In place, and only the columns
        written so far: copying the whole cache into a new one (~0.5 GB at 96 rows) took 0.2-0.55 s a time, more
        than the dropped rows saved (``bench/generate.py --vs-hf``: eos mode slower than fixed)."""
        n, c = len(keep), self.cur
        if n and bool((keep[1:] <= keep[:-1]).any()):
            raise ValueError("select: rows must be kept in increasing order")
        for li in range(self.k.shape[0]):  # a layer at a time: the gathered copy stays small
            # keep[j] >= j, and the gather is read whole before row j is written
            self.k[li, :n, :, :c] = self.k[li, keep, :, :c]
            self.v[li, :n, :, :c] = self.v[li, keep, :, :c]
        self.k, self.v = self.k[:, :n], self.v[:, :n]
        self.valid, self.next_pos = self.valid[keep], self.next_pos[keep]


def autocast_bf16() -> bool:
    """Whether the caller runs under CPU autocast to bf16 (the precision the engine then computes in)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def scores(model, prompt_mask: torch.Tensor) -> bool:
    """Whether a scoring pass of ``model`` over these rows takes the engine: no gradient (updates need
    autograd), at least one row, a prompt token in every row, and ``applies`` in the caller's precision."""
    return (not torch.is_grad_enabled() and len(prompt_mask) > 0 and bool(prompt_mask.any(1).all())
            and applies(model, autocast_bf16()))


def right_padded(mask: torch.Tensor) -> bool:
    """Whether each row of ``mask`` (B, T) is its real tokens, then padding: what ``extend``'s ``lengths`` describe."""
    lengths = mask.long().sum(1, keepdim=True)
    return bool((mask.bool() == (torch.arange(mask.shape[1], device=mask.device)[None] < lengths)).all())


# scoring passes run only the responses' real tokens through the GEMMs (off only to measure what that
# saves: bench/engine_parts.py, part 6)
PACK_RESPONSES = True
ROWS_PER_PASS = 64  # rows of one scoring pass: (rows x response tokens) x d activations, and (rows x T) x V logits


def response_states(model, prompt_ids, prompt_mask, response_ids, through_last: bool = False,
                    response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final normed hidden states that score given responses, for ``forward.forward_response`` and the
    reward model: the prompt's last position and the response's first T-1 (the positions whose logits
    predict the T response tokens), or with ``through_last`` all T response positions too ((B, T + 1, d)).

    Each distinct prompt is prefilled once (``EngineDecoder.prefill``: its shared prefix once, length-sorted
    chunks), then each row's response runs as one block (``extend``): GEMMs of rows x T tokens, with the
    weights packed once; with ``response_mask``, when the responses are right-padded (``right_padded``), only
    the real tokens run through the GEMMs and the positions past a response's end hold zeros. In the precision of the caller's autocast
    (bf16, or fp32 without it), as transformers' forward would compute; ``applies(model, bf16)`` must hold."""
    bf16 = autocast_bf16()
    if response_mask is not None and not (PACK_RESPONSES and right_padded(response_mask)):
        response_mask = None  # a mask with holes: every column runs
    out = []
    for i in range(0, len(prompt_ids), ROWS_PER_PASS):
        rows = slice(i, i + ROWS_PER_PASS)
        dec = EngineDecoder(model, 0, bf16)
        dec.prefill(prompt_ids[rows], prompt_mask[rows])
        first = dec.last_hidden[:, None]
        block = response_ids[rows] if through_last else response_ids[rows, :-1]
        lengths = None
        if response_mask is not None:  # the block's real columns: the response's tokens (less its last)
            lengths = response_mask[rows].long().sum(1) - (0 if through_last else 1)
        out.append(torch.cat([first, dec.extend(block, lengths)], dim=1) if block.shape[1] else first)
    return torch.cat(out)


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final normed hidden states (what ``response_states`` returns), in the engine's
    precision (bf16 logits under bf16 autocast, as transformers' head returns them)."""
    w = PackedLlama.of(model, torch.bfloat16 if autocast_bf16() else torch.float32)
    with torch.autocast("cpu", enabled=False):
        return _linear(hidden, w.head)
