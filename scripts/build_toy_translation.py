"""Build the bundled toy translation task: English -> Veltan, a language made up for this repository.

English sentences are drawn from a small grammar (below) by a seeded random generator and each is
rendered twice from the same structure: as English and as Veltan. The Veltan side follows fixed
rules (a lexicon, word order, agreement), so every reference is exact and the same seed always
gives the same files. No data set is read. Usage:

    python scripts/build_toy_translation.py            # writes src/rlhfkit/tasks/toy_translation/
    python scripts/build_toy_translation.py --check    # exits 1 if the shipped files differ

Public functions: ``build(seed=0) -> dict[str, list[dict] | str]`` (file stem -> JSONL rows, and
"lexicon" -> the lexicon's TSV text), ``to_jsonl(rows)``, and the renderers ``english(sentence)`` /
``veltan(sentence)`` of one sentence structure (``Clause``, ``NP``, ``Sentence``).

Veltan, in short (README.md of the task folder has the full list):
  * word order subject - object - verb, then adverb and prepositional phrase; adjectives follow the noun;
  * every noun has a class, I or II (lexical, as German gender): articles lo/la (plural los/las),
    un/una; adjectives agree with their noun in class and number (-o, -a, -os, -as);
  * verbs take a tense vowel (present -a, past -i, future -o) and -n after a plural subject;
  * negation is the particle "ne" right before the verb; object pronouns end in -k.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "rlhfkit" / "tasks" / "toy_translation"
# file stem -> sentences; "eval" is the test split, "dev" the development split (not a loader split)
SPLIT_SIZES = {"sft": 2400, "dev": 200, "eval": 200, "preference": 400, "unlabeled": 800}
SENTENCE_WORDS = (4, 15)  # English words (punctuation not counted)
LEXICON_SEED = 1234  # fixes the language itself; build(seed) only changes which sentences are drawn

# ----------------------------------------------------------------------------- English lexicon
# nouns: singular, plural, category. Categories decide which verbs, adjectives and prepositions fit.
NOUNS = [
    # people
    ("man", "men", "person"), ("woman", "women", "person"), ("child", "children", "person"),
    ("boy", "boys", "person"), ("girl", "girls", "person"), ("teacher", "teachers", "person"),
    ("doctor", "doctors", "person"), ("farmer", "farmers", "person"), ("student", "students", "person"),
    ("king", "kings", "person"), ("queen", "queens", "person"), ("baker", "bakers", "person"),
    ("friend", "friends", "person"), ("sister", "sisters", "person"), ("brother", "brothers", "person"),
    ("mother", "mothers", "person"), ("father", "fathers", "person"), ("neighbor", "neighbors", "person"),
    ("soldier", "soldiers", "person"), ("singer", "singers", "person"),
    # animals
    ("dog", "dogs", "animal"), ("cat", "cats", "animal"), ("horse", "horses", "animal"),
    ("bird", "birds", "animal"), ("mouse", "mice", "animal"), ("cow", "cows", "animal"),
    ("lamb", "lambs", "animal"), ("rabbit", "rabbits", "animal"), ("fox", "foxes", "animal"),
    ("wolf", "wolves", "animal"), ("bear", "bears", "animal"), ("duck", "ducks", "animal"),
    ("frog", "frogs", "animal"), ("goat", "goats", "animal"), ("pig", "pigs", "animal"),
    # portable things
    ("book", "books", "thing"), ("letter", "letters", "thing"), ("key", "keys", "thing"),
    ("box", "boxes", "thing"), ("cup", "cups", "thing"), ("bag", "bags", "thing"), ("hat", "hats", "thing"),
    ("ball", "balls", "thing"), ("chair", "chairs", "thing"), ("table", "tables", "thing"),
    ("lamp", "lamps", "thing"), ("picture", "pictures", "thing"), ("ring", "rings", "thing"),
    ("coat", "coats", "thing"), ("shoe", "shoes", "thing"), ("basket", "baskets", "thing"),
    ("knife", "knives", "thing"), ("pen", "pens", "thing"), ("map", "maps", "thing"), ("clock", "clocks", "thing"),
    # countable food
    ("apple", "apples", "food"), ("egg", "eggs", "food"), ("cake", "cakes", "food"),
    ("orange", "oranges", "food"), ("potato", "potatoes", "food"), ("carrot", "carrots", "food"),
    ("tomato", "tomatoes", "food"), ("sandwich", "sandwiches", "food"), ("banana", "bananas", "food"),
    ("pear", "pears", "food"),
    # mass nouns (no plural, no "a"): food and drink
    ("bread", None, "mass_food"), ("rice", None, "mass_food"), ("cheese", None, "mass_food"),
    ("meat", None, "mass_food"), ("soup", None, "mass_food"),
    ("milk", None, "drink"), ("water", None, "drink"), ("tea", None, "drink"), ("coffee", None, "drink"),
    ("juice", None, "drink"),
    # places
    ("house", "houses", "place"), ("garden", "gardens", "place"), ("kitchen", "kitchens", "place"),
    ("park", "parks", "place"), ("forest", "forests", "place"), ("river", "rivers", "place"),
    ("school", "schools", "place"), ("market", "markets", "place"), ("city", "cities", "place"),
    ("village", "villages", "place"), ("church", "churches", "place"), ("room", "rooms", "place"),
    ("street", "streets", "place"), ("field", "fields", "place"), ("boat", "boats", "place"),
    ("car", "cars", "place"), ("train", "trains", "place"), ("bridge", "bridges", "place"),
    ("tree", "trees", "place"), ("hill", "hills", "place"),
]
ANIMATE = ("person", "animal")
EDIBLE = ("food", "mass_food")

# adjectives and the noun categories they describe
_ALL = ("person", "animal", "thing", "food", "mass_food", "drink", "place")
ADJECTIVES = [
    ("big", ("person", "animal", "thing", "food", "place")), ("small", ("person", "animal", "thing", "food", "place")),
    ("old", ("person", "animal", "thing", "place")), ("young", ANIMATE), ("new", ("thing", "place")),
    ("red", ("thing", "food", "place")), ("blue", ("thing", "place")), ("green", ("thing", "food", "place")),
    ("white", ("animal", "thing", "place")), ("black", ("animal", "thing", "place")),
    ("happy", ANIMATE), ("sad", ANIMATE), ("tired", ANIMATE), ("hungry", ANIMATE), ("angry", ANIMATE),
    ("quiet", ("person", "animal", "place")), ("beautiful", ("person", "animal", "thing", "place")),
    ("tall", ("person", "place")), ("strong", ANIMATE + ("drink",)), ("clever", ANIMATE), ("kind", ("person",)),
    ("brave", ANIMATE), ("lazy", ANIMATE), ("rich", ("person",)), ("poor", ("person",)),
    ("warm", ("thing", "mass_food", "drink", "place")), ("cold", ("thing", "mass_food", "drink", "place")),
    ("clean", ("thing", "place", "drink")), ("dirty", ("animal", "thing", "place")), ("heavy", ("thing",)),
    ("sweet", ("food", "drink")), ("fresh", ("food", "mass_food", "drink")), ("good", _ALL), ("bad", _ALL),
    ("dark", ("place",)), ("empty", ("thing", "place")), ("full", ("thing", "place")),
]

# verbs: base, third person singular, past; intransitive verbs have no object categories
INTRANSITIVE = [
    ("sleep", "sleeps", "slept"), ("run", "runs", "ran"), ("walk", "walks", "walked"), ("sing", "sings", "sang"),
    ("dance", "dances", "danced"), ("laugh", "laughs", "laughed"), ("cry", "cries", "cried"),
    ("swim", "swims", "swam"), ("wait", "waits", "waited"), ("work", "works", "worked"),
    ("play", "plays", "played"), ("sit", "sits", "sat"), ("jump", "jumps", "jumped"),
    ("shout", "shouts", "shouted"), ("smile", "smiles", "smiled"), ("rest", "rests", "rested"),
]
_OPENABLE = ("book", "letter", "box", "bag", "basket")
_MADE = ("cake", "sandwich", "soup", "tea", "coffee", "chair", "table", "basket", "hat", "coat", "picture")
_BUILT = ("house", "boat", "bridge", "table", "chair", "school", "church", "box")
_BREAKABLE = ("cup", "clock", "lamp", "chair", "key", "pen", "table", "ring")
# transitive verbs: forms, then the categories (or single nouns) their object may be
TRANSITIVE = [
    (("see", "sees", "saw"), _ALL), (("watch", "watches", "watched"), ANIMATE + ("thing", "place")),
    (("eat", "eats", "ate"), EDIBLE), (("drink", "drinks", "drank"), ("drink",)),
    (("like", "likes", "liked"), _ALL), (("love", "loves", "loved"), _ALL),
    (("want", "wants", "wanted"), ("animal", "thing", "food", "mass_food", "drink")),
    (("find", "finds", "found"), ("animal", "thing", "food")), (("lose", "loses", "lost"), ("thing",)),
    (("take", "takes", "took"), ("thing", "food")), (("bring", "brings", "brought"), ("thing", "food", "mass_food", "drink")),
    (("carry", "carries", "carried"), ("thing", "food")), (("hold", "holds", "held"), ("thing", "food")),
    (("buy", "buys", "bought"), ("animal", "thing", "food", "mass_food", "drink")),
    (("sell", "sells", "sold"), ("animal", "thing", "food", "mass_food", "drink")),
    (("open", "opens", "opened"), _OPENABLE), (("close", "closes", "closed"), _OPENABLE),
    (("study", "studies", "studied"), ("book", "letter", "map")), (("write", "writes", "wrote"), ("letter", "book")),
    (("make", "makes", "made"), _MADE), (("cook", "cooks", "cooked"), ("food", "mass_food")),
    (("clean", "cleans", "cleaned"), ("thing", "house", "kitchen", "room", "street", "car", "boat")),
    (("paint", "paints", "painted"), ("thing", "house", "room", "car", "boat", "bridge")),
    (("build", "builds", "built"), _BUILT), (("break", "breaks", "broke"), _BREAKABLE),
    (("help", "helps", "helped"), ANIMATE), (("call", "calls", "called"), ANIMATE),
    (("follow", "follows", "followed"), ANIMATE), (("visit", "visits", "visited"), ("person", "place")),
    (("hear", "hears", "heard"), ANIMATE), (("catch", "catches", "caught"), ("animal", "ball")),
    (("throw", "throws", "threw"), ("ball", "key", "hat", "shoe", "apple", "egg")),
    (("feed", "feeds", "fed"), ANIMATE), (("wash", "washes", "washed"), ("animal", "thing", "car", "boat")),
    (("draw", "draws", "drew"), ANIMATE + ("thing", "place")),
]
# prepositions: English, Veltan, the categories (or nouns) of their noun phrase
PREPOSITIONS = [
    ("in", "en", ("place", "box", "bag", "basket", "cup")),
    ("on", "sur", ("table", "chair", "bridge", "boat", "train", "hill", "street", "field")),
    ("under", "sub", ("table", "chair", "tree", "bridge")),
    ("near", "pres", ("place",)),
    ("behind", "dor", ("house", "tree", "school", "church", "car", "market")),
    ("with", "kon", ANIMATE),
    ("for", "por", ("person",)),
]
ADVERBS = ["quickly", "slowly", "quietly", "loudly", "carefully", "happily", "sadly", "again"]
CONJUNCTIONS = [("and", "e"), ("but", "ma"), ("because", "kar")]

# pronouns: subject, object, Veltan subject form, plural?, class of a predicate adjective
PRONOUNS = {
    "1sg": ("I", "me", "mi", False, 1), "2sg": ("you", "you", "tu", False, 1), "3m": ("he", "him", "il", False, 1),
    "3f": ("she", "her", "sel", False, 2), "1pl": ("we", "us", "nos", True, 1), "3pl": ("they", "them", "lor", True, 1),
}
NUMBERS = [("two", "du"), ("three", "tri"), ("four", "kvar"), ("five", "sin")]
ARTICLES = {("the", 1, False): "lo", ("the", 2, False): "la", ("the", 1, True): "los", ("the", 2, True): "las",
            ("a", 1, False): "un", ("a", 2, False): "una"}
TENSE_VOWEL = {"present": "a", "past": "i", "future": "o"}
COPULA_STEM = "est"
NEGATION = "ne"
FUNCTION_WORDS = ({v for _, v, _ in PREPOSITIONS} | {v for _, v in CONJUNCTIONS} | {v for _, v in NUMBERS}
                  | set(ARTICLES.values()) | {p[2] for p in PRONOUNS.values()} | {p[2] + "k" for p in PRONOUNS.values()}
                  | {COPULA_STEM + v + n for v in "aio" for n in ("", "n")} | {NEGATION})


# ----------------------------------------------------------------------------- the Veltan lexicon
@dataclass(frozen=True)
class Lexicon:
    noun: dict[str, tuple[str, int]]  # English singular -> (Veltan stem, class 1 or 2)
    adj: dict[str, str]  # English -> Veltan stem (consonant-final)
    verb: dict[str, str]  # English base -> Veltan stem (consonant-final)
    adv: dict[str, str]  # English -> Veltan word


_C, _V = "bdfgklmnprstvz", "aeiou"


def _noun_plural(stem: str) -> str:
    return stem + ("s" if stem[-1] in _V else "es")


def make_lexicon(seed: int = LEXICON_SEED) -> Lexicon:
    """The Veltan word for every English lemma: random syllables from a fixed seed, every inflected
    form distinct from every other word's forms and from the function words."""
    rng = random.Random(seed)
    taken: set[str] = set(FUNCTION_WORDS)

    def fresh(pattern: str, forms) -> str:
        while True:
            stem = "".join(rng.choice(_C if ch == "C" else _V) for ch in rng.choice(pattern.split("|")))
            fs = forms(stem)
            if not (set(fs) & taken) and len(set(fs)) == len(fs):
                taken.update(fs)
                return stem

    noun = {}
    for sg, _, _ in NOUNS:
        stem = fresh("CVCV|CVCVC|CVCCV|CVC", lambda s: [s, _noun_plural(s)])
        noun[sg] = (stem, rng.choice((1, 2)))
    adj = {a: fresh("CVCVC|CVC|CVCC", lambda s: [s + e for e in ("o", "a", "os", "as")]) for a, _ in ADJECTIVES}
    verbs = [v[0] for v in INTRANSITIVE] + [v[0][0] for v in TRANSITIVE]
    verb = {v: fresh("CVC|CVCVC|CVCC", lambda s: [s + t + n for t in "aio" for n in ("", "n")]) for v in verbs}
    adv = {a: fresh("CVCVCe|CVCe", lambda s: [s]) for a in ADVERBS}
    return Lexicon(noun=noun, adj=adj, verb=verb, adv=adv)


LEX = make_lexicon()


def lexicon_tsv(lex: Lexicon = LEX) -> str:
    """The lexicon as a TSV table (part of speech, English, Veltan, noun class) for readers of the task."""
    rows = ["pos\tenglish\tveltan\tclass"]
    rows += [f"noun\t{e}\t{s}\t{'I' if c == 1 else 'II'}" for e, (s, c) in lex.noun.items()]
    rows += [f"adjective\t{e}\t{s}-\t" for e, s in lex.adj.items()]
    rows += [f"verb\t{e}\t{s}-\t" for e, s in lex.verb.items()]
    rows += [f"adverb\t{e}\t{s}\t" for e, s in lex.adv.items()]
    rows += [f"preposition\t{e}\t{v}\t" for e, v, _ in PREPOSITIONS]
    rows += [f"conjunction\t{e}\t{v}\t" for e, v in CONJUNCTIONS]
    rows += [f"number\t{e}\t{v}\t" for e, v in NUMBERS]
    rows += [f"pronoun\t{p[0]} / {p[1]}\t{p[2]} / {p[2]}k\t" for p in PRONOUNS.values()]
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- sentence structures
@dataclass(frozen=True)
class NP:
    """A noun phrase: a noun (det 'the', 'a', 'bare' or a number word; adj or None) or a pronoun key."""

    noun: str | None = None
    plural: bool = False
    det: str = "the"
    adj: str | None = None
    pronoun: str | None = None

    @property
    def is_plural(self) -> bool:
        return PRONOUNS[self.pronoun][3] if self.pronoun else self.plural

    @property
    def noun_class(self) -> int:
        return PRONOUNS[self.pronoun][4] if self.pronoun else LEX.noun[self.noun][1]


@dataclass(frozen=True)
class Clause:
    """kind: 'verb' (verb with or without obj), 'be_adj' (subject is adj) or 'be_pp' (subject is somewhere)."""

    kind: str
    subj: NP
    tense: str = "present"
    neg: bool = False
    verb: str | None = None
    obj: NP | None = None
    adj: str | None = None
    adv: str | None = None
    pp: tuple[str, NP] | None = None


@dataclass(frozen=True)
class Sentence:
    clauses: tuple[Clause, ...]
    conj: str | None = None  # English conjunction joining two clauses


_NOUN_EN = {sg: (sg, pl, cat) for sg, pl, cat in NOUNS}
_VERB_EN = {v[0]: v for v in INTRANSITIVE} | {v[0][0]: v[0] for v in TRANSITIVE}


def _np_en(np_: NP, case: str) -> list[str]:
    if np_.pronoun:
        return [PRONOUNS[np_.pronoun][0 if case == "subj" else 1]]
    sg, pl, _ = _NOUN_EN[np_.noun]
    words = ([np_.adj] if np_.adj else []) + [pl if np_.plural else sg]
    if np_.det == "a":
        return ["an" if words[0][0] in "aeiou" else "a"] + words
    if np_.det == "bare":
        return words
    return [np_.det] + words  # "the" or a number word


def _verb_en(c: Clause) -> list[str]:
    subj = c.subj
    third_sg = not subj.is_plural and subj.pronoun not in ("1sg", "2sg")
    if c.kind != "verb":  # the copula
        if c.tense == "future":
            be = ["will", "not", "be"] if c.neg else ["will", "be"]
        else:
            if c.tense == "present":
                form = "am" if subj.pronoun == "1sg" else "is" if third_sg else "are"
            else:
                form = "was" if third_sg or subj.pronoun == "1sg" else "were"
            be = [form, "not"] if c.neg else [form]
        return be
    base, s3, past = _VERB_EN[c.verb]
    if c.tense == "future":
        return ["will", "not", base] if c.neg else ["will", base]
    if c.neg:
        aux = "did" if c.tense == "past" else "does" if third_sg else "do"
        return [aux, "not", base]
    return [past if c.tense == "past" else s3 if third_sg else base]


def _clause_en(c: Clause) -> list[str]:
    words = _np_en(c.subj, "subj") + _verb_en(c)
    if c.obj is not None:
        words += _np_en(c.obj, "obj")
    if c.adj is not None:
        words.append(c.adj)
    if c.adv is not None:
        words.append(c.adv)
    if c.pp is not None:
        words += [c.pp[0]] + _np_en(c.pp[1], "obj")
    return words


def _finish(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def english(s: Sentence) -> str:
    """The English sentence of a structure (capitalised, with a final full stop)."""
    words = _clause_en(s.clauses[0])
    for c in s.clauses[1:]:
        words += [s.conj] + _clause_en(c)
    return _finish(words)


def _adj_vt(adj: str, cls: int, plural: bool) -> str:
    return LEX.adj[adj] + ("o" if cls == 1 else "a") + ("s" if plural else "")


def _np_vt(np_: NP, case: str) -> list[str]:
    if np_.pronoun:
        return [PRONOUNS[np_.pronoun][2] + ("k" if case == "obj" else "")]
    stem, cls = LEX.noun[np_.noun]
    words = [_noun_plural(stem) if np_.plural else stem]
    if np_.adj:
        words.append(_adj_vt(np_.adj, cls, np_.plural))
    if np_.det in ("the", "a"):
        return [ARTICLES[(np_.det, cls, np_.plural)]] + words
    if np_.det == "bare":
        return words
    return [dict(NUMBERS)[np_.det]] + words


def _clause_vt(c: Clause) -> list[str]:
    words = _np_vt(c.subj, "subj")
    if c.obj is not None:
        words += _np_vt(c.obj, "obj")
    if c.adj is not None:  # a predicate adjective agrees with the subject
        words.append(_adj_vt(c.adj, c.subj.noun_class, c.subj.is_plural))
    if c.neg:
        words.append(NEGATION)
    stem = COPULA_STEM if c.kind != "verb" else LEX.verb[c.verb]
    words.append(stem + TENSE_VOWEL[c.tense] + ("n" if c.subj.is_plural else ""))
    if c.adv is not None:
        words.append(LEX.adv[c.adv])
    if c.pp is not None:
        words += [dict((e, v) for e, v, _ in PREPOSITIONS)[c.pp[0]]] + _np_vt(c.pp[1], "obj")
    return words


def veltan(s: Sentence) -> str:
    """The Veltan translation of a structure: the exact reference."""
    words = _clause_vt(s.clauses[0])
    for c in s.clauses[1:]:
        words += [dict(CONJUNCTIONS)[s.conj]] + _clause_vt(c)
    return _finish(words)


# ----------------------------------------------------------------------------- drawing sentences
def _fits(noun: str, allowed) -> bool:
    return noun in allowed or _NOUN_EN[noun][2] in allowed


def _draw_np(rng: random.Random, allowed, *, pronoun_ok: bool, avoid: str | None = None) -> NP:
    if pronoun_ok and rng.random() < 0.25:
        return NP(pronoun=rng.choice(sorted(PRONOUNS)))
    noun = rng.choice([sg for sg, _, _ in NOUNS if _fits(sg, allowed) and sg != avoid])
    cat = _NOUN_EN[noun][2]
    adjs = [a for a, cats in ADJECTIVES if cat in cats]
    adj = rng.choice(adjs) if rng.random() < 0.35 else None
    if cat in ("mass_food", "drink"):
        return NP(noun, False, rng.choice(("the", "bare")), adj)
    if rng.random() < 0.35:
        return NP(noun, True, rng.choice(("the", "the", "bare") + tuple(n for n, _ in NUMBERS)), adj)
    return NP(noun, False, rng.choice(("the", "the", "a")), adj)


def _draw_pp(rng: random.Random, avoid: str | None) -> tuple[str, NP]:
    prep, _, allowed = rng.choice(PREPOSITIONS)
    return prep, _draw_np(rng, allowed, pronoun_ok=prep in ("with", "for"), avoid=avoid)


def _draw_clause(rng: random.Random) -> Clause:
    tense = rng.choice(("present", "past", "future"))
    neg = rng.random() < 0.25
    r = rng.random()
    if r < 0.5:
        (base, *_), allowed = rng.choice(TRANSITIVE)
        subj = _draw_np(rng, ANIMATE, pronoun_ok=True)
        obj = _draw_np(rng, allowed, pronoun_ok=any(a in ANIMATE for a in allowed), avoid=subj.noun)
        if subj.pronoun and obj.pronoun == subj.pronoun:
            obj = NP(pronoun="3pl" if subj.pronoun != "3pl" else "1pl")  # no reflexives in the grammar
        adv = rng.choice(ADVERBS) if rng.random() < 0.2 else None
        pp = _draw_pp(rng, obj.noun) if rng.random() < 0.3 else None
        return Clause("verb", subj, tense, neg, verb=base, obj=obj, adv=adv, pp=pp)
    if r < 0.7:
        subj = _draw_np(rng, ANIMATE, pronoun_ok=True)
        adv = rng.choice(ADVERBS) if rng.random() < 0.3 else None
        pp = _draw_pp(rng, subj.noun) if rng.random() < 0.4 else None
        return Clause("verb", subj, tense, neg, verb=rng.choice(INTRANSITIVE)[0], adv=adv, pp=pp)
    if r < 0.85:
        subj = _draw_np(rng, _ALL, pronoun_ok=True)
        cat = "person" if subj.pronoun else _NOUN_EN[subj.noun][2]
        adj = rng.choice([a for a, cats in ADJECTIVES if cat in cats and a != subj.adj])
        return Clause("be_adj", subj, tense, neg, adj=adj)
    subj = _draw_np(rng, ANIMATE + ("thing", "food"), pronoun_ok=True)
    return Clause("be_pp", subj, tense, neg, pp=_draw_pp(rng, subj.noun))


def draw_sentence(rng: random.Random) -> Sentence:
    """One sentence: a clause, or (30%) two clauses joined by and / but / because."""
    if rng.random() < 0.3:
        return Sentence((_draw_clause(rng), _draw_clause(rng)), rng.choice(CONJUNCTIONS)[0])
    return Sentence((_draw_clause(rng),))


def build(seed: int = 0) -> dict[str, list[dict] | str]:
    """file stem -> rows: "sft" {prompt, completion}; "dev", "eval", "preference", "unlabeled"
    {prompt, reference}; "lexicon" -> the lexicon's TSV text. Sentences are distinct across all files."""
    rng = random.Random(seed)
    need = sum(SPLIT_SIZES.values())
    pairs: dict[str, str] = {}
    while len(pairs) < need:
        s = draw_sentence(rng)
        src = english(s)
        if SENTENCE_WORDS[0] <= len(src.split()) <= SENTENCE_WORDS[1] and src not in pairs:
            pairs[src] = veltan(s)
    out: dict[str, list[dict] | str] = {}
    items = list(pairs.items())  # already in random order; sliced in a fixed order of the files
    start = 0
    for name in ("eval", "dev", "sft", "preference", "unlabeled"):
        chunk = items[start : start + SPLIT_SIZES[name]]
        start += SPLIT_SIZES[name]
        key = "completion" if name == "sft" else "reference"
        out[name] = [{"prompt": src, key: tgt} for src, tgt in chunk]
    out["lexicon"] = lexicon_tsv()
    return out


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def file_texts(built: dict[str, list[dict] | str]) -> dict[str, str]:
    """File name -> text of every file the builder writes into the task folder."""
    return {("lexicon.tsv" if k == "lexicon" else f"{k}.jsonl"): (v if isinstance(v, str) else to_jsonl(v))
            for k, v in built.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    texts = file_texts(build(args.seed))
    differ = []
    for name, text in texts.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if differ:
        print(f"differ from build(seed={args.seed}): {', '.join(differ)}", file=sys.stderr)
        return 1
    if not args.check:
        sizes = ", ".join(f"{n} {len(t.encode()) // 1024} KB" for n, t in texts.items())
        print(f"wrote {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
