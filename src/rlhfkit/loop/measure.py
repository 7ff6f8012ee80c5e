"""What the loop measures of a policy, on the same eval prompts and sampling seed every time (common random
numbers: the curves show the policy moving, not fresh sampling noise): gold reward (the task judge's
noise-free score), KL to SFT (sampled: log pi(y|x) - log pi_SFT(y|x) on the policy's own samples), and the
samples themselves, on which each reward model's proxy score and pairwise accuracy are taken."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Measurement:
    """A policy's eval samples: ``k`` per prompt, grouped (prompt i's are rows i*k .. i*k+k-1)."""

    prompts: list[str]  # expanded, one per sample
    responses: list[str]
    gold: np.ndarray  # (P*k,)
    kl: np.ndarray  # (P*k,) nats per sequence
    k: int

    def summary(self) -> dict:
        return {"gold": float(self.gold.mean()), "gold_se": _se(self.gold, self.k), "kl": float(self.kl.mean()),
                "kl_se": _se(self.kl, self.k)}


def _se(x: np.ndarray, k: int) -> float | None:
    """Standard error of the mean over prompts (a prompt's k samples averaged first)."""
    per = np.asarray(x, dtype=np.float64).reshape(-1, k).mean(1)
    return float(per.std(ddof=1) / np.sqrt(per.size)) if per.size > 1 else None


def group_pair_accuracy(scores, gold, k: int) -> dict:
    """Pairwise accuracy of ``scores`` against ``gold`` over the pairs of each group of ``k`` consecutive
    items: a pair counts when its gold scores differ; it is right when the scores order it the same way
    (a tie in ``scores`` counts as wrong). Returns {"accuracy" (None without pairs), "pairs"}.
    Example: scores [1, 2], gold [0, 1], k 2 -> 1 of 1 pair right."""
    s, g = np.asarray(scores, dtype=np.float64).reshape(-1, k), np.asarray(gold, dtype=np.float64).reshape(-1, k)
    a, b = np.triu_indices(k, 1)
    dg, ds = g[:, a] - g[:, b], s[:, a] - s[:, b]
    counted = dg != 0
    right = (np.sign(ds) == np.sign(dg)) & counted
    n = int(counted.sum())
    return {"accuracy": float(right.sum() / n) if n else None, "pairs": n}


def measure(ctx, lm, tokenizer, sft_lm, prompts: list[str], k: int, seed: int, label: str, progress: bool) -> Measurement:
    """``lm`` answers each prompt ``k`` times at the eval temperature (``seed``: the loop's one eval stream)."""
    from rlhfkit.pipeline.context import gen_config
    from rlhfkit.pipeline.evaluate import reference_logprobs
    from rlhfkit.train.best_of_n import sample_grouped

    c = ctx.cfg
    ro = sample_grouped(lm, tokenizer, prompts, k, gen_config(ctx, c.eval_temperature), seed, c.bf16, label, progress)
    expanded = [p for p in prompts for _ in range(k)]
    lp_sft = reference_logprobs(sft_lm, [ro], c.eval_temperature, c.bf16)[0]
    kl = ((ro.logprobs * ro.response_mask).sum(1) - lp_sft).cpu().numpy().astype(np.float64)
    gold = ctx.gold(expanded, ro.responses).cpu().numpy().astype(np.float64)
    return Measurement(expanded, list(ro.responses), gold, kl, k)


def reward_on(scorer, m: Measurement) -> dict:
    """A reward model on a policy's eval samples: its mean (centred) score, the proxy reward, and its
    pairwise accuracy on pairs of one prompt's samples labelled by the noise-free gold."""
    from rlhfkit.scoring import as_scores

    s = as_scores(scorer(m.prompts, m.responses), len(m.responses)).numpy().astype(np.float64)
    acc = group_pair_accuracy(s, m.gold, m.k)
    return {"proxy": float(s.mean()), "proxy_se": _se(s, m.k), "rm_accuracy": acc["accuracy"], "rm_pairs": acc["pairs"]}
