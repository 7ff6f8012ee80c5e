"""Rollouts (rlhfkit.rollout) on the tiny random Llama: left-padded prompts, KV-cache sampling where
finished rows leave the batch, masks from lengths although pad == EOS, and the key invariant of PPO:
the log-probs recorded while sampling equal the log-probs that a full forward pass recomputes.

To make rows end at known steps, ``EosFromPosition`` adds a large bias to the EOS logit at every
position id from ``start`` on. It is a function of the model's inputs only, so the KV-cache path
and the full forward see the same distribution: a row whose prompt has n real tokens emits EOS as
response token ``start - n + 1``, so rows with longer prompts end first."""

from __future__ import annotations

import pytest
import torch

from rlhfkit import models
from rlhfkit.models import PolicyWithValue, load_causal_lm, load_tokenizer
from rlhfkit.forward import encode_prompts, encode_responses, format_prompts, forward_response
from rlhfkit.rollout import GenerationConfig, Rollout, decode_responses, generate, sample_batch

# different lengths on purpose: left padding differs per row
PROMPTS = [
    "Hi",
    "Write one sentence about a cat who lives in Paris and eats croissants every day.",
    "Why?",
    "Describe a rainy afternoon.",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny", trainable=False)


@pytest.fixture(scope="module")
def prompts(tok):
    ids, mask = encode_prompts(tok, PROMPTS)
    n = mask.sum(1)
    assert len(set(n.tolist())) == len(PROMPTS), "prompt lengths must differ for these tests"
    return ids, mask


class EosFromPosition(torch.nn.Module):
    """The LM with ``bias`` added to the EOS logit at every position id >= ``start``; records the
    batch size of every call (to see finished rows leave the batch)."""

    def __init__(self, lm, eos_id: int, start: int, bias: float = 50.0):
        super().__init__()
        self.lm, self.eos_id, self.start, self.bias = lm, eos_id, start, bias
        self.batch_sizes: list[int] = []

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kw):
        self.batch_sizes.append(input_ids.shape[0])
        assert position_ids is not None, "callers must pass position ids (left padding)"
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=logits_to_keep, **kw)
        K = out.logits.shape[1]
        hit = (position_ids[:, -K:] >= self.start).to(out.logits.dtype)
        boost = torch.zeros(out.logits.shape[-1], dtype=out.logits.dtype)
        boost[self.eos_id] = self.bias
        out.logits = out.logits + hit[..., None] * boost
        return out


def forced_eos_setup(lm, tok, prompt_mask):
    """A wrapper where the longest prompt ends after 3 tokens, and T such that the shortest prompt's
    row never ends while the second shortest ends exactly at the last step. Returns
    (model, T, expected EOS step per row)."""
    n = prompt_mask.sum(1)
    start = int(n.max()) + 1
    eos_step = start - n + 1  # response index of the forced EOS
    T = int(eos_step.max())  # the shortest prompt's EOS would come one step too late
    return EosFromPosition(lm, tok.eos_token_id, start), T, eos_step


def assert_masks_from_lengths(r_ids, r_mask, logps, ended, eos_id, pad_id):
    """mask is a prefix of ones up to and including the first EOS; pad (== EOS) after; logps 0 there."""
    for b in range(r_ids.shape[0]):
        length = int(r_mask[b].sum())
        assert torch.equal(r_mask[b, :length], torch.ones(length, dtype=r_mask.dtype))
        assert r_mask[b, length:].sum() == 0
        eos_at = (r_ids[b, :length] == eos_id).nonzero().flatten().tolist()
        if ended[b]:
            assert eos_at == [length - 1]  # the EOS is kept in the mask although it is the pad id
        else:
            assert eos_at == []
        assert (r_ids[b, length:] == pad_id).all()
        assert (logps[b, length:] == 0).all()


# ---------------------------------------------------------------------------------------------
# Prompts and responses


def test_chat_template_and_left_padding(tok, prompts):
    ids, mask = prompts
    for b, p in enumerate(PROMPTS):
        text = tok.decode(ids[b][mask[b].bool()])
        assert text.startswith("<|im_start|>") and f"<|im_start|>user\n{p}<|im_end|>" in text
        assert text.endswith("<|im_start|>assistant\n")
    n = mask.sum(1)
    short = int(n.argmin())
    assert mask[short, 0] == 0 and (mask[:, -1] == 1).all()  # padding on the left, prompts end flush
    assert (ids[mask == 0] == tok.pad_token_id).all()
    with_system = format_prompts(tok, ["Hi"], system_prompt="Be brief.")[0]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in with_system

    class Plain:
        chat_template = None

    assert format_prompts(Plain(), ["raw text"]) == ["raw text"]


def test_encode_and_decode_responses(tok):
    ids, mask = encode_responses(tok, ["Hello there", "Hi"])
    eos = tok.eos_token_id
    n0 = len(tok("Hello there", add_special_tokens=False)["input_ids"])
    n1 = len(tok("Hi", add_special_tokens=False)["input_ids"])
    assert ids.shape == (2, n0 + 1) and mask.sum(1).tolist() == [n0 + 1, n1 + 1]
    assert ids[0, n0] == eos and ids[1, n1] == eos  # EOS appended and inside the mask
    assert decode_responses(tok, ids, mask) == ["Hello there", "Hi"]
    ids, mask = encode_responses(tok, ["one two three four five six"], max_tokens=3)
    assert ids.shape == (1, 3) and mask.sum() == 3 and ids[0, -1] == eos
    ids, mask = encode_responses(tok, ["Hello there"], add_eos=False)
    assert mask.sum() == n0 and eos not in ids[0].tolist()


# ---------------------------------------------------------------------------------------------
# Sampling: ends, masks, log-probs


def test_rows_stop_at_eos_and_leave_the_batch(lm, tok, prompts):
    ids, mask = prompts
    model, T, eos_step = forced_eos_setup(lm, tok, mask)
    cfg = GenerationConfig(max_new_tokens=T, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    r_ids, r_mask, logps, ended = sample_batch(model, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id, g)

    expected_ended = eos_step < T
    assert ended.tolist() == expected_ended.tolist()
    assert not bool(ended.all()) and int(ended.sum()) >= 2
    assert r_mask.sum(1).tolist() == torch.minimum(eos_step + 1, torch.tensor(T)).tolist()
    assert r_ids.shape[1] == T
    assert_masks_from_lengths(r_ids, r_mask, logps, ended, tok.eos_token_id, tok.pad_token_id)
    # one call for the prompt, then one per step with only the live rows
    live = [int((eos_step >= t).sum()) for t in range(1, T)]
    assert model.batch_sizes == [len(PROMPTS)] + live
    assert min(model.batch_sizes) < len(PROMPTS)


def test_sampled_logprobs_equal_full_forward(lm, tok, prompts):
    """The KV-cache path (left padding, position ids, rows dropped from the cache) gives the same
    log-probs as one full forward pass over prompt + response, for the plain LM and through the
    value-head wrapper."""
    ids, mask = prompts
    model, T, _ = forced_eos_setup(lm, tok, mask)
    cfg = GenerationConfig(max_new_tokens=T, temperature=1.0)
    g = torch.Generator().manual_seed(1)
    r_ids, r_mask, logps, ended = sample_batch(model, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id, g)
    assert ended.any() and not ended.all()
    m = r_mask.bool()
    with torch.no_grad():
        full = forward_response(model, ids, mask, r_ids, r_mask)["logprobs"]
        torch.testing.assert_close(full[m], logps[m], rtol=0, atol=1e-4)
        pv = PolicyWithValue(model)
        out = forward_response(pv, ids, mask, r_ids, r_mask, with_values=True, with_entropy=True)
    torch.testing.assert_close(out["logprobs"][m], logps[m], rtol=0, atol=1e-4)
    assert out["values"].shape == r_ids.shape and out["entropy"].shape == r_ids.shape
    # the forced EOS really was sampled from a near-certain distribution; the rest from a flat one
    last = r_mask.sum(1) - 1
    rows = torch.arange(len(PROMPTS))
    assert (logps[rows, last][ended] > -1e-3).all() and (out["entropy"][rows, last][ended] < 1e-3).all()
    assert (out["entropy"][:, 0] > 10).all()  # log(49152) = 10.8 for the random tiny model


def test_repeated_prompts_share_one_prefill(lm, tok, prompts):
    """n samples per prompt: the prompt runs once (the model sees the distinct prompts only), and the
    log-probs still equal a full forward pass; forward_response(share_prompts=True) agrees too."""
    ids, mask = prompts
    rep = torch.tensor([0, 0, 0, 2, 1, 2, 0])
    model, T, _ = forced_eos_setup(lm, tok, mask[rep])
    cfg = GenerationConfig(max_new_tokens=T, temperature=1.0)
    r_ids, r_mask, logps, _ = sample_batch(model, ids[rep], mask[rep], cfg, tok.eos_token_id, tok.pad_token_id,
                                           torch.Generator().manual_seed(4))
    assert model.batch_sizes[0] == 3  # the prefill saw 3 distinct prompts for 7 rows
    assert len({tuple(r) for r in r_ids[rep == 0].tolist()}) > 1  # the copies still sample independently
    m = r_mask.bool()
    with torch.no_grad():
        full = forward_response(model, ids[rep], mask[rep], r_ids, r_mask)["logprobs"]
        shared = forward_response(model, ids[rep], mask[rep], r_ids, r_mask, share_prompts=True, with_entropy=True)
    torch.testing.assert_close(full[m], logps[m], rtol=0, atol=1e-4)
    torch.testing.assert_close(shared["logprobs"][m], logps[m], rtol=0, atol=1e-4)
    assert shared["entropy"].shape == r_ids.shape


def test_logprobs_at_the_sampling_temperature(lm, tok, prompts):
    ids, mask = prompts
    model, T, _ = forced_eos_setup(lm, tok, mask)
    cfg = GenerationConfig(max_new_tokens=T, temperature=0.7)
    g = torch.Generator().manual_seed(2)
    r_ids, r_mask, logps, _ = sample_batch(model, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id, g)
    m = r_mask.bool()
    with torch.no_grad():
        same = forward_response(model, ids, mask, r_ids, r_mask, temperature=0.7)["logprobs"]
        other = forward_response(model, ids, mask, r_ids, r_mask, temperature=1.0)["logprobs"]
    torch.testing.assert_close(same[m], logps[m], rtol=0, atol=1e-4)
    assert (other[m] - logps[m]).abs().max() > 1e-2  # the temperature matters: the test can fail


def test_greedy_is_deterministic_and_matches_hf_generate(lm, tok, prompts):
    ids, mask = prompts
    T = 10
    cfg = GenerationConfig(max_new_tokens=T, temperature=0.0)
    a = sample_batch(lm, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    b = sample_batch(lm, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    r_ids, r_mask, logps, ended = a
    assert r_mask.all() and not ended.any()  # the random tiny model does not find its EOS in 10 tokens
    with torch.no_grad():
        hf = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=T,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        # greedy log-probs are those of the unscaled distribution (temperature 1)
        full = forward_response(lm, ids, mask, r_ids, r_mask)["logprobs"]
    assert torch.equal(hf[:, ids.shape[1]:], r_ids)
    torch.testing.assert_close(full, logps, rtol=0, atol=1e-4)
    # each greedy token is the argmax of the recomputed distribution
    pos = (torch.cat([mask, r_mask], 1).cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = lm(input_ids=torch.cat([ids, r_ids], 1), attention_mask=torch.cat([mask, r_mask], 1),
                    position_ids=pos).logits[:, ids.shape[1] - 1 : -1]
    assert torch.equal(logits.argmax(-1), r_ids)


def test_tiny_top_p_and_top_k_1_are_greedy(lm, tok, prompts):
    ids, mask = prompts
    args = (tok.eos_token_id, tok.pad_token_id)
    greedy = sample_batch(lm, ids, mask, GenerationConfig(max_new_tokens=8, temperature=0.0), *args)[0]
    full = sample_batch(lm, ids, mask, GenerationConfig(max_new_tokens=8, temperature=1.0), *args,
                        torch.Generator().manual_seed(0))[0]
    assert not torch.equal(full, greedy)  # plain sampling from the flat tiny model is not greedy
    for cfg in (GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6),
                GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=1)):
        out = sample_batch(lm, ids, mask, cfg, *args, torch.Generator().manual_seed(0))
        assert torch.equal(out[0], greedy), cfg
        # the recorded log-probs stay those of the untruncated distribution at the temperature
        assert (out[2] < -1e-3).all()


def test_seeds(lm, tok):
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0)
    a = generate(lm, tok, PROMPTS, cfg, seed=1)
    b = generate(lm, tok, PROMPTS, cfg, seed=1)
    c = generate(lm, tok, PROMPTS, cfg, seed=2)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.responses == b.responses
    assert not torch.equal(a.response_ids, c.response_ids)


# ---------------------------------------------------------------------------------------------
# generate(): batches, Rollout


def test_generate_in_batches_gives_a_consistent_rollout(lm, tok):
    model, T, _ = forced_eos_setup(lm, tok, encode_prompts(tok, PROMPTS)[1])
    prompts = PROMPTS + ["Tell me a joke about a very small model."]
    cfg = GenerationConfig(max_new_tokens=T, temperature=1.0, batch_size=2)
    seen = []
    model.train()
    ro = generate(model, tok, prompts, cfg, seed=3, progress=seen.append)
    assert model.training  # the mode is restored
    assert seen == [2, 2, 1] and len(ro) == 5 and ro.prompts == prompts
    assert ro.prompt_ids.shape == ro.prompt_mask.shape and ro.prompt_ids.shape[0] == 5
    assert ro.response_ids.shape == ro.response_mask.shape == ro.logprobs.shape
    assert ro.ended.any() and not ro.ended.all()
    assert_masks_from_lengths(ro.response_ids, ro.response_mask, ro.logprobs, ro.ended,
                              tok.eos_token_id, tok.pad_token_id)
    # prompts of batches padded further left still give the same log-probs
    m = ro.response_mask.bool()
    with torch.no_grad():
        full = forward_response(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)["logprobs"]
    torch.testing.assert_close(full[m], ro.logprobs[m], rtol=0, atol=1e-4)
    assert ro.responses == decode_responses(tok, ro.response_ids, ro.response_mask)
    assert torch.equal(ro.lengths, ro.response_mask.sum(1))

    sub = ro.select([4, 0])
    assert isinstance(sub, Rollout) and sub.prompts == [prompts[4], prompts[0]]
    assert torch.equal(sub.response_ids, ro.response_ids[[4, 0]]) and sub.responses == [ro.responses[4], ro.responses[0]]
    assert torch.equal(sub.ended, ro.ended[[4, 0]])


def test_inverse_cdf_sampler_draws_from_the_tempered_distribution():
    """The sampler (one uniform per row, binary search in the CDF) draws tokens with the probabilities of
    softmax(logits / T), never a zero-probability (top-k-filtered) token, and reports log-probs at T."""
    import torch

    from rlhfkit.rollout import GenerationConfig, _sample_token

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(40000, 1)
    g = torch.Generator().manual_seed(0)
    cfg = GenerationConfig(temperature=0.8)
    tok, lp = _sample_token(logits, cfg, g)
    p = torch.softmax(logits[0] / 0.8, -1)
    freq = torch.bincount(tok, minlength=5).double() / len(tok)
    se = (p * (1 - p) / len(tok)).sqrt()
    assert torch.all((freq - p).abs() < 5 * se + 1e-4), (freq, p)
    assert torch.allclose(lp, torch.log(p)[tok].float(), atol=1e-5)
    tok_k, _ = _sample_token(logits, GenerationConfig(temperature=1.0, top_k=2), g)
    assert set(tok_k.tolist()) == {0, 1}
