"""ops.token_logprobs_and_entropy works on the logits a block of rows at a time, with its own backward
pass: against the naive log_softmax/softmax formulas (values and gradients), with blocks that cut the
rows unevenly, on non-contiguous slices such as forward_response's ``logits[:, :-1]``, for bf16
logits, at a temperature, and with -inf logits."""

from __future__ import annotations

import pytest
import torch

from rlhfkit import ops

F64 = torch.float64


def naive(logits, labels, temperature=1.0):
    z = logits.to(torch.float64) / temperature
    logp = torch.log_softmax(z, -1).gather(-1, labels[..., None])[..., 0]
    p = torch.softmax(z, -1)
    ent = -(torch.where(p > 0, p * torch.log_softmax(z, -1), torch.zeros((), dtype=z.dtype))).sum(-1)
    return logp, ent


@pytest.fixture(params=[1 << 20, 37, 7], ids=["default-blocks", "uneven-blocks", "row-blocks"])
def block(request, monkeypatch):
    """The default block size, and small ones that cut (B, T, V) into runs of rows and single rows."""
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_the_naive_formulas(block, temperature):
    g = torch.Generator().manual_seed(0)
    full = (torch.randn(3, 6, 11, generator=g, dtype=F64) * 3).requires_grad_()
    logits = full[:, :-1]  # non-contiguous, as forward_response slices the kept positions
    labels = torch.randint(0, 11, (3, 5), generator=g)
    upstream = torch.randn(3, 5, generator=g, dtype=F64)
    lp, ent = ops.token_logprobs_and_entropy(logits, labels, temperature)
    want_lp, want_ent = naive(logits.detach(), labels, temperature)
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, want_ent, rtol=0, atol=1e-12)
    assert not ent.requires_grad and lp.requires_grad
    (grad,) = torch.autograd.grad((lp * upstream).sum(), full)
    ref = full.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad((naive(ref[:, :-1], labels, temperature)[0] * upstream).sum(), ref)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)
    assert (grad[:, -1] == 0).all()
    assert torch.autograd.gradcheck(lambda z: ops.token_logprobs(z, labels, temperature), (logits,), eps=1e-6, atol=1e-6)


def test_bf16_logits_give_float32_results_and_a_bf16_gradient(block):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 300, generator=g) * 2).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 300, (2, 4), generator=g)
    lp, ent = ops.token_logprobs_and_entropy(logits, labels, 0.8)
    assert lp.dtype == ent.dtype == torch.float32
    want_lp, want_ent = naive(logits.detach().float(), labels, 0.8)
    torch.testing.assert_close(lp.double(), want_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=1e-5)
    lp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = logits.detach().float().requires_grad_()
    torch.log_softmax(ref / 0.8, -1).gather(-1, labels[..., None]).sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref.grad, rtol=0, atol=1e-2)


def test_minus_inf_logits_count_zero_in_the_entropy(block):
    logits = torch.tensor([[[0.0, 0.0, float("-inf")], [1.0, float("-inf"), float("-inf")]]], dtype=F64)
    lp, ent = ops.token_logprobs_and_entropy(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(ent, torch.tensor([[0.6931471805599453, 0.0]], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(lp, torch.tensor([[-0.6931471805599453, 0.0]], dtype=F64), rtol=0, atol=1e-12)


def test_matches_entropy_from_logits_and_token_logprobs_by_hand():
    # p = (3/4, 1/4): the hand case of test_ops
    logits = torch.tensor([[[0.0, -1.0986122886681098]]], dtype=F64)
    lp, ent = ops.token_logprobs_and_entropy(logits, torch.tensor([[1]]))
    torch.testing.assert_close(lp, torch.tensor([[-1.3862943611198906]], dtype=F64))
    torch.testing.assert_close(ent, ops.entropy_from_logits(logits))
    assert ops.token_logprobs_and_entropy(logits, torch.tensor([[1]]), with_entropy=False)[1] is None


def test_other_shapes_and_inputs_left_alone():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 9, generator=g, dtype=F64)
    labels = torch.randint(0, 9, (5,), generator=g)
    before = z.clone()
    lp, ent = ops.token_logprobs_and_entropy(z, labels, 0.5)  # (N, V)
    torch.testing.assert_close(lp, naive(z, labels, 0.5)[0], rtol=0, atol=1e-12)
    lp1, _ = ops.token_logprobs_and_entropy(z[0], labels[0])  # one position (V,)
    torch.testing.assert_close(lp1, naive(z[0], labels[0])[0], rtol=0, atol=1e-12)
    four = torch.randn(2, 3, 4, 9, generator=g, dtype=F64)  # more leading dimensions
    lab4 = torch.randint(0, 9, (2, 3, 4), generator=g)
    torch.testing.assert_close(ops.token_logprobs(four, lab4), naive(four, lab4)[0], rtol=0, atol=1e-12)
    assert torch.equal(z, before)
