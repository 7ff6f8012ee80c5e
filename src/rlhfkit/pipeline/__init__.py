"""The end-to-end RLHF pipeline of the lecture: SFT -> preferences from a simulated panel -> reward model
-> PPO, beside best-of-n and expert iteration, compared by win-rate against the initial model."""

from rlhfkit.pipeline.config import PRESETS, PipelineConfig

__all__ = ["PipelineConfig", "PRESETS", "STAGES", "run_pipeline"]


def __getattr__(name: str):
    # the stages import torch: loaded on first use, so that `rlhfkit --help` and the config stay light
    if name in ("STAGES", "run_pipeline"):
        from rlhfkit.pipeline import stages

        return getattr(stages, name)
    raise AttributeError(f"module 'rlhfkit.pipeline' has no attribute {name!r}")
