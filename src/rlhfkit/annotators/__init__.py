"""Simulated annotator panel (AlpacaFarm-style): gold preferences, rankings, ratings, agreement.

``default_panel(fluency_fn=None, seed=0)`` builds the five default annotators. The fluency
feature needs a language model: ``rlhfkit.annotators.fluency.ModelFluency`` (imports torch,
so it is not imported here).
"""

from rlhfkit.annotators.flags import FLAG_NAMES, content_flags
from rlhfkit.annotators.panel import DERIVED, Annotator, FluencyFn, Panel, default_panel

__all__ = ["Annotator", "Panel", "default_panel", "DERIVED", "FLAG_NAMES", "FluencyFn", "content_flags"]
