"""Tests of rlhfkit.ops: every function against a naive loop reference (float64, random
masks, bool and float masks), one hand-computed case each, purity, dtypes, devices,
gradients, and the memory promise of token_logprobs.

The references below deliberately use plain Python loops over b and t and the math
module on Python floats, so that they share no code (and no vectorisation bug) with ops.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rlhfkit import ops

SEEDS = [0, 1, 2]
MASK_KINDS = ["bool", "float"]
ATOL = 1e-6
F64 = torch.float64


# =========================================================================== helpers


def make_mask(gen: torch.Generator, B: int, T: int, kind: str, empty_row: bool = True) -> torch.Tensor:
    """A prefix mask (response then right padding): one full row, rows that end early
    and, when ``empty_row``, one row with no real token at all."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T  # a full row: no masked position
    lengths[1] = max(1, T // 3)  # a row that ends early
    if empty_row:
        lengths[-1] = 0  # a fully masked row
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return mask if kind == "bool" else mask.to(F64)


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def real(mask: torch.Tensor, b: int, t: int) -> bool:
    return bool(mask[b, t] != 0)


def call_pure(fn, *args, **kwargs):
    """Call fn and assert that no tensor argument was changed, in value or in place."""
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    before = [(t.clone(), t._version) for t in tensors]
    out = fn(*args, **kwargs)
    for t, (copy, version) in zip(tensors, before):
        assert t._version == version, f"{fn.__name__} modified an input in place"
        torch.testing.assert_close(t, copy, rtol=0, atol=0, equal_nan=True)
    return out


def assert_close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, equal_nan=True)


def softplus(x: float) -> float:
    """-logsigmoid(-x) = log(1 + e^x), computed without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# =========================================================================== naive references


def ref_token_logprobs(logits, labels, temperature=1.0):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        for t in range(T):
            row = [float(logits[b, t, v]) / temperature for v in range(V)]
            m = max(row)
            lse = m + math.log(sum(math.exp(z - m) for z in row))
            out[b, t] = row[int(labels[b, t])] - lse
    return out


def ref_entropy(logits):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        for t in range(T):
            row = [float(logits[b, t, v]) for v in range(V)]
            m = max(row)
            lse = m + math.log(sum(math.exp(z - m) for z in row))
            h = 0.0
            for z in row:
                p = math.exp(z - lse)
                if p > 0:
                    h -= p * (z - lse)
            out[b, t] = h
    return out


def ref_sequence_logprobs(token_logp, mask):
    B, T = token_logp.shape
    return torch.tensor(
        [sum(float(token_logp[b, t]) for t in range(T) if real(mask, b, t)) for b in range(B)], dtype=F64
    )


def ref_last_index(mask):
    B, T = mask.shape
    out = []
    for b in range(B):
        last = -1
        for t in range(T):
            if real(mask, b, t):
                last = t
        out.append(last)
    return torch.tensor(out, dtype=torch.long)


def ref_masked_mean(x, mask, dim=None):
    B, T = x.shape
    if dim is None:
        vals = [float(x[b, t]) for b in range(B) for t in range(T) if real(mask, b, t)]
        return torch.tensor(sum(vals) / len(vals) if vals else math.nan, dtype=F64)
    if dim in (1, -1):
        out = []
        for b in range(B):
            vals = [float(x[b, t]) for t in range(T) if real(mask, b, t)]
            out.append(sum(vals) / len(vals) if vals else math.nan)
        return torch.tensor(out, dtype=F64)
    out = []
    for t in range(T):
        vals = [float(x[b, t]) for b in range(B) if real(mask, b, t)]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return torch.tensor(out, dtype=F64)


def ref_masked_var(x, mask, unbiased=False):
    B, T = x.shape
    vals = [float(x[b, t]) for b in range(B) for t in range(T) if real(mask, b, t)]
    n = len(vals)
    mean = sum(vals) / n
    ss = sum((v - mean) ** 2 for v in vals)
    return torch.tensor(ss / (n - 1) if unbiased else ss / n, dtype=F64)


def ref_masked_whiten(x, mask, shift_mean=True):
    B, T = x.shape
    vals = [float(x[b, t]) for b in range(B) for t in range(T) if real(mask, b, t)]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / len(vals)
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        for t in range(T):
            w = (float(x[b, t]) - mean) / math.sqrt(var + 1e-8)
            out[b, t] = w if shift_mean else w + mean
    return out


def ref_explained_variance(values, returns, mask):
    B, T = values.shape
    idx = [(b, t) for b in range(B) for t in range(T) if real(mask, b, t)]
    r = [float(returns[b, t]) for b, t in idx]
    d = [float(returns[b, t]) - float(values[b, t]) for b, t in idx]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((v - m) ** 2 for v in xs) / len(xs)

    return torch.tensor(math.nan if var(r) == 0 else 1 - var(d) / var(r), dtype=F64)


def ref_kl_one(lp: float, rp: float, kind: str) -> float:
    if kind == "k1":
        return lp - rp
    if kind == "k2":
        return 0.5 * (lp - rp) ** 2
    return math.exp(rp - lp) - 1 - (rp - lp)


def ref_kl_penalty(logp, ref_logp, kind):
    B, T = logp.shape
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        for t in range(T):
            out[b, t] = ref_kl_one(float(logp[b, t]), float(ref_logp[b, t]), kind)
    return out


def ref_kl_shaped_rewards(scores, logp, ref_logp, mask, beta, kind):
    B, T = logp.shape
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        last = -1
        for t in range(T):
            if real(mask, b, t):
                out[b, t] = -beta * ref_kl_one(float(logp[b, t]), float(ref_logp[b, t]), kind)
                last = t
        if last >= 0:
            out[b, last] += float(scores[b])
    return out


def ref_gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=F64)
    ret = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        end = T  # first masked position
        for t in range(T):
            if not real(mask, b, t):
                end = t
                break
        a_next = 0.0
        for t in reversed(range(end)):
            v_next = float(values[b, t + 1]) if t + 1 < end else 0.0
            delta = float(rewards[b, t]) + gamma * v_next - float(values[b, t])
            a_next = delta + gamma * lam * a_next
            adv[b, t] = a_next
            ret[b, t] = a_next + float(values[b, t])
    return adv, ret


def ref_ppo_policy_loss(logp, old_logp, adv, mask, eps):
    B, T = logp.shape
    total, clipped, n = 0.0, 0, 0
    for b in range(B):
        for t in range(T):
            if not real(mask, b, t):
                continue
            ratio = math.exp(float(logp[b, t]) - float(old_logp[b, t]))
            a = float(adv[b, t])
            unclipped_term = -a * ratio
            clipped_term = -a * min(max(ratio, 1 - eps), 1 + eps)
            total += max(unclipped_term, clipped_term)
            clipped += clipped_term > unclipped_term
            n += 1
    return torch.tensor(total / n, dtype=F64), torch.tensor(clipped / n, dtype=F64)


def ref_ppo_value_loss(values, old_values, returns, mask, eps):
    B, T = values.shape
    total, clipped, n = 0.0, 0, 0
    for b in range(B):
        for t in range(T):
            if not real(mask, b, t):
                continue
            v, old, r = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
            v_clip = old + min(max(v - old, -eps), eps)
            l1, l2 = (v - r) ** 2, (v_clip - r) ** 2
            total += max(l1, l2)
            clipped += l2 > l1
            n += 1
    return torch.tensor(0.5 * total / n, dtype=F64), torch.tensor(clipped / n, dtype=F64)


def ref_bradley_terry(chosen, rejected, margin):
    B = chosen.shape[0]
    total = 0.0
    for b in range(B):
        m = 0.0 if margin is None else float(margin[b])
        total += softplus(-(float(chosen[b]) - float(rejected[b]) - m))
    return torch.tensor(total / B, dtype=F64)


def ref_dpo(pc, pr, rc, rr, beta):
    B = pc.shape[0]
    cr = [beta * (float(pc[b]) - float(rc[b])) for b in range(B)]
    rj = [beta * (float(pr[b]) - float(rr[b])) for b in range(B)]
    loss = sum(softplus(-(cr[b] - rj[b])) for b in range(B)) / B
    return torch.tensor(loss, dtype=F64), torch.tensor(cr, dtype=F64), torch.tensor(rj, dtype=F64)


def ref_ranking_pairs(ranking):
    items = list(ranking)
    pairs = []
    for i, winner in enumerate(items):
        for j, loser in enumerate(items):
            if i < j:
                pairs.append((winner, loser))
    return pairs


def ref_rloo(rewards):
    P, K = rewards.shape
    out = torch.zeros(P, K, dtype=F64)
    for p in range(P):
        for k in range(K):
            others = [float(rewards[p, j]) for j in range(K) if j != k]
            out[p, k] = float(rewards[p, k]) - sum(others) / len(others)
    return out


# =========================================================================== reference comparisons


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_token_logprobs_vs_reference(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = randn(g, 3, 5, 11, scale=3.0)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    out = call_pure(ops.token_logprobs, logits, labels, temperature=temperature)
    assert out.shape == (3, 5) and out.dtype == F64
    assert_close(out, ref_token_logprobs(logits, labels, temperature))
    # and the obvious torch formula
    expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels[..., None])[..., 0]
    assert_close(out, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_from_logits_vs_reference(seed):
    g = torch.Generator().manual_seed(seed)
    logits = randn(g, 3, 4, 9, scale=2.0)
    out = call_pure(ops.entropy_from_logits, logits)
    assert out.shape == (3, 4)
    assert_close(out, ref_entropy(logits))
    p = torch.softmax(logits, -1)
    assert_close(out, -(p * torch.log_softmax(logits, -1)).sum(-1))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_sequence_logprobs_vs_reference(seed, mask_kind):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    token_logp = -randn(g, 5, 7).abs()
    out = call_pure(ops.sequence_logprobs, token_logp, mask)
    assert out.shape == (5,)
    assert_close(out, ref_sequence_logprobs(token_logp, mask))
    assert out[-1] == 0  # the fully masked row


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_last_index_vs_reference(seed, mask_kind):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 6, 8, mask_kind)
    out = call_pure(ops.last_index, mask)
    assert out.dtype == torch.long
    assert torch.equal(out, ref_last_index(mask))
    # a mask with holes: the last real token, not the first gap
    holes = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert ops.last_index(holes).tolist() == [2, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_masked_mean_vs_reference(seed, mask_kind):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    x = randn(g, 5, 7)
    assert_close(call_pure(ops.masked_mean, x, mask), ref_masked_mean(x, mask))
    # per row: the fully masked row is 0/0 = nan
    per_row = call_pure(ops.masked_mean, x, mask, dim=1)
    assert_close(per_row, ref_masked_mean(x, mask, dim=1))
    assert torch.isnan(per_row[-1])
    assert_close(call_pure(ops.masked_mean, x, mask, dim=0), ref_masked_mean(x, mask, dim=0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("unbiased", [False, True])
def test_masked_var_vs_reference(seed, mask_kind, unbiased):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    x = randn(g, 5, 7, scale=2.0) + 3.0
    out = call_pure(ops.masked_var, x, mask, unbiased=unbiased)
    assert_close(out, ref_masked_var(x, mask, unbiased))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_vs_reference(seed, mask_kind, shift_mean):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    x = randn(g, 5, 7, scale=3.0) + 2.0
    out = call_pure(ops.masked_whiten, x, mask, shift_mean=shift_mean)
    # documented choice: the same affine map everywhere, masked positions included
    assert_close(out, ref_masked_whiten(x, mask, shift_mean))
    if shift_mean:
        m = mask != 0
        assert abs(float(out[m].mean())) < 1e-9
        assert abs(float(out[m].var(unbiased=False)) - 1) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_explained_variance_vs_reference(seed, mask_kind):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    returns = randn(g, 5, 7)
    values = returns + randn(g, 5, 7, scale=0.5)
    out = call_pure(ops.explained_variance, values, returns, mask)
    assert out.dim() == 0
    assert_close(out, ref_explained_variance(values, returns, mask))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_vs_reference(seed, kind):
    g = torch.Generator().manual_seed(seed)
    logp = -randn(g, 4, 6).abs()
    ref_logp = -randn(g, 4, 6).abs()
    out = call_pure(ops.kl_penalty, logp, ref_logp, kind)
    assert_close(out, ref_kl_penalty(logp, ref_logp, kind))
    if kind in ("k2", "k3"):
        assert (out >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_shaped_rewards_vs_reference(seed, mask_kind, kind):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    logp, ref_logp = -randn(g, 5, 7).abs(), -randn(g, 5, 7).abs()
    scores = randn(g, 5, scale=2.0)
    out = call_pure(ops.kl_shaped_rewards, scores, logp, ref_logp, mask, 0.05, kind=kind)
    assert_close(out, ref_kl_shaped_rewards(scores, logp, ref_logp, mask, 0.05, kind))
    assert (out[-1] == 0).all()  # the fully masked row gets nothing, not even its score
    assert (out[mask == 0] == 0).all()
    # beta as a 0-d tensor (an adaptive controller's state) gives the same
    out_t = ops.kl_shaped_rewards(scores, logp, ref_logp, mask, torch.tensor(0.05, dtype=F64), kind=kind)
    assert_close(out_t, out)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_vs_reference(seed, mask_kind, gamma, lam):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 9, mask_kind)
    rewards, values = randn(g, 5, 9), randn(g, 5, 9)
    adv, ret = call_pure(ops.gae, rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = ref_gae(rewards, values, mask, gamma, lam)
    assert_close(adv, ref_adv)
    assert_close(ret, ref_ret)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("clip_eps", [0.2, 0.1])
def test_ppo_policy_loss_vs_reference(seed, mask_kind, clip_eps):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    old_logp = -randn(g, 5, 7).abs()
    logp = old_logp + randn(g, 5, 7, scale=0.3)  # ratios on both sides of the band
    adv = randn(g, 5, 7)
    loss, clip_frac = call_pure(ops.ppo_policy_loss, logp, old_logp, adv, mask, clip_eps=clip_eps)
    ref_loss, ref_frac = ref_ppo_policy_loss(logp, old_logp, adv, mask, clip_eps)
    assert loss.dim() == 0 and clip_frac.dim() == 0
    assert_close(loss, ref_loss)
    assert_close(clip_frac, ref_frac)
    assert 0 < float(clip_frac) < 1  # the random case does exercise both branches


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("clip_eps", [0.2, 0.5])
def test_ppo_value_loss_vs_reference(seed, mask_kind, clip_eps):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(g, 5, 7, mask_kind)
    old_values = randn(g, 5, 7)
    values = old_values + randn(g, 5, 7, scale=1.0)  # steps on both sides of the band
    returns = randn(g, 5, 7)
    loss, clip_frac = call_pure(ops.ppo_value_loss, values, old_values, returns, mask, clip_eps=clip_eps)
    ref_loss, ref_frac = ref_ppo_value_loss(values, old_values, returns, mask, clip_eps)
    assert_close(loss, ref_loss)
    assert_close(clip_frac, ref_frac)
    assert 0 < float(clip_frac) < 1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_loss_vs_reference(seed, with_margin):
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = randn(g, 8, scale=3.0), randn(g, 8, scale=3.0)
    margin = randn(g, 8).abs() if with_margin else None
    out = call_pure(ops.bradley_terry_loss, chosen, rejected, margin)
    assert out.dim() == 0
    assert_close(out, ref_bradley_terry(chosen, rejected, margin))
    # extreme score gaps stay finite (logsigmoid, not log(sigmoid))
    big = ops.bradley_terry_loss(torch.tensor([-200.0], dtype=F64), torch.tensor([200.0], dtype=F64))
    assert_close(big, 400.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_vs_reference(seed, beta):
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-randn(g, 6, scale=5.0).abs() for _ in range(4))
    loss, cr, rj = call_pure(ops.dpo_loss, pc, pr, rc, rr, beta=beta)
    ref_loss, ref_cr, ref_rj = ref_dpo(pc, pr, rc, rr, beta)
    assert_close(loss, ref_loss)
    assert_close(cr, ref_cr)
    assert_close(rj, ref_rj)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("K", [2, 3, 5])
def test_ranking_pairs_vs_reference(seed, K):
    g = torch.Generator().manual_seed(seed)
    ranking = torch.randperm(10, generator=g)[:K].tolist()
    pairs = call_pure(ops.ranking_pairs, ranking)
    assert pairs == ref_ranking_pairs(ranking)
    assert len(pairs) == K * (K - 1) // 2
    assert ops.ranking_pairs(tuple(ranking)) == pairs
    assert ops.ranking_pairs(torch.tensor(ranking)) == pairs  # tensors become plain ints


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("K", [2, 4])
def test_rloo_advantages_vs_reference(seed, K):
    g = torch.Generator().manual_seed(seed)
    rewards = randn(g, 3, K)
    out = call_pure(ops.rloo_advantages, rewards)
    assert_close(out, ref_rloo(rewards))


# =========================================================================== hand-computed cases


def t64(x):
    return torch.tensor(x, dtype=F64)


def test_token_logprobs_by_hand():
    # logits [0, ln 3]: softmax = [1/4, 3/4]; label 1 -> ln(3/4) = -0.2876821, label 0 -> ln(1/4).
    # At temperature 2 the logits are [0, ln(3)/2] = [0, ln sqrt(3)]: softmax = [1, sqrt3] / (1 + sqrt3),
    # so label 1 -> ln(sqrt3 / (1 + sqrt3)) = ln(0.6339746) = -0.4557464.
    logits = t64([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    labels = torch.tensor([[1, 0]])
    assert_close(ops.token_logprobs(logits, labels), [[math.log(0.75), math.log(0.25)]])
    assert_close(ops.token_logprobs(logits, labels, temperature=2.0)[0, 0], -0.4557464, atol=1e-7)


def test_entropy_by_hand():
    # [0, 0]: uniform over 2 -> ln 2 = 0.6931472.
    # [0, ln 3]: p = [1/4, 3/4] -> H = 1/4 ln 4 + 3/4 ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351.
    # [0, -inf]: one certain token -> 0 (and not nan from 0 * -inf).
    logits = t64([[[0.0, 0.0], [0.0, math.log(3)], [0.0, -math.inf]]])
    assert_close(ops.entropy_from_logits(logits), [[0.6931472, 0.5623351, 0.0]], atol=1e-7)


def test_sequence_logprobs_and_last_index_by_hand():
    # row 0: -1 + -2 = -3 (the -3 is padding); row 1: nothing real -> 0; row 2: -1 -1 -1 = -3.
    token_logp = t64([[-1.0, -2.0, -3.0], [-5.0, -5.0, -5.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert_close(ops.sequence_logprobs(token_logp, mask), [-3.0, 0.0, -3.0])
    assert ops.last_index(mask).tolist() == [1, -1, 2]


def test_masked_mean_var_by_hand():
    # real entries: 1, 2 (row 0) and 4 (row 1). mean = 7/3.
    # deviations -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9 -> biased var 14/9, unbiased 7/3.
    # per row: [1.5, 4]; per column: [2.5, 2, nan (no real entry)].
    x = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert_close(ops.masked_mean(x, mask), 7 / 3)
    assert_close(ops.masked_mean(x, mask, dim=1), [1.5, 4.0])
    assert_close(ops.masked_mean(x, mask, dim=0), [2.5, 2.0, math.nan])
    assert_close(ops.masked_var(x, mask), 14 / 9)
    assert_close(ops.masked_var(x, mask, unbiased=True), 7 / 3)
    # nothing real: 0/0 is nan, not a silent 0
    assert torch.isnan(ops.masked_mean(x, torch.zeros_like(mask)))
    # a single real entry: unbiased variance is undefined
    one = torch.tensor([[True, False, False], [False, False, False]])
    assert_close(ops.masked_var(x, one), 0.0)
    assert torch.isnan(ops.masked_var(x, one, unbiased=True))


def test_masked_whiten_by_hand():
    # real entries 1 and 3: mean 2, biased var 1 -> (x - 2) / sqrt(1 + 1e-8) = [-1, 1] (to 5e-9).
    # the masked 10 gets the same map: (10 - 2) / 1 = 8 (documented choice).
    # shift_mean=False adds the mean back: [1, 3, 10].
    x = t64([[1.0, 3.0, 10.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = 1 / math.sqrt(1 + 1e-8)
    assert_close(ops.masked_whiten(x, mask), [[-s, s, 8 * s]], atol=1e-12)
    assert_close(ops.masked_whiten(x, mask, shift_mean=False), [[2 - s, 2 + s, 2 + 8 * s]], atol=1e-12)


def test_explained_variance_by_hand():
    # returns [1, 2, 3], values [1, 2, 2]: residual [0, 0, 1] has var 2/9; returns have var 2/3.
    # EV = 1 - (2/9) / (2/3) = 2/3. The masked 100 is ignored.
    returns = t64([[1.0, 2.0, 3.0, 100.0]])
    values = t64([[1.0, 2.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert_close(ops.explained_variance(values, returns, mask), 2 / 3)
    assert_close(ops.explained_variance(returns, returns, mask), 1.0)
    # constant returns: undefined, reported as a nan tensor rather than an exception
    flat = ops.explained_variance(values, t64([[5.0, 5.0, 5.0, 1.0]]), mask)
    assert isinstance(flat, torch.Tensor) and torch.isnan(flat)


def test_kl_penalty_by_hand():
    # logp = -1, ref = -2, so logp - ref = 1:
    # k1 = 1; k2 = 0.5 * 1 = 0.5; k3 = exp(-1) - 1 - (-1) = e^-1 = 0.3678794.
    # logp = ref: all three are exactly 0.
    logp, ref = t64([[-1.0, -0.5]]), t64([[-2.0, -0.5]])
    assert_close(ops.kl_penalty(logp, ref, "k1"), [[1.0, 0.0]])
    assert_close(ops.kl_penalty(logp, ref, "k2"), [[0.5, 0.0]])
    assert_close(ops.kl_penalty(logp, ref, "k3"), [[math.exp(-1), 0.0]])
    with pytest.raises(ValueError, match="kind"):
        ops.kl_penalty(logp, ref, "k4")


def test_kl_shaped_rewards_by_hand():
    # beta 0.1, k1; logp - ref = [0.5, -1, 0.2] in row 0 whose last real token is t=1:
    # t0: -0.1 * 0.5 = -0.05; t1: -0.1 * -1 + score 2 = 2.1; t2 masked -> 0.
    # row 1 has no real token: all zeros, its score 7 goes nowhere.
    logp = t64([[-0.5, -2.0, -0.8], [-1.0, -1.0, -1.0]])
    ref = t64([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = ops.kl_shaped_rewards(t64([2.0, 7.0]), logp, ref, mask, beta=0.1)
    assert_close(out, [[-0.05, 2.1, 0.0], [0.0, 0.0, 0.0]])


def test_gae_by_hand():
    # gamma 1, lam 0.5; row: r = [0, 1, 9], V = [0.5, 0.4, 7], mask [1, 1, 0].
    # V is 0 from the first masked position on, so V_2 counts as 0 and r_2 is never seen.
    # t1: delta = 1 + 0 - 0.4 = 0.6; A1 = 0.6.
    # t0: delta = 0 + 0.4 - 0.5 = -0.1; A0 = -0.1 + 0.5 * 0.6 = 0.2.
    # returns = A + V = [0.7, 1.0, 0].
    rewards, values = t64([[0.0, 1.0, 9.0]]), t64([[0.5, 0.4, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = ops.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert_close(adv, [[0.2, 0.6, 0.0]])
    assert_close(ret, [[0.7, 1.0, 0.0]])
    # gamma 0.5, lam 1 (full mask): A2 = 1 - 0.5 = 0.5; A1 = 0 + 0.5*0.5 - 0.5 + 0.5*0.5 = 0;
    # A0 = 0 + 0.5*0.5 - 0.5 + 0.5*0 = -0.25: the discounted return minus V.
    adv, ret = ops.gae(t64([[0.0, 0.0, 1.0]]), t64([[0.5, 0.5, 0.5]]), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert_close(adv, [[-0.25, 0.0, 0.5]])
    assert_close(ret, [[0.25, 0.5, 1.0]])


def test_gae_rejects_mask_with_holes():
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        ops.gae(torch.zeros(2, 3), torch.zeros(2, 3), mask)


def test_ppo_policy_loss_by_hand():
    # eps 0.2; ratio = exp(logp - old):
    # t0 ratio 1.5, A  1: -1.5 vs -1.2  -> -1.2, clipped (strictly larger)
    # t1 ratio 0.5, A  1: -0.5 vs -0.8  -> -0.5, not clipped
    # t2 ratio 1.1, A -2:  2.2 vs  2.2  ->  2.2, a tie: not clipped
    # t3 ratio 0.5, A -1:  0.5 vs  0.8  ->  0.8, clipped
    # t4 masked (garbage).  loss = (-1.2 - 0.5 + 2.2 + 0.8) / 4 = 0.325; clip_frac = 2/4.
    old = t64([[0.0, 0.0, 0.0, 0.0, 0.0]])
    logp = t64([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5), 50.0]])
    adv = t64([[1.0, 1.0, -2.0, -1.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, frac = ops.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert_close(loss, 0.325)
    assert_close(frac, 0.5)


def test_ppo_value_loss_by_hand():
    # eps 0.2:
    # t0 V 1, old 0.5, R 0: V_clip = 0.5 + 0.2 = 0.7; (1-0)^2 = 1 vs 0.49 -> 1, not clipped
    # t1 V 1, old 0,   R 2: V_clip = 0.2;       (1-2)^2 = 1 vs 3.24 -> 3.24, clipped
    # loss = 0.5 * (1 + 3.24) / 2 = 1.06; clip_frac = 1/2. t2 is masked garbage.
    values, old, returns = t64([[1.0, 1.0, 9.0]]), t64([[0.5, 0.0, -9.0]]), t64([[0.0, 2.0, 99.0]])
    mask = torch.tensor([[True, True, False]])
    loss, frac = ops.ppo_value_loss(values, old, returns, mask, clip_eps=0.2)
    assert_close(loss, 1.06)
    assert_close(frac, 0.5)


def test_bradley_terry_by_hand():
    # gaps [1, 0]: -logsigmoid(1) = ln(1 + e^-1) = 0.3132617, -logsigmoid(0) = ln 2 = 0.6931472;
    # mean 0.5032044. With margin [1, 0] both gaps become 0: ln 2.
    chosen, rejected = t64([2.0, 0.0]), t64([1.0, 0.0])
    assert_close(ops.bradley_terry_loss(chosen, rejected), 0.5032044, atol=1e-7)
    assert_close(ops.bradley_terry_loss(chosen, rejected, t64([1.0, 0.0])), math.log(2))
    assert_close(ops.bradley_terry_loss(chosen, rejected, 1.0), (math.log(2) + math.log1p(math.e)) / 2)


def test_dpo_loss_by_hand():
    # beta 0.5; chosen: policy -1, ref -2 -> reward 0.5 * 1 = 0.5;
    # rejected: policy -3, ref -2 -> reward 0.5 * -1 = -0.5;
    # loss = -logsigmoid(0.5 - (-0.5)) = ln(1 + e^-1) = 0.3132617.
    loss, cr, rj = ops.dpo_loss(t64([-1.0]), t64([-3.0]), t64([-2.0]), t64([-2.0]), beta=0.5)
    assert_close(loss, 0.3132617, atol=1e-7)
    assert_close(cr, [0.5])
    assert_close(rj, [-0.5])
    # policy == reference: rewards 0, loss ln 2
    loss0, _, _ = ops.dpo_loss(t64([-1.0]), t64([-3.0]), t64([-1.0]), t64([-3.0]))
    assert_close(loss0, math.log(2))


def test_ranking_pairs_by_hand():
    # ranking best -> worst: 3, 1, 0, 2 gives 4*3/2 = 6 pairs, by winner position then loser position
    assert ops.ranking_pairs([3, 1, 0, 2]) == [(3, 1), (3, 0), (3, 2), (1, 0), (1, 2), (0, 2)]
    assert ops.ranking_pairs(["b", "a"]) == [("b", "a")]
    assert ops.ranking_pairs([7]) == []
    with pytest.raises(ValueError, match="distinct"):
        ops.ranking_pairs([0, 1, 0, 2])
    with pytest.raises(ValueError, match="distinct"):
        ops.ranking_pairs(torch.tensor([1, 1]))
    with pytest.raises(TypeError):
        ops.ranking_pairs("abc")


def test_rloo_advantages_by_hand():
    # K = 2: each sample's baseline is the other sample: [1, 3] -> [1 - 3, 3 - 1] = [-2, 2].
    # K = 3: [1, 2, 6] -> [1 - 4, 2 - 3.5, 6 - 1.5] = [-3, -1.5, 4.5].
    assert_close(ops.rloo_advantages(t64([[1.0, 3.0]])), [[-2.0, 2.0]])
    assert_close(ops.rloo_advantages(t64([[1.0, 2.0, 6.0]])), [[-3.0, -1.5, 4.5]])
    with pytest.raises(ValueError, match="K >= 2"):
        ops.rloo_advantages(t64([[1.0], [2.0]]))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="token_logprobs"):
        ops.token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        ops.token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="ppo_policy_loss"):
        ops.ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="scores"):
        ops.kl_shaped_rewards(torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 0.1)


# =========================================================================== token_logprobs: memory and purity


class OpRecorder(TorchDispatchMode):
    """Records (op, dtype, numel) of every tensor produced by every aten op run inside."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.outputs.append((str(func), t.dtype, t.numel()))
        return out


def big_float64(records, numel):
    return [r for r in records if r[1] == torch.float64 and r[2] >= numel]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_makes_no_float64_copy(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 50000, generator=g).to(dtype)
    labels = torch.randint(0, 50000, (2, 4), generator=g)
    with OpRecorder() as rec:
        out = ops.token_logprobs(logits, labels, temperature=temperature)
    assert rec.outputs, "the recorder saw no op: the check would be vacuous"
    assert big_float64(rec.outputs, logits.numel()) == []
    assert out.dtype == torch.float32  # float32 stays float32; bf16 is upcast to float32, no further
    # nothing larger than float32 of logits' size, and at most a couple of such buffers
    full = [r for r in rec.outputs if r[2] >= logits.numel()]
    assert all(r[1] in (torch.float32, dtype) for r in full), full
    expected = torch.log_softmax(logits.float() / temperature, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_op_recorder_catches_a_float64_copy():
    # The check above must be able to fail: the naive implementation is caught.
    logits = torch.randn(2, 4, 1000)
    labels = torch.zeros(2, 4, dtype=torch.long)
    with OpRecorder() as rec:
        torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None])
    assert big_float64(rec.outputs, logits.numel())


def test_entropy_makes_no_float64_copy():
    logits = torch.randn(2, 4, 5000)
    with OpRecorder() as rec:
        out = ops.entropy_from_logits(logits)
    assert out.dtype == torch.float32
    assert big_float64(rec.outputs, logits.numel()) == []


def test_token_logprobs_leaves_input_alone_and_shares_no_storage():
    logits = torch.randn(2, 3, 7, dtype=F64)
    labels = torch.randint(0, 7, (2, 3))
    for temperature in (1.0, 0.5):
        out = call_pure(ops.token_logprobs, logits, labels, temperature=temperature)
        out.add_(1.0)  # writing into the result must not reach the logits
        assert out.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr()


# =========================================================================== garbage at masked positions


def test_masked_positions_are_never_read():
    # nan / inf at masked positions must not change unmasked results or gradients
    g = torch.Generator().manual_seed(3)
    mask = make_mask(g, 4, 6, "bool")
    pad = ~mask

    def dirty(x, fill):
        return torch.where(pad, torch.full_like(x, fill), x)

    logp, old, ref = -randn(g, 4, 6).abs(), -randn(g, 4, 6).abs(), -randn(g, 4, 6).abs()
    adv, values, rets, rewards = randn(g, 4, 6), randn(g, 4, 6), randn(g, 4, 6), randn(g, 4, 6)
    scores = randn(g, 4)

    for fill in (math.nan, math.inf, -math.inf):
        assert_close(ops.masked_mean(dirty(adv, fill), mask), ops.masked_mean(adv, mask))
        assert_close(ops.masked_var(dirty(adv, fill), mask), ops.masked_var(adv, mask))
        assert_close(ops.masked_whiten(dirty(adv, fill), mask)[mask], ops.masked_whiten(adv, mask)[mask])
        assert_close(ops.sequence_logprobs(dirty(logp, fill), mask), ops.sequence_logprobs(logp, mask))
        assert_close(
            ops.explained_variance(dirty(values, fill), dirty(rets, fill), mask),
            ops.explained_variance(values, rets, mask),
        )
        for kind in ("k1", "k3"):
            assert_close(
                ops.kl_shaped_rewards(scores, dirty(logp, fill), dirty(ref, fill), mask, 0.1, kind),
                ops.kl_shaped_rewards(scores, logp, ref, mask, 0.1, kind),
            )
        for a, b in zip(
            ops.gae(dirty(rewards, fill), dirty(values, fill), mask), ops.gae(rewards, values, mask)
        ):
            assert_close(a, b)

        lp = dirty(logp, fill).requires_grad_()
        loss, frac = ops.ppo_policy_loss(lp, dirty(old, fill), dirty(adv, fill), mask)
        clean_loss, clean_frac = ops.ppo_policy_loss(logp, old, adv, mask)
        assert_close(loss.detach(), clean_loss)
        assert_close(frac, clean_frac)
        loss.backward()
        assert torch.isfinite(lp.grad).all() and (lp.grad[pad] == 0).all()

        v = dirty(values, fill).requires_grad_()
        vloss, _ = ops.ppo_value_loss(v, dirty(old, fill), dirty(rets, fill), mask)
        assert_close(vloss.detach(), ops.ppo_value_loss(values, old, rets, mask)[0])
        vloss.backward()
        assert torch.isfinite(v.grad).all() and (v.grad[pad] == 0).all()


# =========================================================================== gradients


def _gc(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_token_logprobs_and_entropy():
    g = torch.Generator().manual_seed(0)
    logits = randn(g, 2, 3, 5).requires_grad_()
    labels = torch.randint(0, 5, (2, 3), generator=g)
    _gc(lambda z: ops.token_logprobs(z, labels), logits)
    _gc(lambda z: ops.token_logprobs(z, labels, temperature=0.7), logits)
    _gc(ops.entropy_from_logits, logits)


def test_gradcheck_ppo_losses():
    g = torch.Generator().manual_seed(1)
    mask = make_mask(g, 3, 4, "float")
    old = -randn(g, 3, 4).abs()
    logp = (old + randn(g, 3, 4, scale=0.3)).requires_grad_()
    adv = randn(g, 3, 4)
    _gc(lambda lp: ops.ppo_policy_loss(lp, old, adv, mask)[0], logp)
    old_v, rets = randn(g, 3, 4), randn(g, 3, 4)
    values = (old_v + randn(g, 3, 4, scale=0.4)).requires_grad_()
    _gc(lambda v: ops.ppo_value_loss(v, old_v, rets, mask)[0], values)
    assert not ops.ppo_policy_loss(logp, old, adv, mask)[1].requires_grad  # clip_frac is a statistic
    assert not ops.ppo_value_loss(values, old_v, rets, mask)[1].requires_grad
    # and the gradient really is zero where clipping is active (a ratio far outside the band, A > 0)
    lp = t64([[2.0]]).requires_grad_()
    ops.ppo_policy_loss(lp, t64([[0.0]]), t64([[1.0]]), torch.ones(1, 1))[0].backward()
    assert lp.grad.item() == 0.0


def test_gradcheck_preference_losses():
    g = torch.Generator().manual_seed(2)
    chosen, rejected, margin = (randn(g, 4).requires_grad_() for _ in range(3))
    _gc(ops.bradley_terry_loss, chosen, rejected, margin)
    pc, pr, rc, rr = (randn(g, 4).requires_grad_() for _ in range(4))
    _gc(lambda a, b, c, d: ops.dpo_loss(a, b, c, d, beta=0.3)[0], pc, pr, rc, rr)
    loss, chosen_rewards, rejected_rewards = ops.dpo_loss(pc, pr, rc, rr)
    # the implicit rewards are logged, not optimised: they carry no graph
    assert loss.requires_grad and not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_gradcheck_masked_statistics_and_kl():
    g = torch.Generator().manual_seed(3)
    mask = make_mask(g, 3, 4, "bool")
    x = randn(g, 3, 4).requires_grad_()
    y = randn(g, 3, 4).requires_grad_()
    _gc(lambda a: ops.masked_mean(a, mask), x)
    _gc(lambda a: ops.masked_whiten(a, mask), x)
    _gc(lambda a, b: ops.kl_penalty(a, b, "k3"), x, y)


# =========================================================================== dtypes and devices


def _all_calls(dtype, device="cpu"):
    """(name, thunk) for every tensor function, on small random inputs of dtype/device."""
    g = torch.Generator().manual_seed(7)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype=dtype, device=device)

    mask = make_mask(g, 4, 6, "bool").to(device)
    logits = r(4, 6, 11, scale=3)
    labels = torch.randint(0, 11, (4, 6), generator=g).to(device)
    lp, old, ref = -r(4, 6).abs(), -r(4, 6).abs(), -r(4, 6).abs()
    x, y = r(4, 6), r(4, 6)
    return {
        "token_logprobs": lambda: ops.token_logprobs(logits, labels, temperature=0.8),
        "entropy_from_logits": lambda: ops.entropy_from_logits(logits),
        "sequence_logprobs": lambda: ops.sequence_logprobs(lp, mask),
        "masked_mean": lambda: ops.masked_mean(x, mask),
        "masked_mean_dim": lambda: ops.masked_mean(x, mask, dim=1),
        "masked_var": lambda: ops.masked_var(x, mask, unbiased=True),
        "masked_whiten": lambda: ops.masked_whiten(x, mask),
        "explained_variance": lambda: ops.explained_variance(x, y, mask),
        "kl_penalty": lambda: ops.kl_penalty(lp, ref, "k3"),
        "kl_shaped_rewards": lambda: ops.kl_shaped_rewards(r(4), lp, ref, mask, 0.1, "k1"),
        "gae": lambda: ops.gae(x, y, mask, gamma=0.99, lam=0.95),
        "ppo_policy_loss": lambda: ops.ppo_policy_loss(lp, old, x, mask),
        "ppo_value_loss": lambda: ops.ppo_value_loss(x, y, r(4, 6), mask),
        "bradley_terry_loss": lambda: ops.bradley_terry_loss(r(4), r(4), r(4).abs()),
        "dpo_loss": lambda: ops.dpo_loss(lp[:, 0], old[:, 0], ref[:, 0], lp[:, 1]),
        "rloo_advantages": lambda: ops.rloo_advantages(r(3, 4)),
        "reinforce_advantages": lambda: ops.reinforce_advantages(r(3, 4), "batch_mean")[0],
        "kl_penalized_scores": lambda: ops.kl_penalized_scores(r(4), lp, ref, mask, 0.1, "k3"),
        "reinforce_loss": lambda: ops.reinforce_loss(lp, mask, r(4)),
        "mle_loss": lambda: ops.mle_loss(lp, mask, "token"),
        "pg_grad_variance": lambda: ops.pg_grad_variance(r(4, 5), r(4)),
    }


CALL_NAMES = list(_all_calls(F64))
UPCAST_TO_FLOAT32 = {"token_logprobs", "entropy_from_logits"}  # documented: float32 out for half logits


@pytest.mark.parametrize("name", CALL_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_dtypes_match_float64(name, dtype):
    expected = tree_flatten(_all_calls(F64)[name]())[0]
    got = tree_flatten(_all_calls(dtype)[name]())[0]
    tol = 1e-5 if dtype == torch.float32 else 6e-2
    for e, a in zip(expected, got):
        want = torch.float32 if (name in UPCAST_TO_FLOAT32 and dtype == torch.bfloat16) else dtype
        assert a.dtype == want, (name, a.dtype)
        # the same random draws run in float64 are the reference
        torch.testing.assert_close(
            a.double(), e, rtol=tol, atol=tol * max(1.0, float(e.nan_to_num().abs().max())), equal_nan=True
        )


@pytest.mark.parametrize("name", [n for n in CALL_NAMES if n != "gae"])  # gae checks its mask: needs data
def test_device_agnostic_on_meta(name):
    # Meta tensors have no data: any tensor created on the wrong device, or any hidden
    # .item()/sync, raises here. (A CUDA run would catch the same; this machine has none.)
    out = tree_flatten(_all_calls(torch.float32, device="meta")[name]())[0]
    assert all(t.device.type == "meta" for t in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", CALL_NAMES)
def test_cuda_matches_cpu(name):
    cpu = tree_flatten(_all_calls(torch.float32)[name]())[0]
    gpu = tree_flatten(_all_calls(torch.float32, device="cuda")[name]())[0]
    for c, d in zip(cpu, gpu):
        assert d.device.type == "cuda"
        # equal_nan: an empty mask row averages to nan on both devices (masked_mean_dim has one)
        torch.testing.assert_close(d.cpu(), c, rtol=1e-5, atol=1e-5, equal_nan=True)


# =========================================================================== REINFORCE


def ref_reinforce_advantages(rewards, baseline, state, value, decay):
    P, K = rewards.shape
    r = [[float(rewards[p, k]) for k in range(K)] for p in range(P)]
    mean = sum(sum(row) for row in r) / (P * K)
    new_state = state
    if baseline == "none":
        b = [[0.0] * K for _ in range(P)]
    elif baseline == "constant":
        b = [[value] * K for _ in range(P)]
    elif baseline == "moving_average":
        past = value if state is None else state
        b = [[past] * K for _ in range(P)]
        new_state = mean if state is None else decay * state + (1 - decay) * mean
    elif baseline == "batch_mean":
        b = [[mean] * K for _ in range(P)]
    else:  # leave_one_out
        b = [[(sum(row) - row[k]) / (K - 1) for k in range(K)] for row in r]
    return torch.tensor([[r[p][k] - b[p][k] for k in range(K)] for p in range(P)], dtype=F64), new_state


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("baseline", ops.BASELINES)
@pytest.mark.parametrize("state", [None, 0.7])
def test_reinforce_advantages_matches_reference(seed, baseline, state):
    g = torch.Generator().manual_seed(seed)
    rewards = randn(g, 3, 4) + 10.0
    adv, new_state = call_pure(ops.reinforce_advantages, rewards, baseline, state, value=2.5, decay=0.8)
    want, want_state = ref_reinforce_advantages(rewards, baseline, state, 2.5, 0.8)
    assert_close(adv, want)
    if want_state is None:
        assert new_state is None
    else:
        assert abs(new_state - want_state) < 1e-9


def test_reinforce_advantages_by_hand():
    r = t64([[1.0, 3.0], [5.0, 7.0]])
    assert_close(ops.reinforce_advantages(r, "none")[0], [[1.0, 3.0], [5.0, 7.0]])
    assert_close(ops.reinforce_advantages(r, "constant", value=1.0)[0], [[0.0, 2.0], [4.0, 6.0]])
    assert_close(ops.reinforce_advantages(r, "batch_mean")[0], [[-3.0, -1.0], [1.0, 3.0]])
    assert_close(ops.reinforce_advantages(r, "leave_one_out")[0], [[-2.0, 2.0], [-2.0, 2.0]])
    # moving average: the first batch is centred on `value`, and the state becomes its mean (4);
    # the second on 4, and the state moves a tenth of the way to the new mean (14): 5
    adv, st = ops.reinforce_advantages(r, "moving_average", None, value=0.0, decay=0.9)
    assert_close(adv, [[1.0, 3.0], [5.0, 7.0]])
    assert st == 4.0
    adv, st = ops.reinforce_advantages(r + 10, "moving_average", st, decay=0.9)
    assert_close(adv, [[7.0, 9.0], [11.0, 13.0]])
    assert abs(st - 5.0) < 1e-12
    with pytest.raises(ValueError, match="baseline must be one of"):
        ops.reinforce_advantages(r, "mean")
    with pytest.raises(ValueError, match="K >= 2"):
        ops.reinforce_advantages(t64([[1.0], [2.0]]), "leave_one_out")
    with pytest.raises(ValueError, match="decay"):
        ops.reinforce_advantages(r, "moving_average", decay=1.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_penalized_scores_matches_reference(seed, kind):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 7
    mask = make_mask(g, B, T, "bool")
    scores, lp, rp = randn(g, B), -randn(g, B, T).abs(), -randn(g, B, T).abs()
    out = call_pure(ops.kl_penalized_scores, scores, lp, rp, mask, 0.3, kind)
    want = []
    for b in range(B):
        total = float(scores[b])
        for t in range(T):
            if real(mask, b, t):
                d = float(lp[b, t]) - float(rp[b, t])
                total -= 0.3 * (d if kind == "k1" else math.exp(-d) - 1 + d)
        want.append(total)
    assert_close(out, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_loss_and_mle_loss_match_reference(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 6
    mask = make_mask(g, B, T, "float")
    lp, adv = -randn(g, B, T).abs(), randn(g, B)
    seq = [sum(float(lp[b, t]) for t in range(T) if real(mask, b, t)) for b in range(B)]
    assert_close(call_pure(ops.reinforce_loss, lp, mask, adv), -sum(float(adv[b]) * seq[b] for b in range(B)) / B)
    assert_close(call_pure(ops.mle_loss, lp, mask), -sum(seq) / B)
    n = sum(1 for b in range(B) for t in range(T) if real(mask, b, t))
    assert_close(call_pure(ops.mle_loss, lp, mask, "token"), -sum(seq) / n)


def test_reinforce_loss_gradient_is_the_policy_gradient():
    # d/d logp[b, t] of the surrogate is -A[b] / B on real tokens, 0 on padding; A gets no gradient
    lp = t64([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]]).requires_grad_()
    adv = t64([2.0, -4.0]).requires_grad_()
    mask = t64([[1, 1, 1], [1, 1, 0]])
    loss = ops.reinforce_loss(lp, mask, adv)
    assert_close(loss, -(2.0 * -6.0 + -4.0 * -1.0) / 2)
    loss.backward()
    assert_close(lp.grad, [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])
    assert adv.grad is None
    with pytest.raises(ValueError, match="advantages must have shape"):
        ops.reinforce_loss(lp, mask, t64([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="reduction"):
        ops.mle_loss(lp, mask, "mean")


@pytest.mark.parametrize("seed", SEEDS)
def test_pg_grad_variance_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    N, D = 6, 4
    s, adv = randn(g, N, D), randn(g, N)
    vecs = [[float(adv[n]) * float(s[n, d]) for d in range(D)] for n in range(N)]
    mean = [sum(v[d] for v in vecs) / N for d in range(D)]
    want = sum(sum((v[d] - mean[d]) ** 2 for d in range(D)) for v in vecs) / N
    assert_close(call_pure(ops.pg_grad_variance, s, adv), want)


def test_pg_grad_variance_by_hand_and_a_baseline_lowers_it():
    s = t64([[1.0, 0.0], [0.0, 1.0]])
    # g = [[3, 0], [0, 1]], mean [1.5, 0.5]: each deviates by (1.5, -0.5) -> 2.5
    assert_close(ops.pg_grad_variance(s, t64([3.0, 1.0])), 2.5)
    # a large common offset in the rewards inflates the variance; subtracting the mean removes it
    g = torch.Generator().manual_seed(0)
    scores, rewards = randn(g, 64, 8), randn(g, 64) + 10.0
    centred = ops.reinforce_advantages(rewards.view(16, 4), "leave_one_out")[0].flatten()
    assert ops.pg_grad_variance(scores, centred) < 0.1 * ops.pg_grad_variance(scores, rewards)
    with pytest.raises(ValueError, match="score_grads"):
        ops.pg_grad_variance(s, t64([1.0]))
