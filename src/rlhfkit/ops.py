"""Pure tensor math of RLHF: log-probs, masked statistics, KL penalties, GAE, PPO,
reward-model and DPO losses, REINFORCE (baselines, loss, MLE term, gradient variance), GRPO.

Every function here is a pure function of tensors: it never modifies its inputs in
place, holds no state, reads no config, and works on any device for float32,
bfloat16 and float64 inputs.

Conventions (see DESIGN.md, "Conventions of the math"):

- B sequences, T response positions, V vocabulary entries.
- ``mask[b, t]`` is 1 (True) for real response tokens -- the EOS token included when it
  was generated -- and 0 (False) after. ``mask`` may be bool or float (0/1). Positional
  logic (last token, end of episode) treats any nonzero entry as "real"; the masked
  averages use the float value as a weight, which is the same thing for a 0/1 mask.
- Values at masked positions are never read: they may hold anything, even nan or inf
  (padding log-probs, say), without changing any result at unmasked positions or any
  gradient. Per-token outputs are 0 at masked positions, except ``masked_whiten``
  (see there).
- A "masked mean" is the sum over the unmasked entries of the whole batch divided by
  their count (not a mean of per-row means).
- Reductions over bfloat16/float16 inputs accumulate in float32 (a bf16 sum cannot even
  count past 256 exactly) and are cast back to the input dtype; ``token_logprobs`` and
  ``entropy_from_logits`` return float32 for half-precision logits because those feed
  ratios of probabilities where bf16's 3 significant digits are not enough.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "token_logprobs",
    "token_logprobs_and_entropy",
    "entropy_from_logits",
    "sequence_logprobs",
    "last_index",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "explained_variance",
    "kl_penalty",
    "kl_shaped_rewards",
    "gae",
    "ppo_policy_loss",
    "ppo_value_loss",
    "bradley_terry_loss",
    "prompt_weights",
    "dpo_loss",
    "ranking_pairs",
    "rloo_advantages",
    "reinforce_advantages",
    "kl_penalized_scores",
    "reinforce_loss",
    "mle_loss",
    "pg_grad_variance",
    "grpo_advantages",
    "grpo_loss",
    "ensemble_reward",
    "pair_disagreement",
]

KL_KINDS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------- helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, the dtype itself for float32/float64,
    the default float dtype for integer/bool inputs."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype.is_floating_point:
        return dtype
    return torch.get_default_dtype()


def _real(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a bool or 0/1 float mask: True where the token is real."""
    return mask if mask.dtype == torch.bool else mask != 0


def _check_same_shape(fn: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"ops.{fn}: shapes must match, got {desc}")


# --------------------------------------------------------------------------- log-probs


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``.

    logits: (B, T, V) already aligned with ``labels`` (position t scores token t).
    labels: (B, T) int64 token ids in [0, V).
    temperature: > 0; use the temperature that sampled the tokens (PPO detail: the
        log-probs must be those of the sampling distribution).
    returns: (B, T) ``log_softmax(logits / temperature)[b, t, labels[b, t]]``, float32
        for bf16/fp16 logits, the logits' dtype otherwise.

    Computed as ``logit[label] - logsumexp(logits)`` a block of rows at a time
    (``token_logprobs_and_entropy``): no (B, T, V) log-softmax, no (B, T, V) float32 copy of
    bf16 logits and never a float64 one. Positions whose label is padding still need a
    valid id; mask them downstream.
    """
    return token_logprobs_and_entropy(logits, labels, temperature, with_entropy=False)[0]


# elements of one block of logits (4 MiB in float32): a block's exp/sum passes stay in cache
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(shape: tuple[int, ...]):
    """Index tuples that cut logits of ``shape`` (A, R, V) into blocks of about _BLOCK_ELEMENTS
    elements: several whole (R, V) slices when one is small, else runs of rows of one slice."""
    A, R, V = shape
    if R * V <= _BLOCK_ELEMENTS:
        step = max(1, _BLOCK_ELEMENTS // max(R * V, 1))
        return [(slice(a, a + step),) for a in range(0, A, step)]
    step = max(1, _BLOCK_ELEMENTS // max(V, 1))
    return [(a, slice(r, r + step)) for a in range(A) for r in range(0, R, step)]


def _scaled_block(block: torch.Tensor, temperature: float) -> tuple[torch.Tensor, bool]:
    """A block of logits in the compute dtype, divided by the temperature, and whether it is a
    new tensor (then the caller may write into it; the caller's logits are never written)."""
    z = block.to(_compute_dtype(block.dtype))
    owned = z is not block
    if temperature != 1.0:
        z = z.div_(temperature) if owned else z / temperature
        owned = True
    return z, owned


class _TokenLogprobs(torch.autograd.Function):
    """``log_softmax(logits / t)[label]`` (and the entropy, no gradient) a block of rows at a
    time; the backward pass rebuilds each block's softmax from the saved logsumexp instead of
    keeping (B, T, V) intermediates: d logp / d z = onehot(label) - softmax(z / t), over t."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, with_entropy):
        x = logits.reshape(logits.shape[0], -1, logits.shape[-1])  # (A, R, V); a view for (B, T, V) slices
        lab = labels.reshape(x.shape[:2]).long()
        dtype = _compute_dtype(logits.dtype)
        lse = torch.empty(x.shape[:2], dtype=dtype, device=x.device)
        logp = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if with_entropy else None
        for idx in _row_blocks(tuple(x.shape)):
            z, _ = _scaled_block(x[idx], temperature)
            m = torch.logsumexp(z, dim=-1)
            lse[idx] = m
            logp[idx] = z.gather(-1, lab[idx].unsqueeze(-1)).squeeze(-1) - m
            if with_entropy:
                pz = (z - m.unsqueeze(-1)).exp_().mul_(z).sum(-1)  # sum_v p_v z_v, one block-sized buffer
                if torch.isnan(pz).any():  # 0 * -inf at tokens of probability 0: their term is 0
                    p = torch.exp(z - m.unsqueeze(-1))
                    pz = torch.where(p > 0, p * z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(-1)
                entropy[idx] = m - pz
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        shape = labels.shape
        if entropy is not None:
            entropy = entropy.reshape(shape)
            ctx.mark_non_differentiable(entropy)
        return logp.reshape(shape), entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        logits, labels, lse = ctx.saved_tensors
        t = ctx.temperature
        x = logits.reshape(logits.shape[0], -1, logits.shape[-1])
        lab = labels.reshape(x.shape[:2]).long()
        g = grad_logp.reshape(x.shape[:2]).to(lse.dtype)
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
        for idx in _row_blocks(tuple(x.shape)):
            z, owned = _scaled_block(x[idx], t)
            gi, m = g[idx].unsqueeze(-1), lse[idx].unsqueeze(-1)
            d = (z.sub_(m) if owned else z - m).exp_()
            d.mul_(-gi).scatter_add_(-1, lab[idx].unsqueeze(-1), gi)
            if t != 1.0:
                d.div_(t)
            grad[idx] = d
        return grad.reshape(logits.shape), None, None, None


def token_logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` and ``entropy_from_logits(logits / temperature)`` in one pass over the
    logits, a block of rows at a time.

    logits: (B, T, V) aligned with ``labels`` (B, T); temperature > 0.
    returns: (logprobs (B, T), entropy (B, T) or None when ``with_entropy`` is False); float32
        for bf16/fp16 logits, the logits' dtype otherwise. The log-probs carry the gradient;
        the entropy is a diagnostic and carries none.

    Each block of about 1M logits is upcast, scaled, reduced (logsumexp, the label's logit,
    the entropy ``lse - sum p z``) and dropped, so neither (B, T, V) float32 copies of bf16
    logits nor (B, T, V) softmax intermediates exist; the gradient is rebuilt block by block
    from the saved logsumexp.
    """
    if logits.dim() < 1 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"ops.token_logprobs: labels {tuple(labels.shape)} must be logits "
            f"{tuple(logits.shape)} without its last (vocabulary) dimension"
        )
    if not temperature > 0:
        raise ValueError(f"ops.token_logprobs: temperature must be > 0, got {temperature}")
    if logits.dim() < 3:  # one position (V,) or one row (T, V): a batch of one
        lp, ent = token_logprobs_and_entropy(logits[None], labels[None], temperature, with_entropy)
        return lp[0], (ent[0] if ent is not None else None)
    if not logits.dtype.is_floating_point:
        logits = logits.to(_compute_dtype(logits.dtype))
    return _TokenLogprobs.apply(logits, labels, float(temperature), with_entropy)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension.

    logits: (B, T, V) (any leading shape works).
    returns: (B, T) ``H = logsumexp(z) - sum_v p_v z_v``; float32 for bf16/fp16 logits,
        the logits' dtype otherwise; never a float64 copy.

    Entries with logit -inf (probability 0) contribute 0, not nan.
    """
    z = logits.to(_compute_dtype(logits.dtype))
    p = torch.softmax(z, dim=-1)
    # p * z is 0 * -inf = nan for filtered-out tokens; their true contribution is 0.
    pz = torch.where(p > 0, p * z, torch.zeros((), dtype=z.dtype, device=z.device))
    return torch.logsumexp(z, dim=-1) - pz.sum(dim=-1)


def sequence_logprobs(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each whole response: sum of token log-probs over real tokens.

    token_logp: (B, T); mask: (B, T) bool or 0/1 float.
    returns: (B,) ``sum_t token_logp[b, t] * mask[b, t]`` over unmasked t (0 for a row
        with no real token), in token_logp's dtype.
    """
    _check_same_shape("sequence_logprobs", token_logp=token_logp, mask=mask)
    acc = _compute_dtype(token_logp.dtype)
    w = mask.to(acc)
    x = torch.where(_real(mask), token_logp.to(acc) * w, torch.zeros((), dtype=acc, device=w.device))
    return x.sum(dim=-1).to(token_logp.dtype)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (where the reward model is read).

    mask: (B, T) bool or 0/1 float.
    returns: (B,) int64, the largest t with ``mask[b, t] != 0``, or -1 for a row
        with no real token.
    """
    real = _real(mask)
    if real.shape[-1] == 0:
        return torch.full(real.shape[:-1], -1, dtype=torch.long, device=real.device)
    pos = torch.arange(real.shape[-1], device=real.device)
    return torch.where(real, pos, -1).amax(dim=-1)


# --------------------------------------------------------------------------- masked statistics


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """``sum(x * mask) / sum(mask)`` over ``dim`` (or over everything when None).

    x: (B, T) (any shape); mask: same shape (or broadcastable to it), bool or float.
    returns: a 0-d tensor (dim None) or x reduced over ``dim``, in x's dtype (float
        dtype for integer/bool x). nan where the mask sums to 0 (0 / 0): an average of
        nothing is undefined, and a silent 0 would hide an empty batch.

    Masked entries of x are never read (nan/inf there do not leak into the result or
    its gradient).
    """
    acc = _compute_dtype(x.dtype)
    try:
        w = mask.to(acc).expand(x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"ops.masked_mean: mask {tuple(mask.shape)} does not broadcast to x {tuple(x.shape)}"
        ) from err
    real = _real(mask).expand(x.shape)
    num = torch.where(real, x.to(acc) * w, torch.zeros((), dtype=acc, device=w.device))
    if dim is None:
        out = num.sum() / w.sum()
    else:
        out = num.sum(dim=dim) / w.sum(dim=dim)
    return out.to(x.dtype if x.dtype.is_floating_point else acc)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of the unmasked entries of x (the whole batch together).

    x: (B, T); mask: (B, T) bool or float.
    unbiased: divide by n - 1 instead of n (n = number of unmasked entries, or the sum
        of the weights for a non-0/1 float mask).
    returns: 0-d tensor in x's dtype; nan when n == 0 (or n == 1 with unbiased=True).
    """
    acc = _compute_dtype(x.dtype)
    xa = x.to(acc)
    mean = masked_mean(xa, mask)
    var = masked_mean((xa - mean) ** 2, mask)
    if unbiased:
        n = mask.to(acc).expand(x.shape).sum()
        # n/(n-1) is inf for n == 1 and 0 * inf = nan: the right answer, no sync needed.
        var = var * (n / (n - 1))
    return var.to(x.dtype if x.dtype.is_floating_point else acc)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x to mean 0 and variance 1 over its unmasked entries.

    x: (B, T); mask: (B, T) bool or float.
    returns: (B, T) ``(x - mean) / sqrt(var + 1e-8)`` with mean and biased var over the
        unmasked entries of the whole batch; with ``shift_mean=False`` the mean is added
        back (scale only, as for rewards whose sign matters).

    Choice: the same affine map is applied at every position, masked ones included
    (masked outputs are not zeroed). Callers only use unmasked entries; keeping the map
    uniform makes the output a plain function of x. Garbage (nan/inf) at masked
    positions stays garbage there and does not affect unmasked outputs.
    """
    _check_same_shape("masked_whiten", x=x, mask=mask)
    acc = _compute_dtype(x.dtype)
    xa = x.to(acc)
    mean = masked_mean(xa, mask)
    var = masked_var(xa, mask, unbiased=False)
    out = (xa - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out.to(x.dtype)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """How much of the returns' variance the value head explains.

    values, returns: (B, T); mask: (B, T) bool or float.
    returns: 0-d tensor ``1 - var(returns - values) / var(returns)`` with (biased)
        variances over the unmasked entries; 1 is perfect, 0 is no better than a
        constant, negative is worse. nan (a tensor, no exception) when var(returns) == 0.
    """
    _check_same_shape("explained_variance", values=values, returns=returns, mask=mask)
    acc = _compute_dtype(returns.dtype)
    r = returns.to(acc)
    var_r = masked_var(r, mask)
    var_res = masked_var(r - values.to(acc), mask)
    nan = torch.full((), float("nan"), dtype=acc, device=r.device)
    return torch.where(var_r == 0, nan, 1 - var_res / var_r).to(returns.dtype)


# --------------------------------------------------------------------------- KL and rewards


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimator of KL(pi || pi_ref) from samples of pi.

    logp: (B, T) log pi(y_t); ref_logp: (B, T) log pi_ref(y_t).
    kind: "k1" ``logp - ref_logp`` (unbiased, can be negative per token);
          "k2" ``0.5 * (logp - ref_logp)**2`` (biased, low variance);
          "k3" ``exp(ref_logp - logp) - 1 - (ref_logp - logp)`` (unbiased and never
          negative; Schulman, "Approximating KL Divergence", 2020).
    returns: (B, T) in the inputs' dtype.
    """
    _check_same_shape("kl_penalty", logp=logp, ref_logp=ref_logp)
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        d = ref_logp - logp
        return torch.expm1(d) - d  # expm1: exact near d = 0, where most tokens are
    raise ValueError(f"ops.kl_penalty: kind must be one of {KL_KINDS}, got {kind!r}")


def kl_shaped_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
    kind: str = "k1",
) -> torch.Tensor:
    """Per-token PPO rewards: KL penalty at every real token, score at the last one.

    scores: (B,) reward-model score of each response.
    logp, ref_logp: (B, T) log-probs of the sampled tokens under the policy and the
        frozen reference; mask: (B, T) bool or 0/1 float.
    beta: KL coefficient (float or 0-d tensor).
    returns: (B, T) ``-beta * kl_penalty(logp, ref_logp, kind)`` at unmasked positions,
        plus ``scores[b]`` at row b's last unmasked position (``last_index``); 0 at
        masked positions; a row with no real token is all zeros.
    """
    _check_same_shape("kl_shaped_rewards", logp=logp, ref_logp=ref_logp, mask=mask)
    if tuple(scores.shape) != tuple(logp.shape[:1]):
        raise ValueError(
            f"ops.kl_shaped_rewards: scores must have shape (B,) = {tuple(logp.shape[:1])}, "
            f"got {tuple(scores.shape)}"
        )
    real = _real(mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # Padding log-probs are sanitised first, so nan/inf there cannot leak into gradients.
    lp = torch.where(real, logp, zero)
    rp = torch.where(real, ref_logp, zero)
    rewards = torch.where(real, -beta * kl_penalty(lp, rp, kind), zero)
    pos = torch.arange(logp.shape[-1], device=logp.device)
    at_last = pos.unsqueeze(0) == last_index(mask).unsqueeze(1)  # all False for an empty row
    return rewards + torch.where(at_last, scores.to(logp.dtype).unsqueeze(1), zero)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    rewards: (B, T) per-token rewards (e.g. ``kl_shaped_rewards``).
    values: (B, T) value estimates V(s_t); pass them detached.
    mask: (B, T) bool or 0/1 float; each row must be ones then zeros (a response and
        its right padding); ValueError otherwise (one device sync to check).
    returns: ``(advantages, returns)``, both (B, T) in rewards' dtype:
        ``delta_t = r_t + gamma * V_{t+1} - V_t`` with V taken as 0 at and after the
        first masked position (the episode has ended: no bootstrap past EOS or past
        the length limit), ``A_t = delta_t + gamma * lam * A_{t+1}``,
        ``returns = A + V``; both 0 at masked positions.

    Vectorised over B; a Python loop over T (T is at most a few hundred).
    """
    _check_same_shape("gae", rewards=rewards, values=values, mask=mask)
    real = _real(mask)
    if real.shape[-1] > 1 and bool((real[:, 1:] & ~real[:, :-1]).any()):
        rows = (real[:, 1:] & ~real[:, :-1]).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"ops.gae: mask rows must be ones then zeros (response then padding); "
            f"rows {rows} have a real token after a masked one"
        )
    acc = _compute_dtype(rewards.dtype)  # the recursion accumulates: not in bf16
    zero = torch.zeros((), dtype=acc, device=rewards.device)
    r = torch.where(real, rewards.to(acc), zero)
    v = torch.where(real, values.to(acc), zero)  # V = 0 from the end of the episode on
    T = rewards.shape[-1]
    adv_next = torch.zeros_like(r[:, 0]) if T else None
    v_next = torch.zeros_like(r[:, 0]) if T else None
    advs = [None] * T
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * v_next - v[:, t]
        adv_next = torch.where(real[:, t], delta + gamma * lam * adv_next, zero)
        advs[t] = adv_next
        v_next = v[:, t]
    advantages = torch.stack(advs, dim=1) if T else torch.zeros_like(r)
    returns = torch.where(real, advantages + v, zero)
    return advantages.to(rewards.dtype), returns.to(rewards.dtype)


# --------------------------------------------------------------------------- PPO losses


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss (Schulman et al. 2017), to be minimised.

    logp: (B, T) log pi_theta(y_t) (with grad); old_logp: (B, T) log-probs at sampling
    time; advantages: (B, T); mask: (B, T) bool or float.
    returns: ``(loss, clip_frac)``, both 0-d tensors in logp's dtype:
        ``ratio = exp(logp - old_logp)``,
        ``loss = masked_mean(max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps)))``;
        ``clip_frac = masked_mean(-A * clamp(ratio, ...) > -A * ratio)`` -- the fraction
        of real tokens where the clipped term is strictly the larger one, i.e. where
        clipping is active and the token's gradient is zero. A tie (ratio inside the
        band, or A == 0) does not count as clipped. clip_frac carries no gradient.
    """
    _check_same_shape("ppo_policy_loss", logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    real = _real(mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # Sanitise padding first: exp(garbage) could be inf, and inf * 0 grads are nan.
    log_ratio = torch.where(real, logp - torch.where(real, old_logp, zero), zero)
    adv = torch.where(real, advantages.to(logp.dtype), zero)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(logp.dtype), mask).detach()
    return loss, clip_frac


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI's PPO2 and Ziegler et al. 2019), to be minimised.

    values: (B, T) V_theta(s_t) (with grad); old_values: (B, T) values at sampling time;
    returns: (B, T) GAE returns; mask: (B, T) bool or float.
    returns: ``(loss, clip_frac)``, 0-d tensors in values' dtype:
        ``V_clip = old_V + clamp(V - old_V, -eps, eps)``,
        ``loss = 0.5 * masked_mean(max((V - R)**2, (V_clip - R)**2))``;
        ``clip_frac = masked_mean((V_clip - R)**2 > (V - R)**2)`` -- fraction of real
        tokens where the clipped term is strictly larger (so it is the one used, and
        the token's gradient is zero). No gradient.
    """
    _check_same_shape("ppo_value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    real = _real(mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(real, values, zero)
    old_v = torch.where(real, old_values.to(values.dtype), zero)
    ret = torch.where(real, returns.to(values.dtype), zero)
    v_clipped = old_v + torch.clamp(v - old_v, -clip_eps, clip_eps)
    unclipped = (v - ret) ** 2
    clipped = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(values.dtype), mask).detach()
    return loss, clip_frac


# --------------------------------------------------------------------------- preference losses


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-model loss: negative log-likelihood of the preferences under Bradley-Terry.

    chosen, rejected: (B,) scores of the preferred and the other response.
    margin: None (0), a float, or (B,) -- e.g. Llama 2's preference-strength margin.
    weight: None (every pair alike) or (B,) non-negative pair weights, e.g. ``prompt_weights`` so that
        each prompt's comparisons count as one element (InstructGPT).
    returns: 0-d ``sum(w * -logsigmoid(chosen - rejected - margin)) / sum(w)`` (w = 1 when None).
    """
    _check_same_shape("bradley_terry_loss", chosen=chosen, rejected=rejected)
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    nll = -F.logsigmoid(diff)
    if weight is None:
        return nll.mean()
    _check_same_shape("bradley_terry_loss", chosen=chosen, weight=weight)
    return (nll * weight).sum() / weight.sum()


def prompt_weights(group: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """group: (B,) integer id of each pair's prompt -> (B,) weights 1 / (pairs of that prompt), so that
    every prompt weighs the same in a weighted mean (InstructGPT: the K(K-1)/2 comparisons of a ranking
    are one batch element, which keeps a prompt with many comparisons from dominating)."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].to(dtype)


def ensemble_reward(scores: torch.Tensor, std_penalty: float = 0.0) -> torch.Tensor:
    """The score of a reward-model ensemble: the members' mean, less ``std_penalty`` times their spread
    (the "conservative reward" of Coste et al. 2023: where the members disagree the proxy is least to be
    trusted, so the policy gains nothing there).

    scores: (B, K) the K members' scores of B responses (K >= 1; each member normalised alike).
    std_penalty: lambda >= 0 (0: the plain mean).
    returns: (B,) ``mean_k s[b,k] - lambda * sqrt(mean_k (s[b,k] - mean_b)**2)``: the population std over
        members (1/K, as Coste et al.'s variance), so one member has spread 0 and scores as itself.
    """
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"ops.ensemble_reward: scores must be (B, K) with K >= 1, got {tuple(scores.shape)}")
    if std_penalty < 0:
        raise ValueError(f"ops.ensemble_reward: std_penalty must be >= 0, got {std_penalty}")
    x = scores.to(_compute_dtype(scores.dtype))
    mean = x.mean(1)
    out = mean if std_penalty == 0 else mean - std_penalty * x.std(1, correction=0)
    return out.to(scores.dtype)


def pair_disagreement(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """How much an ensemble disagrees about which of two responses is better: the population std over
    members of the score difference (what active learning asks people about first).

    first, second: (N, K) the K members' scores of the two responses of N pairs.
    returns: (N,) ``sqrt(mean_k (d[n,k] - mean_k d[n,k])**2)`` with ``d = first - second`` (symmetric in the
        two; 0 when every member sees the same gap, however large).
    """
    _check_same_shape("pair_disagreement", first=first, second=second)
    if first.dim() != 2:
        raise ValueError(f"ops.pair_disagreement: scores must be (N, K), got {tuple(first.shape)}")
    dtype = _compute_dtype(first.dtype)
    return (first.to(dtype) - second.to(dtype)).std(1, correction=0).to(first.dtype)


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation loss (Rafailov et al. 2023), with conservative label smoothing.

    All inputs: (B,) sequence log-probs (``sequence_logprobs``) of the chosen and the
    rejected response under the policy and the frozen reference.
    label_smoothing: eps in [0, 0.5), the assumed probability that a label is flipped (cDPO,
        Mitchell 2023): the loss is the expected one under that noise.
    weight: None (every pair alike) or (B,) non-negative pair weights (``prompt_weights``).
    returns: ``(loss, chosen_rewards, rejected_rewards)``:
        ``chosen_rewards = beta * (pc - rc)``, ``rejected_rewards = beta * (pr - rr)``,
        both (B,) and detached (they are logged, not optimised; the implicit reward margin is
        their difference, the accuracy the share of positive margins);
        with ``h = (pc - rc) - (pr - rr)``, per pair
        ``(1 - eps) * -logsigmoid(beta * h) + eps * -logsigmoid(-beta * h)``, and
        ``loss`` its mean (weighted by ``weight`` when given: sum(w * l) / sum(w)), 0-d, with grad.
    """
    _check_same_shape(
        "dpo_loss",
        policy_chosen_logp=policy_chosen_logp,
        policy_rejected_logp=policy_rejected_logp,
        ref_chosen_logp=ref_chosen_logp,
        ref_rejected_logp=ref_rejected_logp,
    )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"ops.dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen = beta * (policy_chosen_logp - ref_chosen_logp)
    rejected = beta * (policy_rejected_logp - ref_rejected_logp)
    logits = chosen - rejected
    per_pair = -F.logsigmoid(logits)
    if label_smoothing:
        per_pair = (1.0 - label_smoothing) * per_pair + label_smoothing * -F.logsigmoid(-logits)
    if weight is None:
        loss = per_pair.mean()
    else:
        _check_same_shape("dpo_loss", policy_chosen_logp=policy_chosen_logp, weight=weight)
        loss = (per_pair * weight).sum() / weight.sum()
    return loss, chosen.detach(), rejected.detach()


def ranking_pairs(ranking: Sequence[Hashable]) -> list[tuple[Hashable, Hashable]]:
    """All (winner, loser) pairs implied by a ranking, best first.

    ranking: K distinct item ids, best to worst (a list/tuple; a 1-d tensor or array is
        converted with ``.tolist()``).
    returns: the K(K-1)/2 pairs ``(ranking[i], ranking[j])`` for i < j, ordered by i
        then j -- e.g. [a, b, c] -> [(a, b), (a, c), (b, c)].
    Raises ValueError when an item appears twice, TypeError for a str or non-sequence.
    """
    if hasattr(ranking, "tolist") and not isinstance(ranking, (list, tuple)):
        ranking = ranking.tolist()
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise TypeError(
            f"ops.ranking_pairs: ranking must be a sequence of item ids, got {type(ranking).__name__}"
        )
    items = list(ranking)
    seen: set = set()
    dups = []
    for item in items:
        if item in seen and item not in dups:
            dups.append(item)
        seen.add(item)
    if dups:
        raise ValueError(f"ops.ranking_pairs: items must be distinct, repeated: {dups} in {items}")
    return [(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items))]


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    rewards: (P, K) rewards of K >= 2 samples for each of P prompts.
    returns: (P, K) ``r[p, k] - mean_{j != k} r[p, j] = r - (sum_k r - r) / (K - 1)``.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"ops.rloo_advantages: rewards must be (P, K) with K >= 2 samples per prompt, "
            f"got shape {tuple(rewards.shape)}"
        )
    k = rewards.shape[1]
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


# --------------------------------------------------------------------------- REINFORCE

BASELINES = ("none", "constant", "moving_average", "batch_mean", "leave_one_out")


def reinforce_advantages(
    rewards: torch.Tensor,
    baseline: str,
    state: float | None = None,
    value: float = 0.0,
    decay: float = 0.9,
) -> tuple[torch.Tensor, float | None]:
    """REINFORCE advantages ``A = r - b`` under one of ``BASELINES``.

    rewards: (P, K) sequence rewards of K samples for each of P prompts.
    baseline:
      "none":           ``b = 0``.
      "constant":       ``b = value``.
      "moving_average": ``b = state``, the exponential moving average of the means of the
                        *earlier* batches (``value`` for the first batch, when ``state`` is
                        None); so b never depends on the rewards it is subtracted from.
      "batch_mean":     ``b = mean of all P*K rewards`` (each sample's own reward included,
                        so the estimate is biased by a factor (1 - 1/(P*K)); the simple choice).
      "leave_one_out":  ``b[p, k] = mean_{j != k} r[p, j]`` (RLOO; ``rloo_advantages``), K >= 2.
    state: the moving average before this batch (None before the first); other baselines
        pass it through unchanged.
    decay: the moving average's ``d``: after the batch ``state' = d * state + (1 - d) *
        mean(r)``; after the first batch (state None) ``state' = mean(r)``.
    returns: (advantages (P, K) in rewards' dtype, state').
    """
    if rewards.dim() != 2:
        raise ValueError(f"ops.reinforce_advantages: rewards must be (P, K), got shape {tuple(rewards.shape)}")
    if baseline == "none":
        return rewards.clone(), state
    if baseline == "constant":
        return rewards - value, state
    if baseline == "moving_average":
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ops.reinforce_advantages: decay must be in [0, 1), got {decay}")
        b = value if state is None else state
        mean = float(rewards.to(_compute_dtype(rewards.dtype)).mean())
        return rewards - b, mean if state is None else decay * state + (1.0 - decay) * mean
    if baseline == "batch_mean":
        acc = _compute_dtype(rewards.dtype)
        return (rewards.to(acc) - rewards.to(acc).mean()).to(rewards.dtype), state
    if baseline == "leave_one_out":
        return rloo_advantages(rewards), state
    raise ValueError(f"ops.reinforce_advantages: baseline must be one of {BASELINES}, got {baseline!r}")


def kl_penalized_scores(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
    kind: str = "k1",
) -> torch.Tensor:
    """Sequence rewards with the per-token KL penalty inside, as PPO's (``kl_shaped_rewards``
    summed over tokens): ``scores[b] - beta * sum_t kl_penalty(logp, ref_logp, kind)[b, t]``
    over real tokens (a row with no real token keeps its score).

    With k1 and the log-probs of the sampling policy (no gradient through them), REINFORCE on
    these rewards is an unbiased gradient of ``E[score] - beta * KL(pi || pi_ref)``: the
    penalty's own score-function term ``E[grad log pi]`` is 0 (Ahmadian et al. 2024 use this
    sequence-level reward for RLOO).

    scores: (B,); logp, ref_logp, mask: (B, T). returns: (B,) in logp's dtype.
    """
    _check_same_shape("kl_penalized_scores", logp=logp, ref_logp=ref_logp, mask=mask)
    if tuple(scores.shape) != tuple(logp.shape[:1]):
        raise ValueError(
            f"ops.kl_penalized_scores: scores must have shape (B,) = {tuple(logp.shape[:1])}, got {tuple(scores.shape)}"
        )
    real = _real(mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # padding log-probs are sanitised first, as in kl_shaped_rewards
    kl = kl_penalty(torch.where(real, logp, zero), torch.where(real, ref_logp, zero), kind)
    return scores.to(logp.dtype) - beta * sequence_logprobs(kl, mask)


def reinforce_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate: ``mean_b -(A[b] * log p(y_b | x_b))``, with
    ``log p(y_b | x_b) = sum_t logp[b, t]`` over real tokens (``sequence_logprobs``). Its
    gradient is the policy-gradient estimate ``-mean_b A[b] grad log p(y_b | x_b)``.

    logp: (B, T) log pi(y_t | x, y_<t) with gradient; mask: (B, T); advantages: (B,), treated
        as constants (detached). returns: 0-d tensor.
    """
    if tuple(advantages.shape) != tuple(logp.shape[:1]):
        raise ValueError(
            f"ops.reinforce_loss: advantages must have shape (B,) = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}"
        )
    seq = sequence_logprobs(logp, mask)
    return -(advantages.detach().to(seq.dtype) * seq).mean()


def mle_loss(logp: torch.Tensor, mask: torch.Tensor, reduction: str = "sequence") -> torch.Tensor:
    """Negative log-likelihood of reference responses y* (the MLE term of MLE interpolation,
    InstructGPT's ptx term); multiply by the coefficient alpha at the call site.

    logp: (B, T) log pi(y*_t | x, y*_<t); mask: (B, T) 1 on the tokens the loss is on.
    reduction: "sequence": ``-mean_b log p(y*_b | x_b)`` (sum over tokens, mean over pairs:
        the scale of ``reinforce_loss``); "token": ``-masked_mean(logp, mask)`` (the scale of
        SFT's loss and of PPO's token-mean policy loss).
    returns: 0-d tensor.
    """
    if reduction == "sequence":
        return -sequence_logprobs(logp, mask).mean()
    if reduction == "token":
        return -masked_mean(logp, mask)
    raise ValueError(f"ops.mle_loss: reduction must be 'sequence' or 'token', got {reduction!r}")


def pg_grad_variance(score_grads: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Variance of the per-sample policy-gradient estimate over a batch.

    score_grads: (N, D) ``s_n = grad_theta log p(y_n | x_n)`` of N samples (over any fixed
        set of D parameters); advantages: (N,) ``A_n``.
    returns: 0-d ``(1/N) sum_n || g_n - g_bar ||^2`` with ``g_n = A_n s_n`` (the per-sample
        gradient of the surrogate, up to sign) and ``g_bar = (1/N) sum_n g_n``: the trace of
        the (biased) covariance of the per-sample estimates. The variance of the batch-mean
        estimate is this divided by N. The same ``score_grads`` with two advantage vectors
        (with and without a baseline) compare the baselines on the same samples.
    """
    if score_grads.dim() != 2 or tuple(advantages.shape) != (score_grads.shape[0],):
        raise ValueError(
            f"ops.pg_grad_variance: expected score_grads (N, D) and advantages (N,), got "
            f"{tuple(score_grads.shape)} and {tuple(advantages.shape)}"
        )
    acc = _compute_dtype(score_grads.dtype)
    g = advantages.to(acc).unsqueeze(1) * score_grads.to(acc)
    return ((g - g.mean(dim=0, keepdim=True)) ** 2).sum(dim=1).mean().to(score_grads.dtype)


# --------------------------------------------------------------------------- GRPO

GRPO_AGGREGATIONS = ("sequence", "token")


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantages (Shao et al. 2024, DeepSeekMath, outcome supervision).

    rewards: (P, K) rewards of K >= 2 samples for each of P prompts (a prompt's samples are its group).
    returns: (P, K) ``(r - mean_k r) / (std_k r + eps)``, the std over the group with Bessel's
        correction (K - 1), as DeepSeekMath's and TRL's implementations take it; a group whose
        rewards are all equal gets advantages 0. ``scale=False``: ``r - mean_k r`` only (Liu et al.
        2025, "Dr. GRPO": the std division weighs groups that are nearly solved or nearly hopeless
        up). Computed in float32 or wider, returned in rewards' dtype.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"ops.grpo_advantages: rewards must be (P, K) with K >= 2 samples per prompt, got shape {tuple(rewards.shape)}"
        )
    r = rewards.to(_compute_dtype(rewards.dtype))
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.to(rewards.dtype)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    aggregation: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's objective, to be minimised (Shao et al. 2024, eq. 3): PPO's clipped surrogate with a
    sequence's advantage at each of its tokens, plus ``beta`` times the k3 estimate of KL(pi || pi_ref)
    at each token, inside the loss rather than the reward; no value function.

    logp: (B, T) log pi_theta(y_t) (with grad); old_logp: (B, T) at sampling time; ref_logp: (B, T)
    under the frozen reference; advantages: (B,) (``grpo_advantages``, flattened); mask: (B, T).
    aggregation: "sequence": each response's token mean, then the mean over responses (the paper's
        ``1/G sum_i 1/|o_i| sum_t``); "token": the mean over every real token of the batch (DAPO;
        long responses weigh more).
    returns: ``(loss, parts)``; per token ``max(-A ratio, -A clamp(ratio, 1-eps, 1+eps))`` is
        ``ppo_policy_loss``'s and ``kl_penalty(logp, ref_logp, "k3") = exp(ref - logp) - (ref - logp) - 1``
        (never negative; its gradient through logp pulls pi towards pi_ref); ``parts``: ``pg_loss``,
        ``kl`` (the aggregated k3, with grad) and ``clip_frac`` (no grad).
    """
    _check_same_shape("grpo_loss", logp=logp, old_logp=old_logp, ref_logp=ref_logp, mask=mask)
    if tuple(advantages.shape) != tuple(logp.shape[:1]):
        raise ValueError(
            f"ops.grpo_loss: advantages must have shape (B,) = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}"
        )
    if aggregation not in GRPO_AGGREGATIONS:
        raise ValueError(f"ops.grpo_loss: aggregation must be one of {GRPO_AGGREGATIONS}, got {aggregation!r}")
    real = _real(mask)
    acc = _compute_dtype(logp.dtype)
    weights = real.to(acc)
    if aggregation == "sequence":
        # a masked mean with weights 1/|o_i| is the mean over responses of each response's token mean
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    per_token_adv = advantages.detach().to(logp.dtype).unsqueeze(1).expand_as(logp)
    pg, clip_frac = ppo_policy_loss(logp, old_logp, per_token_adv, weights, clip_eps)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    ref = torch.where(real, ref_logp.detach().to(logp.dtype), zero)
    kl = masked_mean(kl_penalty(torch.where(real, logp, zero), ref, "k3"), weights)
    return pg + beta * kl, {"pg_loss": pg, "kl": kl, "clip_frac": clip_frac}
