"""Build the bundled movie-review continuation task (after Ziegler et al. 2019).

Every opening and demonstration is written for this repository: hand-written sentence
fragments (below) are combined by a seeded random generator, so the same seed always gives
the same files. No data set is read. Usage:

    python scripts/build_movie_reviews.py            # writes src/rlhfkit/tasks/movie_reviews/*.jsonl
    python scripts/build_movie_reviews.py --check    # exits 1 if the shipped files differ

Public function: ``build(seed=0) -> dict[str, list[dict]]`` (split name -> JSONL rows).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "rlhfkit" / "tasks" / "movie_reviews"
SPLITS = ("sft", "preference", "unlabeled", "eval")
# Openings per split (the sft split holds the demonstrations' prompts).
SPLIT_SIZES = {"sft": 200, "preference": 320, "unlabeled": 480, "eval": 300}
OPENING_WORDS = (10, 40)
COMPLETION_WORDS = (15, 40)

# ----------------------------------------------------------------------------- titles
TITLE_ADJ = [
    "Silent", "Glass", "Last", "Hollow", "Crimson", "Quiet", "Broken", "Golden", "Paper",
    "Northern", "Distant", "Burning", "Hidden", "Winter", "Iron", "Velvet", "Lonely", "Salted",
    "Borrowed", "Forgotten", "Painted", "Restless", "Sleeping", "Wandering", "Second", "Far",
    "Little", "Bitter", "Tender", "Electric",
]
TITLE_NOUN = [
    "Harbor", "Orchard", "Signal", "Lantern", "Meridian", "Garden", "Season", "Frontier", "Tide",
    "Archive", "Carousel", "Bridge", "Compass", "Lighthouse", "Ember", "Ridge", "Kingdom",
    "Horizon", "Station", "Waltz", "Passage", "Hour", "Country", "Shore", "Circus", "Crown",
    "Letter", "Window", "Summer", "Hotel",
]
TITLE_PLACE = [
    "Marrowdale", "Ashby Falls", "Calloway", "Port Vesna", "Eldermoor", "Grayhaven", "Kessington",
    "Lower Bramble", "Saint Odile", "Tullamore Bay", "Wrenfield", "Halcyon Street", "Duskwater",
    "Fenwick Lane", "Brightwater", "Cinder Hill",
]
TITLE_NAME = [
    "Marigold", "Theo", "Ada", "Ruben", "Clementine", "Walter", "Nora", "Ezra", "June", "Felix",
    "Odessa", "Hal", "Ingrid", "Mateo", "Pearl", "Silas",
]
TITLE_PLURAL = [
    "Ghosts", "Songs", "Secrets", "Letters", "Lanterns", "Echoes", "Thieves", "Saints", "Strangers",
    "Rivers", "Wolves", "Summers",
]
TITLE_PATTERNS = [
    "The {adj} {noun}",
    "{plural} of {place}",
    "{name}'s {noun}",
    "Beyond the {noun}",
    "Under the {adj} {noun}",
    "Letters to {name}",
    "{place} Nights",
    "A {noun} for {name}",
    "The {noun} at {place}",
    "{adj} {plural}",
    "Everything {name} Wanted",
    "The {plural} of {name}",
]

# ----------------------------------------------------------------------------- people
FIRST = [
    "Lena", "Marcus", "Priya", "Tomas", "Helen", "Jonah", "Ines", "Samuel", "Mira", "Viktor",
    "Grace", "Dario", "Yuki", "Callum", "Amara", "Oskar", "Rosa", "Dev", "Colette", "Bram",
]
LAST = [
    "Whitlock", "Okafor", "Lindqvist", "Moreau", "Castellano", "Hargrove", "Nakamura", "Brennan",
    "Adeyemi", "Sorensen", "Valdez", "Kowalski", "Ashford", "Pemberton", "Iyer", "Delacroix",
]

# ----------------------------------------------------------------------------- genres
# genre -> premises that read after "a <genre> about ..."
GENRES: dict[str, list[str]] = {
    "thriller": [
        "a night nurse who suspects one of her patients is not who he claims to be",
        "an accountant who finds a second set of books at the shipping firm where he works",
        "a radio host who starts receiving calls from someone who knows too much about her past",
        "two strangers stuck together on a stalled overnight train",
        "a journalist chasing a story about a missing city councilman",
    ],
    "romantic comedy": [
        "a wedding planner who falls for the brother of the groom",
        "two rival bakers forced to share a tiny shop",
        "two former classmates who keep running into each other at other people's weddings",
        "a botanist and a real estate agent fighting over the same old greenhouse",
        "a translator who pretends to be engaged to keep her job",
    ],
    "horror film": [
        "a family that moves into a farmhouse where every clock stops at three",
        "a group of students spending a weekend in a closed ski lodge",
        "a night-shift security guard at an empty shopping mall",
        "a village that goes silent every winter solstice",
        "a sound engineer who hears voices on old tape recordings",
    ],
    "science-fiction film": [
        "the crew of a mining ship that loses contact with Earth",
        "a linguist trying to talk with a machine that has landed in a wheat field",
        "a city where nobody is allowed to sleep",
        "a young engineer who builds a robot to look after her grandfather",
        "colonists who wake early from a long sleep on a ship that has drifted off course",
    ],
    "western": [
        "a widowed rancher defending her land from a railroad company",
        "an aging sheriff's last week on the job",
        "two brothers driving cattle across a drought-stricken valley",
        "a traveling doctor who arrives in a town that does not want him",
    ],
    "documentary": [
        "a small-town orchestra preparing for its hundredth concert",
        "the last family-run lighthouse on a northern coast",
        "a group of competitive sandcastle builders",
        "a school that teaches older adults to swim",
        "the people who restore old pipe organs",
    ],
    "animated film": [
        "a lost paper kite trying to find its way home",
        "a young fox who wants to join a traveling circus",
        "a lighthouse keeper's cat and a very stubborn seagull",
        "a girl who discovers that her grandmother's quilts are secret maps",
    ],
    "period drama": [
        "a family of weavers in a northern mill town",
        "a governess who discovers her employer's secret letters",
        "two sisters running a failing inn after their father's death",
        "a young composer trying to make a name for himself at a rigid royal court",
    ],
    "heist movie": [
        "a crew of retirees who plan to rob the bank that cheated them",
        "a museum guard recruited to steal a painting she has protected for twenty years",
        "a safecracker forced into one last job by his estranged daughter",
        "a team of magicians planning to empty a casino vault",
    ],
    "war film": [
        "a field hospital during a long winter siege",
        "a radio operator cut off behind enemy lines",
        "a group of young recruits waiting for orders that never come",
    ],
    "musical": [
        "a struggling jazz club that has one month to pay its rent",
        "a choir teacher at an underfunded high school",
        "a street musician who gets an unexpected shot at a big stage",
    ],
    "coming-of-age story": [
        "a teenager spending one last summer at her family's lakeside cabin",
        "a boy who joins his school's chess club to impress his older brother",
        "three friends working at a seaside ice cream stand",
    ],
    "crime drama": [
        "a detective investigating a string of burglaries in her own neighborhood",
        "a lawyer defending the son of the man who ruined his career",
        "a taxi driver who witnesses a robbery and decides to keep quiet",
    ],
    "fantasy adventure": [
        "a reluctant apprentice who must return a stolen crown",
        "a mapmaker who discovers an island that appears on no chart",
        "a young knight who is terrified of horses",
    ],
    "mystery": [
        "a retired schoolteacher who investigates a death at her book club",
        "a hotel detective looking into a missing wedding ring",
        "a podcast host who reopens a twenty-year-old disappearance",
    ],
    "biopic": [
        "a self-taught astronomer from a fishing village",
        "a pioneering surgeon at the turn of the last century",
        "a famous chef's difficult first years in the kitchen",
    ],
    "sports drama": [
        "a retired boxer who starts coaching his niece",
        "a small college rowing team with no boathouse",
        "a veteran goalkeeper facing her final season",
    ],
    "family comedy": [
        "a father who accidentally signs up for his daughter's dance recital",
        "a family road trip to deliver a grandmother's piano",
        "twin brothers who swap places at summer camp",
    ],
    "disaster movie": [
        "a seismologist who predicts an earthquake that nobody believes in",
        "a ferry crew caught in a once-in-a-century storm",
        "a small town cut off by a flood",
    ],
    "romantic drama": [
        "a violinist and a painter who meet in a hospital waiting room",
        "two pen pals who finally meet after thirty years",
        "a widower who starts taking dance lessons",
    ],
    "political thriller": [
        "a speechwriter who uncovers a plot inside the government she serves",
        "an election official who finds a box of uncounted ballots",
    ],
    "road movie": [
        "two estranged sisters driving their late mother's car across the country",
        "a retired trucker and a runaway teenager heading for the coast",
    ],
    "dark comedy": [
        "a funeral home that is quickly running out of customers",
        "an office manager who throws himself a fake retirement party",
    ],
}

SETTINGS = [
    "a small fishing town", "a snowed-in mountain village", "a crowded apartment block",
    "a run-down seaside hotel", "a sleepy farming community", "a sprawling hospital",
    "a remote research station", "a busy city newsroom", "an old theater", "a lakeside summer camp",
]
# Genres whose stories do not fit a present-day setting get their own.
GENRE_SETTINGS = {
    "western": ["a dusty frontier town", "a lonely stretch of prairie", "a mining camp in the hills"],
    "war film": ["a ruined border town", "a frozen stretch of the front line"],
    "fantasy adventure": ["a kingdom of floating islands", "an ancient walled city", "a forest that moves at night"],
    "science-fiction film": ["a crowded orbital station", "a flooded city of the future", "a colony on a distant moon"],
    "period drama": ["a grand country house", "a bustling port city in the 1890s", "a quiet market town in 1912"],
    "animated film": ["a seaside village of talking animals", "a city built inside a giant tree"],
    "biopic": ["a poor coastal village", "a bustling port city in the 1890s", "Paris in the 1950s"],
}

# ----------------------------------------------------------------------------- opening sentences
# Each template yields a full first sentence. Slots: {T} title, {G} genre, {P} premise,
# {D} director, {S} setting, {an_G} "a"/"an" + genre.
FIRST_SENTENCES = {
    "neutral": [
        "{T} is {an_G} about {P}.",
        "{T}, the new {G} from director {D}, follows {P}.",
        "I went into {T} knowing only that it was {an_G} about {P}.",
        "Set in {S}, {T} is the kind of {G} that lives or dies by its characters.",
        "{D}'s {T} is {an_G} about {P}, and it runs just under two hours.",
        "At first glance, {T} looks like a familiar {G} about {P}.",
        "{T} arrives in theaters this week as a modest {G} about {P}.",
        "There has been very little buzz around {T}, {an_G} about {P}.",
        "A friend talked me into seeing {T}, {an_G} about {P}.",
        "{T} is the second feature from {D}, and it tells the story of {P}.",
        "The new {G} {T} takes place almost entirely in {S}.",
        "I caught a late showing of {T}, {an_G} about {P}.",
    ],
    "mixed": [
        "{T} has a promising premise, but its first act spends far too long explaining it.",
        "The first half of {T} is slow, though the central idea kept me curious.",
        "{T} is {an_G} about {P}, and it is a more uneven film than its trailer suggests.",
        "There are two films fighting for space inside {T}, and only one of them works at first.",
        "{T} wants to be both a light {G} and a serious one, and for a while it cannot decide.",
        "I have mixed feelings about the opening stretch of {T}, {D}'s new {G}.",
        "Parts of {T} feel fresh, while others feel borrowed from every {G} of the last decade.",
        "{T} takes a long time to find its rhythm, which is a shame given how good its premise is.",
        "On paper, {T} sounds like a fairly ordinary {G} about {P}.",
        "It is hard to know what to make of the first twenty minutes of {T}.",
    ],
    "negative": [
        "I expected very little from {T}, {an_G} whose trailer made it look like a dozen films I had already seen.",
        "For most of its first hour, {T} feels like {an_G} with no idea where it is going.",
        "{T} gets off to a rough start.",
        "The opening scenes of {T} are clumsy, loud, and oddly lifeless.",
        "I nearly walked out of {T} during its first thirty minutes.",
        "{T} is {an_G} about {P}, and the early scenes are a real struggle to sit through.",
        "Nothing about the first act of {T} suggests that it will be worth the price of a ticket.",
        "The reviews for {T} have been harsh so far, and the first act does little to prove them wrong.",
        "By the time the opening credits of {T} finished, I was already checking my watch.",
        "{D}'s {T} begins with one of the flattest opening scenes I have seen this year.",
    ],
    "positive": [
        "{T} is {an_G} about {P}, and it gets a lot of things right early on.",
        "The first few minutes of {T} are some of the most confident I have seen in {an_G} this year.",
        "{D} has a real feel for {G}, and {T} shows it from the first scene.",
        "{T} starts strongly, with a tense and well-staged opening sequence.",
    ],
}

# Optional second sentence: an observation about one aspect, in the opening's tone.
ASPECT_SENTENCES: dict[str, dict[str, list[str]]] = {
    "acting": {
        "neutral": [
            "Most of the cast are unfamiliar faces.",
            "The lead role goes to an actor best known for television work.",
            "The cast is small, and almost every scene rests on the two leads.",
        ],
        "mixed": [
            "The performances are uneven, with the supporting cast often outshining the leads.",
            "The lead is charming, but several supporting players seem unsure of their roles.",
        ],
        "negative": [
            "The lead performance is stiff in the early scenes, and the dialogue does not help.",
            "Much of the acting in the opening scenes feels flat and rehearsed.",
        ],
    },
    "plot": {
        "neutral": [
            "The story unfolds over a single week.",
            "The plot is told partly in flashbacks.",
        ],
        "mixed": [
            "The plot has some good ideas but takes a while to connect them.",
            "The story juggles a few too many characters in its first act.",
        ],
        "negative": [
            "The plot seems predictable at first, and the early twists are easy to see coming.",
            "The setup leans on coincidences that are hard to believe.",
        ],
    },
    "score": {
        "neutral": [
            "The score was written by a composer making her film debut.",
            "The music is mostly piano and strings.",
        ],
        "mixed": [
            "The score is pleasant, though it sometimes tells you what to feel.",
            "The soundtrack mixes old songs with a new score, with mixed results.",
        ],
        "negative": [
            "The music in the opening scenes is loud enough to drown out the dialogue.",
            "The score starts out heavy-handed, swelling at every small moment.",
        ],
    },
    "pacing": {
        "neutral": [
            "It takes its time introducing the main characters.",
            "The film runs a little over two hours.",
        ],
        "mixed": [
            "The pacing is uneven, with long quiet stretches between bursts of action.",
            "Some scenes race by while others linger far longer than they need to.",
        ],
        "negative": [
            "The first act drags, and several early scenes could have been cut entirely.",
            "The pacing in the first hour is painfully slow.",
        ],
    },
    "visuals": {
        "neutral": [
            "It was shot on location over a single summer.",
            "The film was shot almost entirely at night.",
        ],
        "mixed": [
            "Some of the images are striking, but the effects look cheap in places.",
            "The cinematography is handsome, if a little too fond of slow motion.",
        ],
        "negative": [
            "The early scenes are so dimly lit that it is hard to tell what is happening.",
            "The visual effects in the opening sequence look unfinished.",
        ],
    },
    "dialogue": {
        "neutral": [
            "Much of the film is built around long conversations.",
            "The script was co-written by the lead actor.",
        ],
        "mixed": [
            "The dialogue is sometimes sharp and sometimes painfully on the nose.",
            "Some of the jokes land, but many of the lines feel written rather than spoken.",
        ],
        "negative": [
            "The dialogue in the first act is clumsy and full of exposition.",
            "Characters spend the early scenes explaining things they would already know.",
        ],
    },
    "ending": {
        "neutral": [
            "Everything builds toward a long final sequence on the night of a storm.",
            "How it ends is best left unspoiled.",
        ],
        "mixed": [
            "I was not sure whether the film could earn the ending it was building toward.",
            "The film seems to set up several possible endings without committing to one.",
        ],
        "negative": [
            "For a long time it seemed the film was heading toward a very obvious ending.",
            "Early on, it is easy to guess exactly how the story will end.",
        ],
    },
    "direction": {
        "neutral": [
            "{D} directs from a script adapted from a stage play.",
            "It is {D}'s first film in almost ten years.",
        ],
        "mixed": [
            "The direction is confident in some scenes and oddly hesitant in others.",
            "{D} clearly has a style, though it gets in the way of the story at times.",
        ],
        "negative": [
            "The direction in the early scenes feels unsure of what kind of film this is.",
            "{D} seems more interested in camera tricks than in the characters at first.",
        ],
    },
    "characters": {
        "neutral": [
            "The story is told from the point of view of the youngest character.",
            "There are only a handful of characters, and we meet them all in the first ten minutes.",
        ],
        "mixed": [
            "The main character is hard to like at first, which seems to be the point.",
            "Some of the characters are vivid, while others are little more than sketches.",
        ],
        "negative": [
            "The characters are thinly drawn in the first act, and it is hard to care about them.",
            "The hero is so unpleasant at first that I struggled to root for him.",
        ],
    },
    "humor": {
        "neutral": [
            "It mixes broad comedy with a few quieter moments.",
            "The film is billed as a comedy, but it has a serious side.",
        ],
        "mixed": [
            "The humor is hit and miss, and a few of the early jokes fall flat.",
            "Some of the gags work well, but others go on for far too long.",
        ],
        "negative": [
            "The early jokes mostly fall flat, and the audience I saw it with barely laughed.",
            "The humor in the first act feels forced and dated.",
        ],
    },
}
ASPECTS = list(ASPECT_SENTENCES)

# ----------------------------------------------------------------------------- demonstrations
# Positive-leaning, ordinary clauses about one aspect. Each is an independent clause that
# starts in lower case, so it can follow a connector ("Still, ...").
ASPECT_CLAUSES: dict[str, list[str]] = {
    "acting": [
        "the cast is better than the material, and the lead gives a warm, grounded performance that holds the film together",
        "the performances get better as the story goes on, especially in the quieter scenes between the two leads",
        "the supporting actors bring real warmth to small roles, and a few of their scenes are genuinely moving",
        "the lead is likable and believable, and makes even the clumsier lines sound natural",
        "the cast has an easy chemistry that makes the characters feel like people you might actually know",
    ],
    "plot": [
        "the story comes together in the second half, and the last few twists are set up more carefully than I expected",
        "the plot is simple, but it is told with enough care that I stayed invested until the end",
        "the story takes a few turns I did not see coming, and most of them feel earned and satisfying",
        "the screenplay ties its threads together neatly, and the final act delivers a satisfying payoff",
    ],
    "score": [
        "the score is lovely, built on a few simple piano themes that return at just the right moments",
        "the music does a lot of quiet work, giving the big scenes an emotional lift without getting in the way",
        "the soundtrack turns out to be one of the film's real strengths, full of warm strings and memorable melodies",
    ],
    "pacing": [
        "once the setup is out of the way, the film moves along at a brisk and enjoyable pace",
        "the pacing improves a great deal after the first half hour, and the final act goes by quickly",
        "the slower moments give the characters room to breathe, and the film holds my interest from start to finish",
    ],
    "visuals": [
        "the cinematography is beautiful, with wide shots of the landscape that make the world feel real",
        "the film looks wonderful, and its careful use of color makes several scenes stick in the memory",
        "the effects are modest but effective, and the production design gives every room its own character",
    ],
    "dialogue": [
        "the dialogue becomes sharper and often funny, and the characters start to sound like real people talking",
        "the writing has a light touch, with conversations that feel natural and occasionally very witty",
    ],
    "ending": [
        "the ending is quietly moving and ties the main story together in a way that feels honest",
        "the final scene is simple but effective, and it left me thinking about the film on the drive home",
    ],
    "direction": [
        "the director handles the shifts in tone with confidence, and the film finds a clear sense of what it wants to be",
        "the direction is steady and assured, letting the fine cast and the story do most of the work",
    ],
    "characters": [
        "the characters are drawn with care, and even the minor ones get a moment or two to shine",
        "the main characters grow in believable ways, and I was happily rooting for them by the end",
    ],
    "humor": [
        "the jokes land more often than not, and one running gag had the whole theater laughing",
        "the humor is gentle and good-natured, and it never undercuts the more serious moments",
    ],
}
CONNECTORS = {
    "neutral": ["", "Happily, ", "As it turns out, ", "The good news is that ", "What I liked most is that "],
    "mixed": ["Still, ", "But ", "Even so, ", "That said, ", "Thankfully, ", "Luckily, "],
    "negative": ["Still, ", "But ", "Stick with it, though, because ", "Thankfully, ", "Even so, ", "That said, "],
    "positive": ["", "On top of that, ", "Better still, ", "Happily, "],
}
CLOSERS = [
    "It is not a perfect {G}, but it is an easy one to recommend.",
    "{T} is worth seeing, especially on a big screen.",
    "It is a solid, enjoyable film.",
    "Overall, {T} is a pleasant surprise.",
    "Fans of the genre should find plenty to enjoy.",
    "I would happily watch it again.",
    "It makes for a good choice on a relaxed evening.",
    "It is not groundbreaking, but it is well made.",
    "",
    "",
]

STANCE_WEIGHTS = {"neutral": 0.35, "mixed": 0.30, "negative": 0.25, "positive": 0.10}


def _words(text: str) -> int:
    return len(text.split())


def _article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def _titles(rng: random.Random, n: int) -> list[str]:
    """n distinct invented titles."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        t = rng.choice(TITLE_PATTERNS).format(
            adj=rng.choice(TITLE_ADJ), noun=rng.choice(TITLE_NOUN), place=rng.choice(TITLE_PLACE),
            name=rng.choice(TITLE_NAME), plural=rng.choice(TITLE_PLURAL),
        )
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _make_opening(rng: random.Random, title: str) -> dict:
    """One opening with the metadata a demonstration needs (stance, aspect, slots)."""
    stance = rng.choices(list(STANCE_WEIGHTS), weights=list(STANCE_WEIGHTS.values()))[0]
    genre = rng.choice(list(GENRES))
    slots = {
        "T": title, "G": genre, "an_G": _article(genre), "P": rng.choice(GENRES[genre]),
        "D": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "S": rng.choice(GENRE_SETTINGS.get(genre, SETTINGS)),
    }
    first = rng.choice(FIRST_SENTENCES[stance]).format(**slots)
    aspect = rng.choice(ASPECTS if genre in ("romantic comedy", "family comedy", "dark comedy") else ASPECTS[:-1])
    # A positive opening gets no critical second sentence; otherwise add one most of the time.
    if stance == "positive" or rng.random() < 0.2:
        text, aspect_mentioned = first, False
    else:
        tone = stance if rng.random() < 0.7 else rng.choice(["neutral", "mixed", "negative"])
        text = first + " " + rng.choice(ASPECT_SENTENCES[aspect][tone]).format(**slots)
        aspect_mentioned = True
    return {"text": text, "stance": stance, "aspect": aspect, "aspect_mentioned": aspect_mentioned, **slots}


def _make_completion(rng: random.Random, op: dict) -> str:
    """A fluent, on-topic, positive-leaning continuation of ordinary quality."""
    aspect = op["aspect"] if op["aspect_mentioned"] else rng.choice(ASPECTS[:-1])
    clause = rng.choice(ASPECT_CLAUSES[aspect])
    connector = rng.choice(CONNECTORS[op["stance"]])
    sentence = _capitalize(connector + clause) + "."
    closer = rng.choice(CLOSERS).format(T=op["T"], G=op["G"])
    text = f"{sentence} {closer}".strip()
    if _words(text) > COMPLETION_WORDS[1]:
        text = sentence
    return text


def build(seed: int = 0) -> dict[str, list[dict]]:
    """Generate all splits deterministically from ``seed``.

    Returns {"sft": [{"prompt", "completion"}], "preference"|"unlabeled"|"eval": [{"prompt"}]}.
    """
    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    titles = _titles(rng, total * 2)
    openings: list[dict] = []
    seen: set[str] = set()
    ti = 0
    while len(openings) < total:
        op = _make_opening(rng, titles[ti % len(titles)])
        ti += 1
        n = _words(op["text"])
        if op["text"] in seen or not (OPENING_WORDS[0] <= n <= OPENING_WORDS[1]):
            continue
        seen.add(op["text"])
        openings.append(op)
    rng.shuffle(openings)  # the AlpacaFarm-style split: one seeded shuffle, then slices

    splits: dict[str, list[dict]] = {}
    start = 0
    for name in SPLITS:
        part = openings[start : start + SPLIT_SIZES[name]]
        start += SPLIT_SIZES[name]
        if name == "sft":
            rows, used = [], set()
            for op in part:
                for _ in range(20):  # demonstrations are distinct too
                    c = _make_completion(rng, op)
                    if c not in used and COMPLETION_WORDS[0] <= _words(c) <= COMPLETION_WORDS[1]:
                        break
                else:
                    raise RuntimeError(f"could not make a distinct demonstration for {op['text']!r}")
                used.add(c)
                rows.append({"prompt": op["text"], "completion": c})
        else:
            rows = [{"prompt": op["text"]} for op in part]
        splits[name] = rows
    _check(splits)
    return splits


def _check(splits: dict[str, list[dict]]) -> None:
    for name, rows in splits.items():
        for i, row in enumerate(rows):
            for field, (lo, hi) in (("prompt", OPENING_WORDS), ("completion", COMPLETION_WORDS)):
                if field in row and not lo <= _words(row[field]) <= hi:
                    raise AssertionError(f"{name}[{i}].{field} has {_words(row[field])} words: {row[field]!r}")
            if re.search(r"\{\w+\}", json.dumps(row)):
                raise AssertionError(f"{name}[{i}] has an unfilled slot: {row}")


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    splits = build(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    differ = []
    for name, rows in splits.items():
        path = args.out / f"{name}.jsonl"
        text = to_jsonl(rows)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(rows)} rows)")
    if differ:
        print("differs from build(seed={}): {}".format(args.seed, ", ".join(differ)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
