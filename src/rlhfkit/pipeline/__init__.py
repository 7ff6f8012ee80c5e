"""The end-to-end RLHF pipeline of the lecture: SFT -> preferences from a simulated panel -> reward model
-> PPO, beside best-of-n and expert iteration, compared by win-rate against the initial model."""

from rlhfkit.pipeline.config import PRESETS, PipelineConfig
from rlhfkit.pipeline.stages import STAGES, run_pipeline

__all__ = ["PipelineConfig", "PRESETS", "STAGES", "run_pipeline"]
