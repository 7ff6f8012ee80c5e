"""A transformers forward over responses drops the columns that are padding in every row (``forward.padding_columns``):
a minibatch of a rollout keeps the rollout's widths, set by its longest prompt and response. Dropping them must not
change what is computed: the same log-probs, entropy, values, loss and parameter gradients at every real position
(fp32, tiny model), zeros at the dropped columns, and a whole PPO step the same with it on and off."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit import forward, ops
from rlhfkit.forward import encode_prompts, forward_response, padding_columns
from rlhfkit.models import PolicyWithValue, load_causal_lm, load_tokenizer

PROMPTS = ["Hi", "Write one sentence about a cat who lives in Paris.", "Describe a rainy afternoon.", "Go on."]


def test_padding_columns_finds_the_columns_every_row_pads():
    # left-padded prompts (2 leading columns padding in both rows), right-padded responses (last 2 padding)
    p = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    r = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert padding_columns(p, r) == (2, 2)
    assert padding_columns(torch.ones(2, 3), torch.ones(2, 4)) is None  # nothing to drop
    assert padding_columns(torch.ones(2, 3), r) == (0, 2)
    assert padding_columns(p, torch.ones(2, 4)) == (2, 4)
    assert padding_columns(torch.ones(1, 3), torch.zeros(1, 4)) == (0, 1)  # no response token: one column stays
    assert padding_columns(torch.zeros(1, 3), torch.ones(1, 4)) is None  # no prompt token: the columns stay


def _minibatch(tok, V: int):
    """Two rows of a four-row 'rollout': the two short prompts and responses, so that both the prompt's left and
    the response's right columns are padding in each of the two rows."""
    ids, mask = encode_prompts(tok, PROMPTS)
    g = torch.Generator().manual_seed(0)
    T = 9
    r_ids = torch.randint(0, V, (len(PROMPTS), T), generator=g)
    lengths = torch.tensor([3, T, 5, 2])
    r_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    r_ids = torch.where(r_mask.bool(), r_ids, torch.full_like(r_ids, tok.pad_token_id))
    j = torch.tensor([0, 3])
    batch = ids[j], mask[j], r_ids[j], r_mask[j], torch.tensor([1.0, -0.5])
    first, width = padding_columns(batch[1], batch[3])
    assert first > 0 and width == 3  # the case under test: columns to drop on both sides
    return batch


def _run(model, batch, trim: bool, monkeypatch, **kw):
    monkeypatch.setattr(forward, "TRIM_PADDING", trim)
    p_ids, p_mask, r_ids, r_mask, adv = batch
    model.zero_grad()
    out = forward_response(model, p_ids, p_mask, r_ids, r_mask, temperature=0.8, with_entropy=True, **kw)
    loss = ops.reinforce_loss(out["logprobs"], r_mask.float(), adv)
    if "values" in out:
        loss = loss + (out["values"] * r_mask).square().mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("kind", ["lm", "lm_shared_prompts", "policy_with_values"])
def test_dropping_padding_columns_computes_the_same(kind, monkeypatch):
    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = load_causal_lm("tiny", trainable=True)
    kw = {}
    if kind == "policy_with_values":
        model = PolicyWithValue(model)
        with torch.no_grad():  # a non-zero value head (it starts at zero)
            model.value_head.summary.weight.normal_(0, 0.5)
        kw = {"with_values": True}
    elif kind == "lm_shared_prompts":
        kw = {"share_prompts": True}
    batch = _minibatch(tok, model.config.vocab_size)
    if kind == "lm_shared_prompts":  # the two rows share one prompt
        batch = (batch[0][[0, 0]], batch[1][[0, 0]], *batch[2:])
    full, loss_full, g_full = _run(model, batch, False, monkeypatch, **kw)
    trimmed, loss_trimmed, g_trimmed = _run(model, batch, True, monkeypatch, **kw)
    m = batch[3].bool()
    assert full.keys() == trimmed.keys()
    for k in full:
        assert trimmed[k].shape == full[k].shape, k
        torch.testing.assert_close(trimmed[k][m], full[k][m], rtol=0, atol=1e-5, msg=k)
        assert (trimmed[k][:, 3:] == 0).all(), k  # the dropped columns
    torch.testing.assert_close(loss_trimmed, loss_full, rtol=0, atol=1e-5)
    assert g_full.keys() == g_trimmed.keys() and len(g_full) > 0
    for n in g_full:
        scale = max(1.0, g_full[n].abs().max().item())
        torch.testing.assert_close(g_trimmed[n], g_full[n], rtol=0, atol=1e-5 * scale, msg=n)
    assert any(g.abs().max() > 1e-3 for g in g_full.values())


def _ppo_step(tmp_path, name, trim: bool, monkeypatch):
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import PPOTrainer

    monkeypatch.setattr(forward, "TRIM_PADDING", trim)
    prompts = [f"Say words {i}, please." + " really" * (3 * i) for i in range(8)]  # left padding varies a lot
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    cfg = PPOConfig(model="tiny", prompts=str(pf), out=str(tmp_path / name), steps=1, batch_size=8, minibatch_size=2,
                    ppo_epochs=2, lr=1e-3, max_new_tokens=8, seed=3, mixed_precision="no")

    def reward(ps, rs):
        return torch.tensor([len(r) / 10.0 for r in rs])

    torch.manual_seed(0)
    trainer = PPOTrainer(cfg, reward, prompts, progress=False)
    trimmed_calls = []
    cut = forward.padding_columns

    def recording(p_mask, r_mask):
        c = cut(p_mask, r_mask)
        trimmed_calls.append(c is not None)
        return c

    monkeypatch.setattr(forward, "padding_columns", recording)
    grads, step = [], trainer.optimizer.step

    def recording_step(*a, **kw):  # each minibatch's gradient, just before the optimiser uses it
        grads.append({n: p.grad.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return step(*a, **kw)

    trainer.optimizer.step = recording_step
    res = trainer.step()
    return res["metrics"], grads, trimmed_calls


def test_a_ppo_step_is_the_same_with_and_without_dropping_padding(tmp_path, monkeypatch):
    m_off, g_off, _ = _ppo_step(tmp_path, "off", False, monkeypatch)
    m_on, g_on, calls = _ppo_step(tmp_path, "on", True, monkeypatch)
    assert any(calls)  # some minibatch really dropped columns
    assert m_off.keys() == m_on.keys()
    for k in m_off:
        assert m_on[k] == pytest.approx(m_off[k], rel=1e-4, abs=1e-5), k
    # the first minibatch's gradient, from equal weights (AdamW's later steps turn last-bit differences of
    # near-zero gradients into differences of up to ~1% of lr, as in test_shared_update)
    assert len(g_off) == len(g_on) == 8 and g_off[0].keys() == g_on[0].keys() and len(g_off[0]) > 0
    for n in g_off[0]:
        scale = max(1.0, g_off[0][n].abs().max().item())
        torch.testing.assert_close(g_on[0][n], g_off[0][n], rtol=0, atol=1e-5 * scale, msg=n)
    assert any(g.abs().max() > 1e-3 for g in g_off[0].values())
