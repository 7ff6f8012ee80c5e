"""The movie-review continuation task (Ziegler et al., 2019): its definition and its data files
(a package, so that the JSONL files ship inside wheels; see README.md here).

Its judge is the simulated annotator panel (``rlhfkit.annotators.default_panel``), with fluency
measured under the frozen initial model, so gibberish and shuffled words cannot win on sentiment
alone. It has no references and no reward functions.
"""

from __future__ import annotations

from rlhfkit.tasks import TaskSpec

# "one or two sentences" keeps a 135M instruct model's continuation short, as in Ziegler et al.
# (24-token continuations)
INSTRUCTION = "Continue this movie review in one or two sentences:"


def make_judge(task, model: str, bf16: bool, seed: int):
    """The five-annotator panel; its fluency feature is mean log p(continuation | the task's framing
    of the opening) under ``model`` (the initial model, loaded on first use, in bf16 when asked)."""
    from rlhfkit.annotators import default_panel
    from rlhfkit.annotators.fluency import InitialModelFluency

    return default_panel(fluency_fn=InitialModelFluency(model, task.format_prompt, bf16), seed=seed)


TASK = TaskSpec(instruction=INSTRUCTION, make_judge=make_judge)
