"""A panel of simulated annotators (AlpacaFarm-style, Dubois et al. 2023).

A gold preference people would share is built from features of (prompt, response):
sentiment (VADER), fluency (mean log-likelihood under the frozen initial model, injected),
repetition, length, on-topic word overlap and an English-likeness check. Each annotator
weighs them differently, has its own length bias and its own noise level; a noisy
annotator samples a ranking from Plackett-Luce with utilities ``u / temperature``
(Gumbel-max), which for two responses is Bradley-Terry with logistic noise.

Utility of annotator a for one response (all columns are in ``derived_features``)::

    gate = length_score * (1 - repetition) * (1 - copy) * wordlike * (0.5 + 0.5 * on_topic)
    u_a  =  w_sent * sentiment * gate          # sentiment counts only for a real continuation
          + w_flu  * clip((fluency - center) / scale, -2, 1)       # 0 without a fluency_fn
          - w_rep  * repetition
          - w_copy * copy                          # words copied from the opening
          + w_len  * (length_score - 1)
          + w_top  * (on_topic - 1)
          + w_word * (wordlike - 1)
          + length_bias * clip((n_words - 25) / 15, -1, 1) * length_score

Why it resists the obvious reward hacks: "great great great ..." has sentiment ~0.97 but a
gate near 0 and repetition near 1; an empty string gets no sentiment and the full length,
topic and wordlike penalties; gibberish fails ``wordlike`` (and is disfluent under the
model); fluency is capped at +1 so that degenerate high-likelihood text cannot buy utility,
and copying the opening (which the initial model finds very likely) costs ``w_copy``.

Features are computed once per call for all (prompt, response) pairs; every annotator's
utility is then one matrix product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhfkit import agreement as agr
from rlhfkit.annotators import features as F
from rlhfkit.annotators.flags import FLAG_NAMES, content_flags

__all__ = ["Annotator", "Panel", "default_panel", "DERIVED", "FluencyFn", "pairwise_disagreement"]

FluencyFn = Callable[[list[str], list[str]], np.ndarray]

# Columns of the derived feature matrix, in the order of Annotator.weights().
DERIVED = ("gated_sentiment", "fluency", "repetition", "copy", "length", "on_topic", "wordlike", "length_pref")


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator: feature weights, a length bias, a noise temperature and a
    Likert leniency. ``temperature`` scales the Gumbel noise on utility (larger = noisier)."""

    name: str
    w_sentiment: float = 1.0
    w_fluency: float = 0.6
    w_repetition: float = 3.0
    w_copy: float = 2.0
    w_length: float = 1.5
    w_topic: float = 1.0
    w_wordlike: float = 2.0
    length_bias: float = 0.0
    temperature: float = 0.3
    rating_bias: float = 0.0

    def weights(self) -> np.ndarray:
        """(len(DERIVED),) weights matching the DERIVED columns (penalties enter negated)."""
        return np.array(
            [self.w_sentiment, self.w_fluency, -self.w_repetition, -self.w_copy, self.w_length, self.w_topic,
             self.w_wordlike, self.length_bias]
        )


def _default_annotators() -> list[Annotator]:
    # Five personas; an odd count means a noise-free majority vote is never split.
    return [
        Annotator("balanced", temperature=0.25),
        Annotator("enthusiast", w_sentiment=1.6, w_fluency=0.4, w_repetition=2.5, w_length=1.0,
                  w_topic=0.6, w_wordlike=1.5, length_bias=0.1, temperature=0.35, rating_bias=0.3),
        Annotator("stylist", w_sentiment=0.7, w_fluency=1.0, w_repetition=4.0, w_wordlike=2.5,
                  length_bias=-0.1, temperature=0.25, rating_bias=-0.3),
        Annotator("detail_lover", w_topic=1.2, w_length=1.0, length_bias=0.3, temperature=0.3),
        Annotator("terse", w_sentiment=0.9, w_length=2.0, w_topic=0.8, length_bias=-0.3,
                  temperature=0.3, rating_bias=-0.1),
    ]


def _build_vocabulary(analyzer) -> frozenset:
    """Known English words: VADER's lexicon, stopwords, film words and the bundled task."""
    vocab = {w for w in analyzer.lexicon if w.isalpha()} | set(F.STOPWORDS) | set(F.FILM_WORDS)
    try:
        from rlhfkit.tasks import load_task

        for rows in load_task("movie_reviews").splits.values():
            for row in rows:
                for text in row.values():
                    vocab.update(F.words(text))
    except (FileNotFoundError, ValueError):  # the model still works from VADER's words alone
        pass
    return frozenset(vocab)


def label_noise_mixture(flip_prob: float) -> tuple[float, float]:
    """(P(reverse the ranking), P(replace it by a uniformly random order)) such that every pair of
    the ranking is reversed with probability ``flip_prob``: a random order reverses a pair with
    probability 1/2, the reverse with 1, so P(flip) = p_reverse + p_shuffle / 2.
    p <= 1/2: (0, 2p); p > 1/2: (2p - 1, 2 - 2p). Example: 0.25 -> (0.0, 0.5)."""
    p = float(flip_prob)
    return (0.0, 2.0 * p) if p <= 0.5 else (2.0 * p - 1.0, 2.0 - 2.0 * p)


def ranked_with_lapse(score: np.ndarray, lapse: float, keys: np.ndarray, p_reverse: float, p_shuffle: float) -> list[int]:
    """One group's ranking, best first by ``score`` (ties: earlier index first), after the label-noise
    lapse: reversed when ``lapse < p_reverse``, else in the order of the random ``keys`` when
    ``lapse < p_reverse + p_shuffle`` (``label_noise_mixture``'s probabilities)."""
    if lapse < p_reverse:
        return [int(j) for j in np.argsort(-score, kind="stable")][::-1]
    if lapse < p_reverse + p_shuffle:
        return [int(j) for j in np.argsort(keys, kind="stable")]
    return [int(j) for j in np.argsort(-score, kind="stable")]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Panel:
    """A panel of simulated annotators.

    annotators: the panel (>= 1); fluency_fn: ``(prompts, responses) -> (N,)`` mean token
    log-likelihood under the frozen initial model, or None (the fluency term is then 0:
    fast, for tests and tiny smoke runs); fluency_center / fluency_scale: the
    log-likelihood that counts as "ordinary" and one unit of it (the default -3.5 nats per
    token was measured with SmolLM2-135M-Instruct and the task's chat framing: it scores the
    bundled demonstrations at a median of -3.3, a demonstration written for another opening
    at -3.6, its own temperature-1 samples at -4.0, shuffled words at -7.6 and keyboard mash
    at -6.3; "great " * 20 at -1.9, which is why fluency is capped); length_band: the words
    range that counts as a full-length continuation; seed: seeds the generator used
    when a method is called with ``rng=None`` (each such call starts from the same seed).
    """

    def __init__(
        self,
        annotators: Sequence[Annotator] | None = None,
        fluency_fn: FluencyFn | None = None,
        *,
        fluency_center: float = -3.5,
        fluency_scale: float = 1.0,
        length_band: tuple[int, int] = (12, 45),
        seed: int = 0,
    ):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.annotators = list(annotators) if annotators is not None else _default_annotators()
        if not self.annotators:
            raise ValueError("a panel needs at least one annotator")
        self.fluency_fn = fluency_fn
        self.fluency_center = float(fluency_center)
        self.fluency_scale = float(fluency_scale)
        self.length_band = length_band
        self.seed = seed
        self._analyzer = SentimentIntensityAnalyzer()
        self._vocab = _build_vocabulary(self._analyzer)
        self._chars = F.CharTrigramModel(self._vocab)
        self._W = np.stack([a.weights() for a in self.annotators])  # (A, D)
        self._T = np.array([a.temperature for a in self.annotators])  # (A,)

    def __len__(self) -> int:
        return len(self.annotators)

    def _rng(self, rng: np.random.Generator | int | None) -> np.random.Generator:
        if isinstance(rng, np.random.Generator):
            return rng
        return np.random.default_rng(self.seed if rng is None else rng)

    # ------------------------------------------------------------------ features
    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw features, each (N,): sentiment [-1, 1], repetition [0, 1), copy [0, 1],
        n_words, length [0, 1], on_topic [0, 1], wordlike [0, 1], and fluency (mean token
        log-likelihood, nan for an empty response) only when the panel has a fluency_fn."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n_words = np.array([len(F.words(r)) for r in responses], dtype=float)
        feats = {
            "sentiment": F.sentiment(responses, self._analyzer),
            "repetition": F.repetition(responses),
            "copy": F.copy_fraction(prompts, responses),
            "n_words": n_words,
            "length": F.length_score(n_words, *self.length_band),
            "on_topic": F.on_topic(prompts, responses),
            "wordlike": self._chars.wordlike(responses, known=self._vocab),
        }
        if self.fluency_fn is not None and responses:
            flu = np.asarray(self.fluency_fn(prompts, responses), dtype=float)
            if flu.shape != (len(responses),):
                raise ValueError(f"fluency_fn returned shape {flu.shape}, expected ({len(responses)},)")
            feats["fluency"] = flu
        return feats

    def derived_features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """(N, len(DERIVED)) matrix the utilities are linear in (see the module docstring)."""
        rep, length, topic, wl = feats["repetition"], feats["length"], feats["on_topic"], feats["wordlike"]
        copy = feats["copy"]
        gate = length * (1.0 - rep) * (1.0 - copy) * wl * (0.5 + 0.5 * topic)
        if "fluency" in feats:
            z = (np.nan_to_num(feats["fluency"], nan=-np.inf) - self.fluency_center) / self.fluency_scale
            flu = np.clip(z, -2.0, 1.0)  # nan (empty response) -> the floor
        else:
            flu = np.zeros_like(rep)
        pref = np.clip((feats["n_words"] - 25.0) / 15.0, -1.0, 1.0) * length
        cols = [feats["sentiment"] * gate, flu, rep, copy, length - 1.0, topic - 1.0, wl - 1.0, pref]
        return np.stack(cols, axis=1)

    def utilities(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """(N, A) noise-free utility of every response for every annotator."""
        return self.derived_features(feats) @ self._W.T

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(N,) noise-free panel-mean utility: the "gold reward" for plots and evaluation."""
        return self.utilities(self.features(prompts, responses)).mean(axis=1)

    def prefetch(self, prompts: Sequence[str], responses: Sequence[str], processes) -> None:
        """Work out ahead the costly part of judging these pairs, the fluency feature (a forward pass under
        the initial model), split between ``processes`` (``rlhfkit.processes.Processes``; every process calls
        this with the same pairs) when the fluency_fn can (``InitialModelFluency.prefetch``); the other
        features are cheap. Draws no random numbers: ``rank``, ``compare`` and the rest draw as before."""
        prefetch = getattr(self.fluency_fn, "prefetch", None)
        if prefetch is not None:
            prefetch(list(prompts), list(responses), processes)

    # ------------------------------------------------------------------ rankings
    def rank(
        self,
        prompts: Sequence[str],
        responses: Sequence[Sequence[str]],
        *,
        annotator: int | None = None,
        flip_prob: float = 0.25,
        noise: bool = True,
        rng: np.random.Generator | int | None = None,
    ) -> list[list[int]]:
        """K-way rankings, best first, one per prompt (K may differ between prompts).

        annotator: index of the annotator who ranks every item, or None for a random
        annotator per item (as AlpacaFarm does). noise: sample the ranking from the
        annotator's Plackett-Luce model (Gumbel noise at its temperature); False ranks by
        the annotator's noise-free utility. flip_prob: label noise for training data, as in
        AlpacaFarm: every pair of the ranking comes out reversed with probability flip_prob
        (for K = 2: the preference is flipped with that probability). Done by a lapse of the
        whole ranking (``label_noise_mixture``): with probability min(2p, 2 - 2p) the ranking
        is replaced by a uniformly random order (which reverses each pair with probability
        1/2), and for p > 1/2 with probability 2p - 1 by its reverse. Independent flips of
        each pair would not make a ranking when K > 2 (the votes can be cyclic), and a
        ranking rebuilt from them would no longer flip each pair with probability p.

        The random draws (annotator, Gumbel noise, lapse coin, random-order keys) are taken
        in the same order whatever flip_prob and noise are, so two calls with equally seeded
        generators differ only where a lapse happened.
        """
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        if annotator is not None and not 0 <= annotator < len(self):
            raise ValueError(f"annotator must be in 0..{len(self) - 1}, got {annotator}")
        rng = self._rng(rng)
        sizes = [len(r) for r in responses]
        if any(k < 1 for k in sizes):
            raise ValueError("every prompt needs at least one response to rank")
        flat_p = [p for p, k in zip(prompts, sizes) for _ in range(k)]
        flat_r = [r for rs in responses for r in rs]
        U = self.utilities(self.features(flat_p, flat_r))  # (M, A)
        n = len(prompts)
        who = rng.integers(len(self), size=n)
        gumbel = rng.gumbel(size=len(flat_r))
        lapse = rng.random(n)
        shuffle_keys = rng.random(len(flat_r))
        p_reverse, p_shuffle = label_noise_mixture(flip_prob)
        if annotator is not None:
            who = np.full(n, annotator)
        out: list[list[int]] = []
        start = 0
        for i, k in enumerate(sizes):
            a = who[i]
            score = U[start : start + k, a] / self._T[a]
            if noise:
                score = score + gumbel[start : start + k]
            out.append(ranked_with_lapse(score, lapse[i], shuffle_keys[start : start + k], p_reverse, p_shuffle))
            start += k
        return out

    def _pair_utilities(self, prompts, responses_a, responses_b) -> tuple[np.ndarray, np.ndarray]:
        prompts, a, b = list(prompts), list(responses_a), list(responses_b)
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} A, {len(b)} B")
        U = self.utilities(self.features(prompts + prompts, a + b))  # one feature pass
        return U[: len(a)], U[len(a) :]

    def _votes(self, ua: np.ndarray, ub: np.ndarray, noise: bool, rng) -> np.ndarray:
        """(N, A) votes: 1 = A preferred, 0 = B preferred, 0.5 = exact tie (noise-free only)."""
        if not noise:
            return np.where(ua > ub, 1.0, np.where(ua < ub, 0.0, 0.5))
        p = _sigmoid((ua - ub) / self._T)  # Bradley-Terry = Gumbel-max for two items
        return (rng.random(p.shape) < p).astype(float)

    def compare(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        noise: bool = False,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """(N,) panel majority outcome: 1 = A wins, 0.5 = tie, 0 = B wins.

        Every annotator votes (noise-free by default, or sampled at its temperature with
        noise=True); no label flips. Ties: an evenly split vote or identical responses.
        Noise-free, ``compare(p, a, b) == 1 - compare(p, b, a)`` exactly.
        """
        ua, ub = self._pair_utilities(prompts, responses_a, responses_b)
        votes = self._votes(ua, ub, noise, self._rng(rng) if noise else None)
        margin = (votes - 0.5).sum(axis=1)
        out = np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))
        same = np.array([x == y for x, y in zip(responses_a, responses_b)], dtype=bool)
        out[same] = 0.5
        return out

    # ------------------------------------------------------------------ ratings
    def rate(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        annotator: int,
        rng: np.random.Generator | int | None = None,
    ) -> list[dict[str, Any]]:
        """Likert ratings (1 = worst, 7 = best) with the lecture's flags, one dict per
        response: ``{"rating": int, "fails_instruction": bool, "inappropriate": bool, ...}``.

        rating = round(1 + 6 * sigmoid(1.2 * (u + T * logistic_noise + rating_bias))), with the
        annotator's utility u, temperature T and leniency. Content flags come from the shared
        lexicon (``flags.content_flags``); "fails_instruction" is set for an empty or very
        short response (< 3 words), an off-topic one, degenerate repetition (> 0.5), a copy
        of the opening (> 0.8 of its trigrams) or gibberish (under half the words look like
        English).
        """
        if not 0 <= annotator < len(self):
            raise ValueError(f"annotator must be in 0..{len(self) - 1}, got {annotator}")
        rng = self._rng(rng)
        feats = self.features(prompts, responses)
        u = self.utilities(feats)[:, annotator]
        a = self.annotators[annotator]
        noisy = u + a.temperature * rng.logistic(size=len(u)) + a.rating_bias
        ratings = np.clip(np.rint(1.0 + 6.0 * _sigmoid(1.2 * noisy)), 1, 7).astype(int)
        fails = (
            (feats["n_words"] < 3)
            | (feats["on_topic"] == 0)
            | (feats["repetition"] > 0.5)
            | (feats["copy"] > 0.8)
            | (feats["wordlike"] < 0.5)
        )
        out = []
        for i, r in enumerate(responses):
            row: dict[str, Any] = {"rating": int(ratings[i]), "fails_instruction": bool(fails[i])}
            row.update(content_flags(r))
            out.append({k: row[k] for k in ("rating", *FLAG_NAMES)})
        return out

    # ------------------------------------------------------------------ agreement
    def agreement_report(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        rng: np.random.Generator | int | None = None,
    ) -> dict[str, Any]:
        """Agreement of the panel on pairwise choices, each annotator voting with its noise.

        Returns: n_items, n_annotators, annotators (names), agreement_with_majority (per
        annotator, vs the panel majority including itself), agreement_with_others (per
        annotator, vs the majority of the other annotators; their ties skipped),
        agreement_with_gold (per annotator, vs the sign of the noise-free panel-mean
        utility difference), mean_pairwise_agreement, krippendorff_alpha (nominal),
        fleiss_kappa, majority_prefers_a, gold_prefers_a.
        """
        rng = self._rng(rng)
        ua, ub = self._pair_utilities(prompts, responses_a, responses_b)
        votes = self._votes(ua, ub, True, rng).T  # (A, N) in {0, 1}
        majority = agr.majority_vote(votes)
        others = np.array(
            [agr.agreement_with_reference(votes[[i]], agr.majority_vote(np.delete(votes, i, 0)))[0]
             for i in range(len(self))]
        )
        gold_diff = ua.mean(1) - ub.mean(1)
        gold = np.where(gold_diff > 0, 1.0, np.where(gold_diff < 0, 0.0, np.nan))
        counts = np.stack([(votes == 0).sum(0), (votes == 1).sum(0)], axis=1)
        return {
            "n_items": int(votes.shape[1]),
            "n_annotators": len(self),
            "annotators": [a.name for a in self.annotators],
            "agreement_with_majority": agr.agreement_with_reference(votes, majority).tolist(),
            "agreement_with_others": others.tolist(),
            "agreement_with_gold": agr.agreement_with_reference(votes, gold).tolist(),
            "mean_pairwise_agreement": agr.mean_pairwise_agreement(votes),
            "krippendorff_alpha": agr.krippendorff_alpha(votes, level="nominal"),
            "fleiss_kappa": agr.fleiss_kappa(counts),
            "majority_prefers_a": float(np.nanmean(majority)),
            "gold_prefers_a": float(np.nanmean(gold)),
        }


def pairwise_disagreement(rankings: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How often two rankings of the same items order a pair differently.

    rankings, reference: one best-first list of item indices per row (row i of both ranks the same
    items). Returns {"rate": flipped pairs / pairs, "pairs", "flipped", "per_ranking": the flipped
    fraction of each row's pairs (rows with fewer than 2 items left out)}; "rate" is None without pairs.
    Example: [[0, 1, 2]] vs [[1, 0, 2]] -> 1 of 3 pairs flipped.
    """
    if len(rankings) != len(reference):
        raise ValueError(f"{len(rankings)} rankings but {len(reference)} reference rankings")
    flipped = pairs = 0
    per_ranking = []
    for i, (r, g) in enumerate(zip(rankings, reference)):
        if sorted(r) != sorted(g):
            raise ValueError(f"row {i}: rankings {list(r)} and {list(g)} do not rank the same items")
        pos = {item: j for j, item in enumerate(r)}
        k = len(g)
        if k < 2:
            continue
        f = sum(pos[g[a]] > pos[g[b]] for a in range(k) for b in range(a + 1, k))
        flipped, pairs = flipped + f, pairs + k * (k - 1) // 2
        per_ranking.append(f / (k * (k - 1) / 2))
    return {"rate": flipped / pairs if pairs else None, "pairs": pairs, "flipped": flipped, "per_ranking": per_ranking}


def default_panel(fluency_fn: FluencyFn | None = None, seed: int = 0, **kwargs: Any) -> Panel:
    """The five default annotators (balanced, enthusiast, stylist, detail_lover, terse).

    fluency_fn: e.g. ``ModelFluency(model, tokenizer, format_prompt=task.format_prompt)``
    over the frozen initial policy; None drops the fluency term. Extra keyword arguments go
    to ``Panel`` (fluency_center, fluency_scale, length_band).
    """
    return Panel(_default_annotators(), fluency_fn, seed=seed, **kwargs)

