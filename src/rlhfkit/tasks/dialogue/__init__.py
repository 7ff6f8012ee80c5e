"""The multi-turn dialogue task: small talk about hobbies, for Li et al. (2016)'s dialogue rewards (see README.md
here and ``scripts/build_dialogue.py``).

A prompt is a conversation (a ``rlhfkit.data.Conversation``; in the files a list of ``{"role", "content"}``
messages ending with a user turn), its own framing: ``Task.format_prompt`` returns it as it is. The reward
functions are ``rlhfkit.rewards.dialogue``'s: "reward" (Li et al.'s weighted sum), "dullness", "repetition",
"coherence", with the MLE model of ``$RLHFKIT_DIALOGUE_MLE`` (default smollm2-135m). The judge is the same
weighted sum with the run's initial model as the MLE model: a hand-engineered reward, not people, so the
pipeline's win rates against it say how far a policy optimised that reward, not whether people prefer it.
"""

from __future__ import annotations

from rlhfkit.rewards import dialogue as rewards
from rlhfkit.tasks import TaskSpec
from rlhfkit.tasks.judge import RewardJudge

# used only for a plain-string opening; a conversation prompt is sent as it is
INSTRUCTION = "Reply to this message in one or two sentences:"


def make_judge(task, model: str, bf16: bool, seed: int) -> RewardJudge:
    """Li et al.'s weighted reward with ``model`` (the run's initial model) as the MLE model; draws nothing from
    ``seed``."""
    reward = rewards.make_dialogue_reward(mle_model=model, bf16=bf16)
    return RewardJudge(reward, "Li et al. (2016) dialogue reward: " + ", ".join(f"{w} {k}" for k, w in reward.weights.items()))


TASK = TaskSpec(instruction=INSTRUCTION, make_judge=make_judge,
                reward_functions={"reward": rewards.default_reward, "dullness": rewards.dullness,
                                  "repetition": rewards.repetition, "coherence": rewards.coherence})
