"""rlhfkit: the whole of RLHF in one place.

Collect human feedback, train a reward model, optimise a policy (PPO, REINFORCE,
best-of-n, expert iteration, SFT, DPO) and compare the methods by win-rate.
Nothing runs on import.
"""

__version__ = "0.1.0"
