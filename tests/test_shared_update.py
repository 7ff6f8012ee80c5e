"""The REINFORCE/RLOO update runs each distinct prompt of a minibatch once, with gradient, and expands its
keys and values to the prompt's K samples (``forward_response(share_prompts=True)``). It must compute
what K separate prompt passes compute: the same log-probs, the same loss and the same parameter
gradients (fp32, tiny model), and a whole trainer step must give the same metrics and weights with
sharing on and off."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit import forward, ops
from rlhfkit.forward import encode_prompts, forward_response
from rlhfkit.models import LoraSettings, load_causal_lm, load_tokenizer

PROMPTS = ["Hi", "Write one sentence about a cat who lives in Paris.", "Describe a rainy afternoon."]
K = 3


def _batch(tok, V: int, seed: int = 0):
    """K rows per prompt side by side, random right-padded responses of different lengths."""
    ids, mask = encode_prompts(tok, PROMPTS)
    rep = torch.arange(len(PROMPTS)).repeat_interleave(K)
    g = torch.Generator().manual_seed(seed)
    T = 7
    r_ids = torch.randint(0, V, (len(rep), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(rep),), generator=g)
    lengths[0] = T
    r_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    r_ids = torch.where(r_mask.bool(), r_ids, torch.full_like(r_ids, tok.pad_token_id))
    adv = torch.randn(len(rep), generator=g)
    return ids[rep], mask[rep], r_ids, r_mask, adv


def _loss_and_grads(model, batch, share: bool, temperature: float):
    p_ids, p_mask, r_ids, r_mask, adv = batch
    model.zero_grad()
    out = forward_response(model, p_ids, p_mask, r_ids, r_mask, temperature=temperature, with_entropy=True,
                           share_prompts=share)
    loss = ops.reinforce_loss(out["logprobs"], r_mask.float(), adv)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_pass_gives_the_same_logprobs_and_gradients(lora):
    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = load_causal_lm("tiny", trainable=True, lora=LoraSettings(r=4) if lora else None)
    if lora:  # LoRA's B starts at 0: move it so the adapters change the function and get real gradients
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    batch = _batch(tok, model.config.vocab_size)
    assert forward.distinct_rows(batch[0], batch[1]) is not None  # the batch really repeats prompts
    full, loss_full, g_full = _loss_and_grads(model, batch, share=False, temperature=0.8)
    shared, loss_shared, g_shared = _loss_and_grads(model, batch, share=True, temperature=0.8)
    m = batch[3].bool()
    torch.testing.assert_close(shared["logprobs"][m], full["logprobs"][m], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared["entropy"][m], full["entropy"][m], rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_shared, loss_full, rtol=0, atol=1e-5)
    assert g_full.keys() == g_shared.keys() and len(g_full) > 0
    for n in g_full:
        scale = max(1.0, g_full[n].abs().max().item())
        torch.testing.assert_close(g_shared[n], g_full[n], rtol=0, atol=1e-5 * scale, msg=n)
    assert any(g.abs().max() > 1e-3 for g in g_full.values())  # the gradients are not trivially zero


def test_the_shared_prompt_pass_adds_repeated_rows_in_a_fixed_order():
    """Advanced indexing's backward (IndexBackward: index_put_ with accumulate) adds the K rows' gradients with
    parallel atomic float adds on a CPU of 2+ threads, in an order that changed the last bits from run to run
    (a resumed DPO run drifted from the uninterrupted one); index_select's backward adds them in index order."""
    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = load_causal_lm("tiny", trainable=True)
    p_ids, p_mask, r_ids, r_mask, adv = _batch(tok, model.config.vocab_size)
    out = forward_response(model, p_ids, p_mask, r_ids, r_mask, share_prompts=True)
    loss = ops.reinforce_loss(out["logprobs"], r_mask.float(), adv)
    seen, todo, names = set(), [loss.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    assert "IndexSelectBackward0" in names, names  # the shared rows really are expanded in this graph
    assert not any(n.startswith("IndexBackward") for n in names), sorted(names)


def test_minibatches_hold_whole_groups():
    from rlhfkit.train.reinforce import whole_groups

    assert [whole_groups(n, 4) for n in (1, 3, 4, 7, 8, 16, 18)] == [4, 4, 4, 4, 8, 16, 16]
    assert whole_groups(5, 1) == 5


def _one_step(tmp_path, name, share: bool, monkeypatch):
    from rlhfkit.config import ReinforceConfig
    from rlhfkit.train.reinforce import ReinforceTrainer

    monkeypatch.setattr(forward, "SHARE_REPEATED_PROMPTS", share)
    prompts = [f"Say words {i}, please." + " really" * i for i in range(8)]  # different lengths: left padding varies
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    cfg = ReinforceConfig(model="tiny", prompts=str(pf), out=str(tmp_path / name), steps=1, batch_size=4,
                          samples_per_prompt=4, minibatch_size=6, lr=1e-3, max_new_tokens=6, kl_coef=0.1,
                          baseline="leave_one_out", grad_variance_samples=0, seed=3,
                          mixed_precision="no")  # fp32 equalities, on CPUs with native bf16 too

    def reward(ps, rs):
        return torch.tensor([len(r) / 10.0 for r in rs])

    torch.manual_seed(0)
    trainer = ReinforceTrainer(cfg, reward, prompts, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    grads, step = {}, trainer.optimizer.step

    def recording_step(*a, **kw):  # the gradient the update accumulated, just before the optimiser uses it
        grads.update({n: p.grad.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return step(*a, **kw)

    trainer.optimizer.step = recording_step
    res = trainer.step()
    after = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    return res["metrics"], before, after, trainer.last_samples, grads


def test_a_trainer_step_is_the_same_with_and_without_sharing(tmp_path, monkeypatch):
    m_off, before_off, after_off, samples_off, g_off = _one_step(tmp_path, "off", False, monkeypatch)
    m_on, before_on, after_on, samples_on, g_on = _one_step(tmp_path, "on", True, monkeypatch)
    for n in before_off:
        assert torch.equal(before_off[n], before_on[n]), n
    # sampling draws the same tokens: the shared prefill only changes the last bits of the logits
    assert [s[1] for s in samples_off] == [s[1] for s in samples_on]
    assert m_off.keys() == m_on.keys()
    for k in m_off:
        assert m_on[k] == pytest.approx(m_off[k], rel=1e-4, abs=1e-5), k
    assert g_off.keys() == g_on.keys() and len(g_off) > 0
    for n in g_off:
        scale = max(1.0, g_off[n].abs().max().item())
        torch.testing.assert_close(g_on[n], g_off[n], rtol=0, atol=1e-5 * scale, msg=n)
    # AdamW's first step is about lr * g / (|g| + eps): entries whose gradient is near 0 turn last-bit
    # differences of g into up to ~1-2% of lr (1.06% seen with the sampling engine), so the weights are compared
    # at that scale (lr = 1e-3)
    moved = 0
    for n in after_off:
        torch.testing.assert_close(after_on[n], after_off[n], rtol=0, atol=2e-5, msg=n)
        moved += int(not torch.equal(after_off[n], before_off[n]))
    assert moved > 0  # the step changed the weights
