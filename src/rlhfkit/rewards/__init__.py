"""Hand-engineered rewards, each a ``(prompts, responses) -> scores`` callable (``rlhfkit.scoring``'s protocol),
so that ``--reward-fn rlhfkit.rewards.<module>:<function>`` and any trainer can use them.

``scoring.py`` is how a trainer *calls* a reward (loading, checking what it returns); the rewards themselves,
which may need models of their own, live here, one module per family:

- ``rlhfkit.rewards.dialogue``: Li et al. (2016)'s dialogue rewards (dullness, repetition, coherence) and
  ``combine`` for weighted sums of them.
"""
