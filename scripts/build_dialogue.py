"""Build the bundled multi-turn dialogue task (prompts for Li et al. 2016's dialogue rewards).

Every turn is written for this repository: hand-written topics (a hobby, what the speaker likes about it,
tips, gear) and turn templates are combined by a seeded random generator, so the same seed always gives the
same files. No data set is read. A conversation is small talk about a hobby: the user asks, the assistant
answers as a person with that hobby, the user follows up; it ends with a user turn (1, 3 or 5 messages). Usage:

    python scripts/build_dialogue.py            # writes src/rlhfkit/tasks/dialogue/*.jsonl
    python scripts/build_dialogue.py --check    # exits 1 if the shipped files differ

Public function: ``build(seed=0) -> dict[str, list[dict]]`` (split name -> JSONL rows).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "rlhfkit" / "tasks" / "dialogue"
SPLITS = ("sft", "preference", "unlabeled", "eval")
SPLIT_SIZES = {"sft": 120, "preference": 40, "unlabeled": 160, "eval": 80}
# share of conversations with 1, 3 and 5 messages: most have an earlier assistant turn, so that the
# repetition reward (previous turn of the same speaker) applies
LENGTHS = ((1, 0.2), (3, 0.45), (5, 0.35))

# name: (the hobby as a noun phrase, openers, first answers, what one likes, tips, gear)
TOPICS = {
    "hiking": ("hiking",
               ["What do you like to do outdoors?", "Any plans for the weekend?", "How do you clear your head after a long week?"],
               ["I usually go hiking on the trails outside town.", "I'm going hiking on a ridge trail on Saturday.",
                "A long hike in the hills works best for me."],
               ["the view when you finally reach the top", "how quiet the woods are early in the morning",
                "that my phone has no signal up there"],
               ["start with short trails and add a mile each week", "bring more water than you think you need",
                "check the weather and tell someone where you are going"],
               ["good boots", "a light rain jacket", "a small first aid kit"]),
    "cooking": ("cooking",
                ["What do you do in the evenings?", "Do you have a hobby that saves you money?", "What did you make for dinner yesterday?"],
                ["I cook most evenings, mostly simple vegetable dishes.", "I made a lentil curry from scratch.",
                 "I like trying one new recipe every week."],
                ["that a cheap bag of lentils turns into a real meal", "cooking for friends on Sundays",
                 "how the whole flat smells of garlic and cumin"],
                ["learn five dishes well before you try fancy ones", "keep your knives sharp", "taste as you go and salt a little at a time"],
                ["one good knife", "a heavy pan", "a wooden cutting board"]),
    "reading": ("reading",
                ["What are you into these days?", "How do you spend a rainy afternoon?", "What did you do on your last holiday?"],
                ["I've been reading a lot of old detective novels.", "I read on the train every morning.",
                 "I just finished a long history of the Silk Road."],
                ["getting lost in another century for an hour", "guessing the ending before the last chapter",
                 "talking about the books with my sister"],
                ["read what you enjoy, not what you think you should", "keep a book in your bag", "join a library, it is free"],
                ["a library card", "a reading lamp", "a notebook for good lines"]),
    "gardening": ("gardening",
                  ["What keeps you busy in spring?", "Do you spend much time outside?", "What did you do this morning?"],
                  ["I've been working in my vegetable garden.", "I planted tomatoes and beans on the balcony.",
                   "I spend most Saturday mornings in the garden."],
                  ["eating tomatoes I grew myself", "watching the first seedlings come up", "having my hands in the soil after a week at a desk"],
                  ["start with herbs, they forgive a lot", "water in the morning, not at noon", "grow what you actually like to eat"],
                  ["a pair of gloves", "a watering can", "a few large pots"]),
    "running": ("running",
                ["How do you stay fit?", "What did you do before work today?", "Do you do any sport?"],
                ["I go running three times a week.", "I ran five miles along the river this morning.",
                 "I'm training for my first half marathon."],
                ["the calm I feel after a long run", "seeing the city before everyone wakes up", "beating my own time from last month"],
                ["go slower than you think and build up over weeks", "rest days matter as much as runs", "run with a friend so you keep going"],
                ["decent running shoes", "a cheap sports watch", "a reflective vest for dark mornings"]),
    "photography": ("photography",
                    ["What do you do when you travel?", "Do you have a creative hobby?", "What did you do last weekend?"],
                    ["I take a lot of photos, mostly of streets and people.", "I went out shooting photos at the harbour.",
                     "I've been learning photography with an old film camera."],
                    ["noticing light I used to walk past", "the surprise when the film comes back", "capturing small moments nobody else sees"],
                    ["shoot every day, even with your phone", "learn how light changes during the day", "look at other photographers' work"],
                    ["any camera you already own", "a spare battery", "a comfortable strap"]),
    "board games": ("board games",
                    ["What do you do with friends on Friday nights?", "How do you spend winter evenings?", "Any fun plans tonight?"],
                    ["We play board games at my place most Fridays.", "I'm hosting a board game night tonight.",
                     "I've been collecting board games for a few years."],
                    ["everyone laughing around one table", "games where we all work together against the board", "learning a new set of rules"],
                    ["start with short games that take under an hour", "teach the rules while you play the first round", "let new players win sometimes"],
                    ["a big table", "a few simple card games", "snacks that don't leave greasy fingers"]),
    "languages": ("learning Spanish",
                  ["What are you learning at the moment?", "Do you have any goals for this year?", "What do you do during your lunch break?"],
                  ["I'm learning Spanish, twenty minutes a day.", "I practise Spanish with a tutor twice a week.",
                   "I've started learning Spanish for a trip next summer."],
                  ["the first time I understood a whole conversation", "reading menus and signs when I travel", "making friends with my tutor"],
                  ["practise a little every day instead of a lot once a week", "speak from the first week, mistakes and all",
                   "watch shows with subtitles in the language"],
                  ["a good dictionary app", "a pocket notebook", "a patient conversation partner"]),
    "baking": ("baking bread",
               ["What do you do on Sunday mornings?", "Have you picked up any new habits lately?", "What's something you're proud of making?"],
               ["I bake bread every Sunday.", "I've been keeping a sourdough starter alive for a year.", "I baked my first good baguette last week."],
               ["the smell of fresh bread in the morning", "that flour, water and salt become something so good", "sharing a loaf with my neighbours"],
               ["weigh everything instead of using cups", "start with a simple loaf before sourdough", "be patient with the rise"],
               ["a kitchen scale", "a heavy pot with a lid", "a sharp blade for scoring"]),
    "cycling": ("cycling",
                ["How do you get to work?", "What do you do when the weather is nice?", "What did you do on Sunday?"],
                ["I cycle to work every day.", "I did a long bike ride along the coast.", "I ride my bike whenever I can."],
                ["feeling the wind going downhill", "skipping the traffic every morning", "stopping at small cafes on long rides"],
                ["learn to fix a flat tyre before you need to", "wear bright clothes and use lights", "start with flat routes"],
                ["a good lock", "a helmet", "a small pump"]),
    "painting": ("painting",
                 ["Do you have a quiet hobby?", "What do you do to relax?", "What did you make recently?"],
                 ["I paint watercolours in the evenings.", "I finished a small painting of the lake yesterday.", "I took up painting last winter."],
                 ["how time disappears while I paint", "mixing colours until they feel right", "having something to show for an evening"],
                 ["paint small so you finish things", "copy paintings you love to learn how they work", "don't throw away the bad ones, learn from them"],
                 ["a cheap set of paints", "thick paper", "two brushes, one big and one small"]),
    "guitar": ("playing guitar",
               ["Do you play any instruments?", "What do you do when you get home?", "What did you learn last year?"],
               ["I play guitar, mostly folk songs.", "I've been learning guitar for about two years.", "I play guitar with two friends on Thursdays."],
               ["playing a song all the way through without stopping", "singing along with friends", "how my fingers finally know the chords"],
               ["play a little every day, even ten minutes", "learn songs you love, not only exercises", "use a tuner every time"],
               ["a used acoustic guitar", "a clip-on tuner", "a few spare strings"]),
    "fishing": ("fishing",
                ["What do you do to get away from screens?", "Where do you go on quiet weekends?", "What did you do at the lake?"],
                ["I go fishing at a small lake near my parents' house.", "I spent Saturday fishing with my uncle.", "I like fishing early in the morning."],
                ["the stillness of the water at dawn", "long talks with my uncle while we wait", "the rare day when something finally bites"],
                ["go with someone who knows the water", "check the local rules and get a licence", "bring patience and a thermos"],
                ["a simple rod", "a folding chair", "a warm hat"]),
    "chess": ("chess",
              ["What kind of games do you like?", "How do you keep your mind sharp?", "What did you do in the park?"],
              ["I play chess online most evenings.", "I joined a chess club last autumn.", "I played chess in the park with an old man."],
              ["the moment a plan comes together", "learning from games I lost", "the friendly people at the club"],
              ["play slower games and think about every move", "review your games afterwards", "learn a few simple openings"],
              ["a cheap wooden set", "a free chess app", "a book of puzzles"]),
    "swimming": ("swimming",
                 ["What sport do you enjoy?", "How do you start your day?", "What do you do in summer?"],
                 ["I swim at the public pool before work.", "I swam in the sea almost every day last summer.", "I've been taking swimming lessons again."],
                 ["how light I feel in the water", "the cold shock of the sea in the morning", "counting lengths until my head is empty"],
                 ["take a few lessons to fix your breathing", "go at quiet hours when the lanes are empty", "swim with others in open water"],
                 ["good goggles", "a swim cap", "a warm towel"]),
}

ORIGINS = ["A friend dragged me along a few years ago", "My dad got me into it when I was a kid",
           "I started during a long winter when I was bored", "A neighbour showed me the basics",
           "I tried it on holiday once and never stopped"]
FREQUENCIES = [("twice a week", "in the evenings"), ("every weekend", "on Saturday mornings"),
               ("almost every day", "before work"), ("once a week", "on Sundays")]
REACTIONS = ["", "", "Nice! ", "Oh, interesting. ", "That sounds fun. ", "Cool. ", "Really? "]

# follow-up kind -> (user questions, assistant replies); {thing} etc. are filled from the topic
FOLLOW_UPS = {
    "like": (["What do you like most about {thing}?", "What's the best part of it?", "Why do you enjoy it so much?"],
             ["Honestly, {detail}. It's the part I look forward to all week.", "Mostly {detail}.",
              "I think it's {detail}. Nothing else gives me that."]),
    "start": (["How did you get into {thing}?", "How did you start?", "When did you pick that up?"],
              ["{origin}, and {detail} kept me coming back.", "{origin}. I was hooked after the first month."]),
    "tip": (["Any tips for a beginner?", "What would you tell someone who wants to try {thing}?", "How should I start?"],
            ["I would {tip}. It makes the first few weeks much easier.", "My main advice: {tip}.",
             "First, {tip}. Then just keep at it."]),
    "gear": (["Do you need any special gear for that?", "What do you need to get started?", "Is it expensive to start?"],
             ["Not much: {item} and {item2}. You can borrow most of it at first.",
              "You only need {item} to begin. Later {item2} helps."]),
    "often": (["How often do you do it?", "How much time does it take?", "Do you manage to do it every week?"],
              ["About {freq}, usually {when}.", "I try for {freq}, mostly {when}. Some weeks I miss it."]),
}


def _fill(rng: random.Random, template: str, topic: tuple, used: set[str]) -> str:
    """The template with the topic's slots; a detail already said in this conversation is not said again (the
    demonstrations should not repeat the speaker's earlier turn)."""
    thing, _, _, details, tips, items = topic
    item, item2 = rng.sample(items, 2)
    freq, when = rng.choice(FREQUENCIES)
    detail = rng.choice([d for d in details if d not in used])
    if "{detail}" in template:
        used.add(detail)
    return template.format(thing=thing, detail=detail, tip=rng.choice(tips), item=item, item2=item2,
                           origin=rng.choice(ORIGINS), freq=freq, when=when)


def _conversation(rng: random.Random, n_messages: int) -> tuple[list[dict], str]:
    """(messages ending with a user turn, a good next assistant reply)."""
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    _, openers, answers, *_ = topic
    msgs = [{"role": "user", "content": rng.choice(openers)}]
    answer = rng.choice(answers)
    if n_messages == 1:
        return msgs, answer
    msgs.append({"role": "assistant", "content": answer})
    kinds = rng.sample(sorted(FOLLOW_UPS), (n_messages - 1) // 2)
    used: set[str] = set()
    for i, kind in enumerate(kinds):
        questions, replies = FOLLOW_UPS[kind]
        msgs.append({"role": "user", "content": rng.choice(REACTIONS) + _fill(rng, rng.choice(questions), topic, used)})
        reply = _fill(rng, rng.choice(replies), topic, used)
        reply = reply[0].upper() + reply[1:]
        if i < len(kinds) - 1:
            msgs.append({"role": "assistant", "content": reply})
    return msgs, reply


def build(seed: int = 0) -> dict[str, list[dict]]:
    """Generate all splits deterministically from ``seed``: {"sft": [{"prompt": [messages], "completion":
    [one assistant message]}], "preference"|"unlabeled"|"eval": [{"prompt": [messages]}]}; prompts distinct."""
    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    convs: list[tuple[list[dict], str]] = []
    lengths, weights = zip(*LENGTHS)
    while len(convs) < total:
        msgs, reply = _conversation(rng, rng.choices(lengths, weights)[0])
        key = json.dumps(msgs)
        if key not in seen:
            seen.add(key)
            convs.append((msgs, reply))
    rng.shuffle(convs)
    out, start = {}, 0
    for split in SPLITS:
        rows = convs[start : start + SPLIT_SIZES[split]]
        start += SPLIT_SIZES[split]
        if split == "sft":
            out[split] = [{"prompt": m, "completion": [{"role": "assistant", "content": r}]} for m, r in rows]
        else:
            out[split] = [{"prompt": m} for m, _ in rows]
    return out


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    splits = build(args.seed)
    differ = []
    for name, rows in splits.items():
        path = args.out / f"{name}.jsonl"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != to_jsonl(rows):
                differ.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(to_jsonl(rows), encoding="utf-8")
    if differ:
        print("differ from build(seed=%d): %s" % (args.seed, ", ".join(differ)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
