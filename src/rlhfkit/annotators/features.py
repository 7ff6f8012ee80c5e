"""Cheap text features of a (prompt, response) pair for the simulated annotators.

All functions are pure and vectorised per batch: they take lists of strings and return
numpy arrays of shape (N,). The costly feature, fluency under a frozen language model, is
injected separately (``rlhfkit.annotators.fluency``). No torch here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "STOPWORDS",
    "FILM_WORDS",
    "words",
    "content_words",
    "sentiment",
    "repetition",
    "length_score",
    "on_topic",
    "copy_fraction",
    "CharTrigramModel",
]

_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+")

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each even ever every few for from further had hadn't has
    hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
    how how's i i'd i'll i'm i've if in into is isn't it it's its itself just let's like me
    more most much mustn't my myself no nor not now of off on once only or other ought our ours
    ourselves out over own quite rather really same shan't she she'd she'll she's should
    shouldn't so some still such than that that's the their theirs them themselves then there
    there's these they they'd they'll they're they've this those though through to too under
    until up upon very was wasn't we we'd we'll we're we've were weren't what what's when when's
    where where's which while who who's whom why why's will with won't would wouldn't yet you
    you'd you'll you're you've your yours yourself yourselves one two get gets got make makes
    made way well back first last new just many much""".split()
)

# Words that put a response on the topic of a movie review whatever the prompt says.
FILM_WORDS = frozenset(
    """film films movie movies cinema story stories plot plots cast casting acting actor actors
    actress performance performances perform performer character characters director directing
    direction directed scene scenes script screenplay writing writer dialogue dialog score music
    musical soundtrack song songs ending ended finale act acts pacing paced camera cinematography
    visual visuals effects audience audiences theater theatre screen sequel genre comedy drama
    thriller horror twist twists role roles lead leads hero heroine villain moment moments shots
    editing edited tone premise narrative climax humor humour jokes laugh laughs tension suspense
    chemistry watch watching watched viewer viewers runtime minutes hour hours mystery western
    documentary animation animated romance romantic heist war fantasy adventure biopic""".split()
)


def words(text: str) -> list[str]:
    """Lower-cased word and number tokens of a text."""
    return _WORD_RE.findall(text.lower())


def content_words(tokens: Iterable[str]) -> list[str]:
    """Tokens that are not stopwords, with a crude plural strip ("scenes" -> "scene")."""
    out = []
    for t in tokens:
        if t in STOPWORDS:
            continue
        if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
            t = t[:-1]
        out.append(t)
    return out


_FILM_KEYS = frozenset(content_words(FILM_WORDS))  # normalised like response words


def sentiment(responses: Sequence[str], analyzer=None) -> np.ndarray:
    """(N,) VADER compound score in [-1, 1] (0 for an empty response)."""
    if analyzer is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(r)["compound"] if r.strip() else 0.0 for r in responses])


def _repeated_fraction(items: list) -> float:
    return 1.0 - len(set(items)) / len(items) if items else 0.0


def repetition(responses: Sequence[str]) -> np.ndarray:
    """(N,) repetition in [0, 1): mean of the repeated fractions ``1 - distinct/total`` of
    content unigrams, word bigrams and word trigrams.

    Stopwords are left out of the unigram term because fluent text repeats "the" and "and";
    bigrams and trigrams keep them so that looping phrases ("is great. it is great.") count.
    "great " * 20 scores about 0.95; an ordinary 30-word sentence about 0 to 0.05.
    """
    out = np.zeros(len(responses))
    for i, r in enumerate(responses):
        toks = words(r)
        uni = _repeated_fraction(content_words(toks))
        bi = _repeated_fraction(list(zip(toks, toks[1:])))
        tri = _repeated_fraction(list(zip(toks, toks[1:], toks[2:])))
        out[i] = (uni + bi + tri) / 3.0
    return out


def length_score(n_words: np.ndarray, lo: int = 12, hi: int = 45) -> np.ndarray:
    """(N,) 1 inside the band [lo, hi] words, a linear ramp 0 -> 1 below it, and a linear
    decline to 0 at 2*hi words above it (the task asks for one or two sentences)."""
    n = np.asarray(n_words, dtype=float)
    below = n / lo
    above = 1.0 - (n - hi) / hi
    return np.clip(np.where(n < lo, below, np.where(n > hi, above, 1.0)), 0.0, 1.0)


def on_topic(prompts: Sequence[str], responses: Sequence[str], saturate: int = 2) -> np.ndarray:
    """(N,) in [0, 1]: distinct content words of the response that are key words of the
    prompt (its content words) or film words, divided by ``saturate`` and capped at 1.

    Counting distinct words and saturating quickly keeps it cheap to satisfy for any real
    continuation and worthless to stuff with key words (repetition punishes that too).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out = np.zeros(len(responses))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        keys = set(content_words(words(p))) | _FILM_KEYS
        hits = {w for w in content_words(words(r)) if w in keys}
        out[i] = min(1.0, len(hits) / saturate)
    return out


def copy_fraction(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """(N,) fraction of the response's word trigrams (bigrams for 2-word responses) that
    also occur in the prompt: 1 for a response that parrots the opening, near 0 for a
    continuation (which may still repeat a title or a name)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out = np.zeros(len(responses))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        toks, ptoks = words(r), words(p)
        n = 3 if len(toks) >= 3 else 2
        grams = list(zip(*(toks[k:] for k in range(n))))
        if grams:
            pgrams = set(zip(*(ptoks[k:] for k in range(n))))
            out[i] = sum(g in pgrams for g in grams) / len(grams)
    return out


class CharTrigramModel:
    """Letter-trigram model of English words: a cheap, torch-free "is this a word?" test.

    It scores a word by its mean log-probability per character (with word-boundary marks),
    interpolating trigram, bigram, unigram and uniform estimates (Jelinek-Mercer). Trained
    on a word list, it gives English-looking words, seen or not, higher scores than keyboard
    mash ("qwpzk"); ``wordlike`` turns that into the fraction of a response's words that pass.
    """

    ALPHABET = "abcdefghijklmnopqrstuvwxyz'$"

    def __init__(self, vocabulary: Iterable[str], lambdas=(0.6, 0.3, 0.09, 0.01), threshold: float = -3.5):
        self.lambdas = lambdas
        self.threshold = threshold
        self.tri: Counter = Counter()
        self.bi: Counter = Counter()
        self.ctx2: Counter = Counter()
        self.ctx1: Counter = Counter()
        self.uni: Counter = Counter()
        for w in set(vocabulary):
            if not w.isalpha():
                continue
            s = "^^" + w.lower() + "$"
            for i in range(2, len(s)):
                a, b, c = s[i - 2], s[i - 1], s[i]
                self.tri[a, b, c] += 1
                self.ctx2[a, b] += 1
                self.bi[b, c] += 1
                self.ctx1[b] += 1
                self.uni[c] += 1
        self.n_uni = sum(self.uni.values())
        self._cache: dict[str, float] = {}

    def score(self, word: str) -> float:
        """Mean log-probability per character (nats) of ``word``, end mark included."""
        if word in self._cache:
            return self._cache[word]
        l3, l2, l1, l0 = self.lambdas
        s = "^^" + word.lower() + "$"
        total = 0.0
        for i in range(2, len(s)):
            a, b, c = s[i - 2], s[i - 1], s[i]
            p3 = self.tri[a, b, c] / self.ctx2[a, b] if self.ctx2[a, b] else 0.0
            p2 = self.bi[b, c] / self.ctx1[b] if self.ctx1[b] else 0.0
            p1 = self.uni[c] / self.n_uni if self.n_uni else 0.0
            total += math.log(l3 * p3 + l2 * p2 + l1 * p1 + l0 / len(self.ALPHABET))
        val = total / (len(s) - 2)
        self._cache[word] = val
        return val

    def wordlike(self, responses: Sequence[str], known: frozenset = frozenset()) -> np.ndarray:
        """(N,) fraction of each response's alphabetic words that look like English words
        (known words and numbers pass); 0 for a response without any word."""
        out = np.zeros(len(responses))
        for i, r in enumerate(responses):
            toks = words(r)
            if not toks:
                continue
            ok = sum(t.isdigit() or t in known or self.score(t) > self.threshold for t in toks)
            out[i] = ok / len(toks)
        return out
