"""Fluency of a response: its mean per-token log-likelihood under a frozen causal LM.

``ModelFluency(model, tokenizer)`` is a ``fluency_fn(prompts, responses) -> np.ndarray`` for
``rlhfkit.annotators.Panel``. Pass the frozen *initial* policy (not the one being trained),
so that RL cannot raise its own fluency score. ``InitialModelFluency(model_name, format_prompt,
bf16)`` is the pipeline's: it loads the initial model itself on first use and runs the batched,
shared-prefix forward of ``rlhfkit.forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["ModelFluency", "InitialModelFluency"]


class ModelFluency:
    """Mean log p(response tokens | prompt tokens) under a causal LM, one value per pair.

    model: any HF causal LM (``model(input_ids, attention_mask).logits``); tokenizer: its
    tokenizer. The context is the tokenizer's chat template applied to one user message
    (``format_prompt(prompt)``, or the prompt itself) with ``add_generation_prompt=True``;
    without a chat template it is the tokenized prompt. The response is tokenized alone
    (no special tokens) and appended. Returns (N,) float64; nan for an empty response
    (no tokens to average; the panel treats nan as the least fluent value).

    batch_size: pairs per forward pass (sorted by length to waste little padding);
    max_length: context tokens are cut from the left so that context + response fit.
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        format_prompt: Callable[[str], str] | None = None,
        max_length: int = 1024,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.format_prompt = format_prompt
        self.max_length = max_length

    def context_ids(self, prompt: str) -> list[int]:
        """Token ids that precede the response."""
        text = self.format_prompt(prompt) if self.format_prompt is not None else prompt
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            # The template already holds any BOS/special tokens it wants.
            return list(tok(rendered, add_special_tokens=False)["input_ids"])
        return list(tok(text)["input_ids"])

    def response_ids(self, response: str) -> list[int]:
        return list(self.tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = np.full(len(responses), np.nan)
        seqs: list[tuple[int, list[int], int]] = []  # (index, ids, response length)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            resp = self.response_ids(r)[: self.max_length - 1]
            if not resp:
                continue
            ctx = self.context_ids(p)
            ctx = ctx[-(self.max_length - len(resp)) :] if ctx else ctx
            if not ctx:  # the first response token needs something to condition on
                bos = self.tokenizer.bos_token_id
                ctx = [bos if bos is not None else resp[0]]
            seqs.append((i, ctx + resp, len(resp)))
        seqs.sort(key=lambda s: len(s[1]))
        was_training = self.model.training
        self.model.eval()  # dropout off
        try:
            device = next(self.model.parameters()).device
            for b in range(0, len(seqs), self.batch_size):
                chunk = seqs[b : b + self.batch_size]
                width = max(len(s[1]) for s in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                attn = torch.zeros(len(chunk), width, dtype=torch.long)
                for j, (_, toks, _) in enumerate(chunk):
                    ids[j, : len(toks)] = torch.tensor(toks)
                    attn[j, : len(toks)] = 1  # right padding: positions of real tokens are unchanged
                logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
                logits = logits[:, :-1].float()
                # log_softmax at the labels only: gather minus logsumexp, no (B, T, V) copy
                picked = logits.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
                tok_logp = (picked - torch.logsumexp(logits, dim=-1)).cpu()
                for j, (i, toks, n_resp) in enumerate(chunk):
                    end = len(toks) - 1  # tok_logp[t] scores token t + 1
                    out[i] = tok_logp[j, end - n_resp : end].double().mean().item()
        finally:
            self.model.train(was_training)
        return out


class InitialModelFluency:
    """Mean log p(response tokens | chat-framed opening) under the frozen initial model (the panel's
    fluency feature), computed with our batched forward: response-only logits, bf16 when asked, each
    distinct opening run once for all its responses, and every (opening, response) scored once per run
    (the evaluation asks for the reference's and each method's fluency several times)."""

    def __init__(self, model: str, format_prompt, bf16: bool, batch_size: int = 64):
        self.model_name, self.format_prompt, self.bf16, self.batch_size = model, format_prompt, bf16, batch_size
        self._lm = self._tok = None
        self._memo: dict[tuple[str, str], float] = {}

    def _todo(self, openings, responses) -> list[tuple[str, str]]:
        """The pairs not remembered yet, non-empty, sorted (grouped by opening), each once."""
        return sorted({k for k in zip(openings, responses) if k not in self._memo and k[1].strip()})

    @torch.no_grad()
    def _score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Mean log-likelihood of each (opening, response) pair, in batches of ``batch_size`` from the first."""
        from rlhfkit.models import load_frozen_lm, load_tokenizer
        from rlhfkit.forward import autocast_context, encode_prompts, encode_responses, forward_response

        if pairs and self._lm is None:
            self._tok = load_tokenizer(self.model_name)
            self._lm = load_frozen_lm(self.model_name, self.bf16).eval()
        out: list[float] = []
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            device = next(self._lm.parameters()).device
            p_ids, p_mask = encode_prompts(self._tok, [self.format_prompt(o) for o, _ in chunk], device=device)
            r_ids, r_mask = encode_responses(self._tok, [r for _, r in chunk], add_eos=False, max_tokens=128, device=device)
            with autocast_context(device, self.bf16):
                lp = forward_response(self._lm, p_ids, p_mask, r_ids, r_mask, share_prompts=True)["logprobs"].float()
            out += ((lp * r_mask).sum(1) / r_mask.sum(1).clamp(min=1)).double().tolist()
        return out

    def __call__(self, openings, responses) -> np.ndarray:
        keys = list(zip(openings, responses))
        todo = self._todo(openings, responses)
        if todo:
            self._memo.update(zip(todo, self._score(todo)))
        return np.array([self._memo.get(k, np.nan) for k in keys], dtype=float)

    def prefetch(self, openings, responses, processes) -> None:
        """Score the pairs not remembered yet split between ``processes`` (``rlhfkit.processes.Processes``),
        and remember every one of them on every process, so that later calls on any process (the panel's
        judging on the main process) find them. Called by every process with the same pairs. The main
        process's memory decides what is left to score, and the parts are cut at ``batch_size``: each
        process runs the batches one process would run, so the values are those of one process to the
        last bit (and on one process this is the call the panel would have made first)."""
        todo = processes.from_main(lambda: self._todo(openings, responses))
        values = processes.map_parts(self._score, todo, align=self.batch_size)
        for k, v in zip(todo, values):
            self._memo.setdefault(k, v)
