"""The CPU sampling engine (rlhfkit.engine) computes the model's own function: its logits equal the
model's forward (shared prefix, repeated prompts, rows dropped midway), and ``sample_batch`` draws the
same samples with it as with transformers' path. The two-level inverse-CDF sampler picks the same token
as one cumsum over the whole vocabulary."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit import engine
from rlhfkit.forward import encode_prompts, forward_response
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout import GenerationConfig, HFDecoder, _inverse_cdf, sample_batch

PROMPTS = ["Tell me about cats.", "Hi", "Write a long story about a dragon who learns to read books.",
           "What is 2 + 2?", "Hi"]  # the chat template gives them a shared prefix; one repeats


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny", trainable=False)


@pytest.fixture(scope="module")
def eos_lm(lm, tok):
    """The tiny model with a large random EOS embedding (tied to its output row; the pad row, zero in the
    tiny model), so that EOS is likely at some steps and not others and rows end at different steps."""
    m = copy.deepcopy(lm)
    with torch.no_grad():
        w = m.model.embed_tokens.weight
        w[tok.eos_token_id] = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0)) * 0.6
    return m


def full_logits(model, ids, mask, bf16=False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, -1]


def test_applies_only_where_it_is_the_same_function(lm):
    from rlhfkit.models import PolicyWithValue

    from rlhfkit.precision import native_bf16

    assert engine.applies(lm, bf16=False)
    assert engine.applies(lm, bf16=True) == native_bf16("cpu")  # emulated bf16: transformers' path
    assert not engine.applies(PolicyWithValue(lm), bf16=False)
    was = engine.ENABLED
    engine.ENABLED = False
    try:
        assert not engine.applies(lm, bf16=False)
    finally:
        engine.ENABLED = was


def test_models_with_injected_adapters_take_transformers_path(lm, tok):
    """LoRA layers injected by peft (a LoRA reward model's backbone, a base model taken out of its
    PeftModel) are not in the packed weights: the engine must not run them, and the scores are the model's."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit.forward import encode_responses
    from rlhfkit.models import LoraSettings, RewardModel

    peft_lm = get_peft_model(copy.deepcopy(lm), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert not engine.applies(peft_lm, bf16=False) and not engine.applies(peft_lm.get_base_model(), bf16=False)
    torch.manual_seed(0)
    rm_model = RewardModel.from_pretrained("tiny", lora=LoraSettings(r=4, alpha=8)).eval()
    backbone, _ = rm_model._parts()
    assert not engine.applies(backbone, bf16=False)
    for name, p in rm_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # adapters that change the scores
    p, pm = encode_prompts(tok, PROMPTS)
    r, rm = encode_responses(tok, RESPONSES)
    args = (torch.cat([p, r], 1), torch.cat([pm, rm], 1))
    with torch.no_grad():
        shared = rm_model(*args, response_start=p.shape[1])
        whole = rm_model(*args)
    torch.testing.assert_close(shared, whole, rtol=0, atol=1e-4)


def test_availability_check_ignores_a_callers_autocast(lm, monkeypatch):
    """The first ``applies`` of a process may come from a scoring pass under bf16 autocast; the one-time
    check of oneDNN's packed linear must not compare a bf16 product with fp32 and switch the engine off."""
    monkeypatch.setattr(engine, "_PACKED_OK", None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine.applies(lm, bf16=False)
    assert engine._PACKED_OK is True


def test_logits_equal_the_models_forward(lm, tok):
    """Prefill (shared prefix, a repeated prompt, prompts of different lengths in length-sorted chunks)
    and decode steps, with rows dropped midway (twice), against full forwards over the same tokens."""
    ids, mask = encode_prompts(tok, PROMPTS)
    was = engine.CHUNK_TOKENS
    engine.CHUNK_TOKENS = 40  # several chunks even for these short prompts
    try:
        dec = engine.EngineDecoder(lm, 6)
        got = dec.prefill(ids, mask)
    finally:
        engine.CHUNK_TOKENS = was
    torch.testing.assert_close(got, full_logits(lm, ids, mask), rtol=0, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        nxt = torch.randint(0, lm.config.vocab_size, (len(ids),), generator=g)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        got = dec.step(nxt)
        torch.testing.assert_close(got, full_logits(lm, ids, mask), rtol=0, atol=1e-4)
        if t in (1, 3):  # two rows finish, then one more (select compacts the cache in place, twice)
            keep = torch.tensor([0, 2, 4] if t == 1 else [0, 2])
            dec.select(keep)
            ids, mask = ids[keep], mask[keep]


def test_bf16_logits_equal_the_models_forward_under_autocast(lm, tok):
    """In bf16 the engine computes what the model computes under CPU autocast (weights cast once instead
    of on every call): the same logits within bf16 rounding."""
    from rlhfkit.precision import native_bf16

    if not native_bf16("cpu"):  # the engine is fp32-only there (engine.applies), and oneDNN refuses bf16 packing
        pytest.skip("oneDNN packs bf16 weights only on CPUs with native bf16")
    ids, mask = encode_prompts(tok, PROMPTS)
    dec = engine.EngineDecoder(lm, 4, bf16=True)
    got = dec.prefill(ids, mask).float()
    assert dec.w.dtype == torch.bfloat16
    ref = full_logits(lm, ids, mask, bf16=True).float()
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-2)
    g = torch.Generator().manual_seed(0)
    for t in range(3):
        nxt = torch.randint(0, lm.config.vocab_size, (len(ids),), generator=g)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        got = dec.step(nxt).float()
        torch.testing.assert_close(got, full_logits(lm, ids, mask, bf16=True).float(), rtol=0, atol=2e-2)
    # an fp32 engine of the same model is packed again, in fp32
    assert engine.EngineDecoder(lm, 4).w.dtype == torch.float32


def test_samples_equal_transformers_path(eos_lm, tok):
    """Same seed, same logits: the engine and HFDecoder draw the same tokens, end the same rows at the
    same steps (the engine drops finished rows in groups, transformers' path one by one), and report
    log-probs equal to a full forward."""
    ids, mask = encode_prompts(tok, PROMPTS + PROMPTS[:3])
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0)
    out = {}
    for name in ("engine", "hf"):
        dec = engine.EngineDecoder(eos_lm, cfg.max_new_tokens) if name == "engine" else HFDecoder(eos_lm, False)
        out[name] = sample_batch(eos_lm, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id,
                                 torch.Generator().manual_seed(3), decoder=dec)
    (e_ids, e_mask, e_lp, e_end), (h_ids, h_mask, h_lp, h_end) = out["engine"], out["hf"]
    lengths = e_mask.sum(1)
    assert e_end.any() and not e_end.all() and len(set(lengths[e_end].tolist())) >= 2, lengths
    assert torch.equal(e_ids, h_ids) and torch.equal(e_mask, h_mask) and torch.equal(e_end, h_end)
    torch.testing.assert_close(e_lp, h_lp, rtol=0, atol=1e-4)
    m = e_mask.bool()
    with torch.no_grad(), engine_off():  # transformers' forward, not the engine's scoring pass
        full = forward_response(eos_lm, ids, mask, e_ids, e_mask)["logprobs"]
    torch.testing.assert_close(full[m], e_lp[m], rtol=0, atol=1e-4)


class engine_off:
    def __enter__(self):
        self.was, engine.ENABLED = engine.ENABLED, False

    def __exit__(self, *exc):
        engine.ENABLED = self.was


RESPONSES = ["It was a good one, I think.", "", "Hello", "2 + 2 is 4, and 4 + 4 is 8.", "Hi there"]


def scoring_passes(lm, policy, rm_model, tok, bf16: bool):
    """forward_response's log-probs (prompts shared, and each row alone), a PolicyWithValue's log-probs
    and values, and a reward model's scores on the same (prompt, response) rows."""
    from rlhfkit.forward import encode_responses

    p, pm = encode_prompts(tok, PROMPTS)
    r, rm = encode_responses(tok, RESPONSES)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        shared = forward_response(lm, p, pm, r, rm, temperature=0.7, share_prompts=True)["logprobs"].float()
        alone = forward_response(lm, p, pm, r, rm, temperature=0.7)["logprobs"].float()
        pv = forward_response(policy, p, pm, r, rm, temperature=0.7, with_values=True)
        scores = rm_model(torch.cat([p, r], 1), torch.cat([pm, rm], 1), response_start=p.shape[1]).float()
    m = rm.bool()
    return shared[m], alone[m], pv["logprobs"].float()[m], pv["values"].float()[m], scores


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_scoring_pass_equals_transformers_path(lm, tok, monkeypatch, bf16):
    """Without gradient, forward_response (plain LM; a PolicyWithValue in fp32) and the reward model's
    scoring run the engine (each distinct prompt prefilled once, each response as one block, rows in several
    passes here): the same log-probs, values and scores as transformers' forward, within 1e-4 in fp32 and
    bf16 rounding under bf16 autocast."""
    from rlhfkit.precision import native_bf16

    if bf16 and not native_bf16("cpu"):
        pytest.skip("the engine runs bf16 only where the CPU computes it natively")
    from rlhfkit.models import PolicyWithValue, RewardModel

    policy = PolicyWithValue(lm)
    torch.nn.init.normal_(policy.value_head.summary.weight, std=0.1)
    torch.manual_seed(0)
    rm_model = RewardModel.from_pretrained("tiny").eval()  # a random head: scores of a few units
    calls = []
    real = engine.response_states
    monkeypatch.setattr(engine, "response_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(engine, "ROWS_PER_PASS", 2)
    got = scoring_passes(lm, policy, rm_model, tok, bf16)
    engine_passes = 3 if bf16 else 4  # every pass took the engine, but PPO's pi_old/values in bf16 (see below)
    assert len(calls) == engine_passes
    with engine_off():
        want = scoring_passes(lm, policy, rm_model, tok, bf16)
    assert len(calls) == engine_passes
    tol = 2e-2 if bf16 else 1e-4
    for name, g, w in zip(("shared", "alone", "policy", "values", "reward"), got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")


def test_scoring_an_empty_response_block_takes_transformers_path(lm, tok, monkeypatch):
    """No response columns at all (T = 0): nothing to score, and no engine pass to shape it."""
    monkeypatch.setattr(engine, "response_states", lambda *a, **k: pytest.fail("the engine ran on T = 0"))
    p, pm = encode_prompts(tok, PROMPTS[:2])
    empty = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        assert forward_response(lm, p, pm, empty, empty)["logprobs"].shape == (2, 0)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_ppo_old_logprobs_are_the_updates_own_function(lm, tok, bf16):
    """PPO recomputes pi_old's log-probs and values without gradient and takes ratios against the update's
    forward with gradient: at the first minibatch they must agree (ratio 1), in bf16 too, where the engine's
    rounding would differ from autocast's."""
    from rlhfkit.forward import encode_responses
    from rlhfkit.models import PolicyWithValue
    from rlhfkit.precision import native_bf16

    if bf16 and not native_bf16("cpu"):
        pytest.skip("bf16 autocast is emulated here")
    policy = PolicyWithValue(copy.deepcopy(lm).requires_grad_(True))
    torch.nn.init.normal_(policy.value_head.summary.weight, std=0.1)
    p, pm = encode_prompts(tok, PROMPTS)
    r, rm = encode_responses(tok, RESPONSES)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            old = forward_response(policy, p, pm, r, rm, temperature=0.7, with_values=True)
        new = forward_response(policy, p, pm, r, rm, temperature=0.7, with_values=True)
    m = rm.bool()
    tol = 1e-4 if not bf16 else 1e-6  # fp32: the engine within 1e-4; bf16: the same function, to the bit
    torch.testing.assert_close(new["logprobs"].detach().float()[m], old["logprobs"].float()[m], rtol=0, atol=tol)
    torch.testing.assert_close(new["values"].detach().float()[m], old["values"].float()[m], rtol=0, atol=tol)


def test_scoring_with_gradient_takes_transformers_path(lm, tok, monkeypatch):
    """Training passes need autograd: the engine is for scoring only."""
    from rlhfkit.forward import encode_responses

    monkeypatch.setattr(engine, "response_states", lambda *a, **k: pytest.fail("the engine ran with gradient"))
    trainable = copy.deepcopy(lm).requires_grad_(True)
    p, pm = encode_prompts(tok, PROMPTS[:2])
    r, rm = encode_responses(tok, RESPONSES[:2])
    lp = forward_response(trainable, p, pm, r, rm)["logprobs"]
    assert lp.requires_grad


def test_sample_batch_takes_the_engine_by_default(lm, tok, monkeypatch):
    calls = []
    real = engine.EngineDecoder.prefill

    def spy(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(engine.EngineDecoder, "prefill", spy)
    ids, mask = encode_prompts(tok, PROMPTS[:2])
    sample_batch(lm, ids, mask, GenerationConfig(max_new_tokens=2), tok.eos_token_id, tok.pad_token_id)
    assert calls == [1]


def test_two_level_inverse_cdf_picks_the_one_level_token():
    """Same uniform numbers: the block-wise search returns the token a full float64 cumsum would, over a
    vocabulary that is not a multiple of the block, with zero-probability entries never drawn."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 1000, generator=g) * 3, -1)
    probs[:, 500:520] = 0.0  # as top-k/top-p leave them
    tok, total = _inverse_cdf(probs, torch.Generator().manual_seed(7))
    u = torch.rand((300, 1), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    ref = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    assert (tok == ref).float().mean() > 0.99  # equal but where float32 block sums move an interval end
    assert (probs.gather(1, tok[:, None]) > 0).all()
    torch.testing.assert_close(total, probs.double().sum(-1), rtol=1e-5, atol=0)


def test_select_refuses_rows_out_of_order(lm, tok):
    """select compacts the cache in place, which is only right when each kept row moves to a lower index."""
    ids, mask = encode_prompts(tok, PROMPTS[:3])
    dec = engine.EngineDecoder(lm, 2)
    dec.prefill(ids, mask)
    with pytest.raises(ValueError, match="increasing"):
        dec.select(torch.tensor([2, 0]))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_packed_block_equals_the_padded_block(lm, tok, bf16):
    """``extend`` with each row's length runs only the real tokens through the GEMMs: at the real columns the
    same hidden states as the padded block (within float rounding: a GEMM's blocking depends on its row
    count), zeros at the padding columns."""
    from rlhfkit.forward import encode_responses
    from rlhfkit.precision import native_bf16

    if bf16 and not native_bf16("cpu"):
        pytest.skip("the engine runs bf16 only where the CPU computes it natively")
    p, pm = encode_prompts(tok, PROMPTS)
    r, rm = encode_responses(tok, RESPONSES)
    lengths = rm.long().sum(1)
    assert len(set(lengths.tolist())) > 2  # rows of several lengths, one of a single token (the EOS)

    def block(with_lengths):
        dec = engine.EngineDecoder(lm, 0, bf16)
        dec.prefill(p, pm)
        return dec.extend(r, lengths if with_lengths else None)

    packed, padded = block(True), block(False)
    real = rm.bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=2e-2 if bf16 else 1e-5)
    assert (packed[~real] == 0).all()


def test_right_padded_masks_only_are_packed():
    """Packing reads a row's length as its first columns: a mask with a hole is not right-padded."""
    assert engine.right_padded(torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]))
    assert not engine.right_padded(torch.tensor([[1, 0, 1]]))
    assert not engine.right_padded(torch.tensor([[0, 1, 1]]))
