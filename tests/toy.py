"""The learnable toy the policy-gradient tests share: the tiny model taught to write strings of 'good' and
'bad', and a reward for the share of 'good' (fixtures in conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ["good", "bad"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good_fraction(prompts, responses):
    """The learnable toy reward: the share of words that are 'good'."""
    return torch.tensor([sum(w == "good" for w in r.split()) / max(len(r.split()), 1) for r in responses])


def train_good_bad_sft(d: Path) -> Path:
    """The tiny model taught to write random strings of 'good' and 'bad' (about half of each)."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import train_sft

    rng = random.Random(0)
    rows = [{"prompt": f"Say words {i}.", "completion": " ".join(rng.choice(WORDS) for _ in range(8))} for i in range(64)]
    data = write_jsonl(d / "sft.jsonl", rows)
    return train_sft(SFTConfig(model="tiny", data=str(data), out=str(d / "run"), max_steps=40, batch_size=16, lr=1e-2),
                     progress=False)


def say_words_prompts(path: Path, n: int = 64) -> Path:
    return write_jsonl(path, [{"prompt": f"Say words {i}."} for i in range(n)])
