"""Named random streams derived from the pipeline seed.

Two samplers given the same seed draw the same uniform numbers (the sampler uses one uniform per
row and step), so two models sampled with one seed give correlated answers, and the same model
gives identical ones. Every stream that must be independent of another therefore gets its own
seed, derived from the pipeline seed and a name:

  eval:NAME          method NAME's eval answers (eval:initial is the reference's answers)
  eval:best_of_n     best-of-n's candidates on the eval prompts
  preferences:SRC    the preference samples drawn from SRC (sft, initial)
  expert_iteration:R round R's best-of-n candidates

Inside a stream, row k of a grouped sample (prompt k // n, answer k % n) draws from its own generator,
``rollout.row_stream(stream seed, k)``: the samples do not depend on the generation batch size, nor on
how several processes split the prompts between them.

``stream_seed(seed, name)`` = the first 8 bytes of SHA-256("rlhfkit:{seed}:{name}"), big-endian,
top bit cleared (a non-negative int64). A hash, not ``hash()``: Python salts string hashes per
process, and the same run must reproduce on any machine.
"""

from __future__ import annotations

import hashlib


def stream_seed(seed: int, name: str) -> int:
    """Seed of the random stream ``name`` in a pipeline seeded with ``seed``: in [0, 2**63)."""
    digest = hashlib.sha256(f"rlhfkit:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
