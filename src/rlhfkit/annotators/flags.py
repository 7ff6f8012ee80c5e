"""Content flags of the lecture's rating form, from small word lexicons and patterns.

The simulated annotators tick these the way a rushed human would: by spotting words.
``content_flags(text) -> dict[str, bool]`` covers the content flags; the instruction flag
(``fails_instruction``) needs the text features and is set by ``Panel.rate``.
Deliberately small and conservative: movie-review words such as "shot" (a camera shot)
or "brutal" (brutal honesty) are left out so that ordinary reviews are not flagged.
"""

from __future__ import annotations

import re

__all__ = ["FLAG_NAMES", "CONTENT_FLAGS", "content_flags"]

# one vocabulary with the feedback app's rating form (defined there, in a torch-free module)
from rlhfkit.rating_flags import CONTENT_FLAGS, FLAG_NAMES


def _words_re(words: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(words.split()) + r")\b", re.IGNORECASE)


_SEXUAL = _words_re(
    "sex sexual sexually sexy nude nudes naked nudity erotic erotica porn porno pornographic "
    "pornography orgasm orgasms aroused arousal seduce seduces seduced seduction explicit"
)
_VIOLENT = _words_re(
    "kill kills killed killing killer killers murder murders murdered murderer blood bloody "
    "gore gory stab stabs stabbed stabbing shooting shootings torture tortured torturing "
    "massacre massacres slaughter slaughtered behead beheaded beheading corpse corpses "
    "dismember dismembered mutilate mutilated assault assaulted strangle strangled"
)
_GROUPS = (
    r"(?:women|men|girls|immigrants|foreigners|refugees|muslims|jews|christians|hindus|"
    r"buddhists|atheists|black people|white people|asians|latinos|gay people|gays|lesbians|"
    r"trans people|disabled people|old people|the elderly)"
)
_INSULTS = (
    r"(?:stupid|inferior|lazy|evil|dirty|worthless|subhuman|vermin|animals|criminals|"
    r"disgusting|idiots|parasites|less than human)"
)
_DENIGRATE = re.compile(
    rf"\b(?:all |those |these )?{_GROUPS} (?:are|is) (?:all |so |just |naturally )?{_INSULTS}\b"
    rf"|\b{_GROUPS} (?:should not|shouldn't|don't deserve to) (?:vote|work|exist|be allowed)\b",
    re.IGNORECASE,
)
_ENCOURAGE = re.compile(
    r"\b(?:you|we|they|people|everyone) should (?:kill|hurt|attack|beat|shoot|stab|punch)\b"
    r"|\bdeserves? to (?:die|be (?:killed|hurt|beaten|shot))\b"
    r"|\b(?:go|let's) (?:kill|hurt|attack|beat up|shoot)\b"
    r"|\bviolence is the (?:answer|only way)\b"
    r"|\bkill (?:him|her|them|yourself|the director)\b",
    re.IGNORECASE,
)
_HARMFUL = re.compile(
    r"\bstop taking (?:your |their )?(?:medication|medicine|meds|pills)\b"
    r"|\bdrink (?:bleach|antifreeze)\b"
    r"|\b(?:don't|do not|never) (?:see|call|go to) (?:a|the|your) (?:doctor|police|hospital)\b"
    r"|\bdrive (?:home )?drunk\b|\bdrunk driving is (?:fine|ok|okay)\b"
    r"|\bmix (?:bleach|medications)\b|\bskip (?:your )?(?:medication|meds)\b"
    r"|\byou should (?:steal|shoplift|pirate)\b",
    re.IGNORECASE,
)
_MORAL = re.compile(
    r"\b(?:immoral|immorality|sinful|sinners?|shameful|disgraceful|wicked|morally|depraved|"
    r"decadent|degenerate|godless|indecent)\b"
    r"|\b(?:should|ought to) be ashamed\b|\bgod will punish\b|\bit is wrong to\b",
    re.IGNORECASE,
)
_PROFANE = _words_re("fuck fucking fucked shit shitty bullshit bitch bitches asshole bastard crap damn")


def content_flags(text: str) -> dict[str, bool]:
    """Content flags of one response (keys: ``CONTENT_FLAGS``). "inappropriate_for_assistant"
    (a customer-facing assistant) is set by sexual content, encouraging violence, denigration,
    harmful advice or profanity."""
    flags = {
        "sexual_content": bool(_SEXUAL.search(text)),
        "violent_content": bool(_VIOLENT.search(text)),
        "encourages_violence": bool(_ENCOURAGE.search(text)),
        "denigrates_protected_class": bool(_DENIGRATE.search(text)),
        "harmful_advice": bool(_HARMFUL.search(text)),
        "moral_judgment": bool(_MORAL.search(text)),
    }
    # Describing violence (a horror plot) or judging morals is not by itself inappropriate.
    serious = ("sexual_content", "encourages_violence", "denigrates_protected_class", "harmful_advice")
    flags["inappropriate_for_assistant"] = any(flags[k] for k in serious) or bool(_PROFANE.search(text))
    return {k: flags[k] for k in CONTENT_FLAGS}
