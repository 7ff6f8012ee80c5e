"""Machine-translation metrics with sacrebleu: corpus BLEU and chrF, and their sentence-level versions.

Sentence BLEU is smoothed with sacrebleu's ``exp`` method (Chen & Cherry 2014, method 3: an n-gram
order without matches counts as 1 / 2^k for its k-th such order, instead of zeroing the score) and
uses the effective order (a sentence shorter than 4 tokens is scored on the orders it has), as
``sacrebleu.sentence_bleu`` does; tokenisation is sacrebleu's ``13a``, case-sensitive. chrF is
sacrebleu's default (character 6-grams, beta 2, no word n-grams). All scores are on sacrebleu's
0-100 scale; sacrebleu's float arithmetic can give 100.00000000000004 for a perfect match, so
sentence scores are capped at 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ["corpus_bleu", "corpus_chrf", "corpus_scores", "sentence_bleu", "sentence_chrf"]


@lru_cache(maxsize=None)
def _metric(name: str, sentence: bool):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(effective_order=sentence)  # smooth_method "exp" is BLEU's default
    return CHRF()


def _check(hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not all(isinstance(x, str) for x in hyps + refs):
        raise TypeError("hypotheses and references must be strings")
    return hyps, refs


def sentence_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Smoothed sentence BLEU (0-100) of each hypothesis against its one reference."""
    hyps, refs = _check(hypotheses, references)
    m = _metric("bleu", True)
    return [min(100.0, m.sentence_score(h.strip(), [r]).score) for h, r in zip(hyps, refs)]


def sentence_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence chrF (0-100) of each hypothesis against its one reference."""
    hyps, refs = _check(hypotheses, references)
    m = _metric("chrf", True)
    return [min(100.0, m.sentence_score(h.strip(), [r]).score) for h, r in zip(hyps, refs)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100): n-gram counts summed over all sentences, one reference each."""
    hyps, refs = _check(hypotheses, references)
    return float(_metric("bleu", False).corpus_score([h.strip() for h in hyps], [refs]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-gram statistics summed over all sentences."""
    hyps, refs = _check(hypotheses, references)
    return float(_metric("chrf", False).corpus_score([h.strip() for h in hyps], [refs]).score)


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """{"bleu", "chrf", "n", "bleu_signature", "chrf_signature"}: both corpus metrics and sacrebleu's
    signatures (what a reader needs to compare the numbers with others')."""
    return {"bleu": corpus_bleu(hypotheses, references), "chrf": corpus_chrf(hypotheses, references),
            "n": len(hypotheses), "bleu_signature": str(_metric("bleu", False).get_signature()),
            "chrf_signature": str(_metric("chrf", False).get_signature())}
