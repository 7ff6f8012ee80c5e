"""Iterated RLHF (``rlhfkit loop``): rounds of preferences on the current policy's samples (from the task's
simulated judge or from people in the feedback app), a reward model retrained from SFT on the old and new
preferences, and more policy training against it; per round gold and proxy reward, KL to SFT and the
reward model's accuracy on policy samples (rounds.jsonl, loop.png)."""

from rlhfkit.loop.config import LoopConfig

__all__ = ["LoopConfig", "run_loop"]


def __getattr__(name: str):
    # the rounds import torch: loaded on first use, so that `rlhfkit --help` stays light
    if name == "run_loop":
        from rlhfkit.loop.run import run_loop

        return run_loop
    raise AttributeError(f"module 'rlhfkit.loop' has no attribute {name!r}")
