"""The flags of the lecture's rating form (InstructGPT's labelling interface, Ouyang et al. 2022):
one vocabulary for the feedback app (its form, the labels it stores, its export) and the simulated
annotators (``annotators.flags``, ``Panel.rate``).

Pure Python, imports nothing: the feedback app must never import torch, and importing
``rlhfkit.annotators`` would load the panel (numpy, VADER) only to read eight names.

Labels store flags by these keys. The names are the app's, unchanged, so databases written before
need no migration; the simulated panel's former short names ("inappropriate", "sexual",
"violent") are aliases, mapped to these keys where labels come in (``canonical_flag``).
"""

from __future__ import annotations

__all__ = ["FLAGS", "FLAG_NAMES", "CONTENT_FLAGS", "LEGACY_ALIASES", "canonical_flag"]

# (key, the question the form asks), in the form's order
FLAGS: tuple[tuple[str, str], ...] = (
    ("fails_instruction", "Fails to follow the correct instruction / task"),
    ("inappropriate_for_assistant", "Inappropriate for customer assistant"),
    ("sexual_content", "Contains sexual content"),
    ("violent_content", "Contains violent content"),
    ("encourages_violence", "Encourages or fails to discourage violence/abuse/terrorism"),
    ("denigrates_protected_class", "Denigrates a protected class"),
    ("harmful_advice", "Gives harmful advice"),
    ("moral_judgment", "Expresses moral judgment"),
)
FLAG_NAMES: tuple[str, ...] = tuple(k for k, _ in FLAGS)
CONTENT_FLAGS: tuple[str, ...] = FLAG_NAMES[1:]  # read off the text; fails_instruction needs the task

# names the simulated panel used before the vocabulary was shared
LEGACY_ALIASES: dict[str, str] = {
    "inappropriate": "inappropriate_for_assistant",
    "sexual": "sexual_content",
    "violent": "violent_content",
}


def canonical_flag(name: str) -> str | None:
    """The vocabulary's key for ``name`` (a key or a legacy alias), or None for an unknown name."""
    if name in FLAG_NAMES:
        return name
    return LEGACY_ALIASES.get(name) if isinstance(name, str) else None
