"""rlhfkit.processes without a process group: the parts of a list (cut at batch boundaries when asked) and
map_parts, with P processes simulated one after the other in this process (each one's gather hands back
what it made; the parts are then joined as the real gather joins them, in process order); and the panel's
fluency worked out ahead in parts gives, to the last bit, what one process computes."""

from __future__ import annotations

import numpy as np
import pytest

from rlhfkit.processes import Processes


def _as(count: int, index: int) -> Processes:
    p = Processes()
    p.count, p.index = count, index
    return p


@pytest.mark.parametrize("align", [1, 3, 8])
def test_parts_are_contiguous_cover_the_list_and_start_on_batch_boundaries(align):
    for n in range(0, 30):
        for P in (1, 2, 3, 5):
            parts = [_as(P, i).part(n, align) for i in range(P)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert all(lo <= hi and (lo % align == 0 or lo == n) for lo, hi in parts)
            batches = [-(-(hi - lo) // align) for lo, hi in parts]  # whole batches each, shared as evenly as items
            assert max(batches) - min(batches) <= 1
            if align == 1:
                assert parts == [(n * i // P, n * (i + 1) // P) for i in range(P)]


class Simulated:
    """P processes run one after the other: ``map_parts`` runs each one's part and joins them in order."""

    def __init__(self, count: int):
        self.count, self.calls = count, []

    def from_main(self, fn):
        return fn()  # every simulated process shares this memory: the main one's decision is everyone's

    def map_parts(self, fn, items, align=1):
        joined = []
        for i in range(self.count):
            p = _as(self.count, i)
            p.gather = lambda mine: list(mine)  # this process's own share; joined below in process order
            part = p.map_parts(lambda xs: self.calls.append(len(xs)) or fn(xs), items, align)
            joined += part
        return joined


def test_map_parts_runs_each_part_once_and_joins_them_in_order():
    seen = Simulated(3)
    out = seen.map_parts(lambda xs: [x * 10 for x in xs], list(range(11)), align=2)
    assert out == [x * 10 for x in range(11)] and seen.calls == [4, 4, 3]
    with pytest.raises(ValueError, match="2 results for 3 items"):
        _as(1, 0).map_parts(lambda xs: xs[:2], [1, 2, 3])


def test_fluency_prefetched_in_parts_is_what_one_process_computes_and_the_panel_judges_alike():
    from rlhfkit.annotators import default_panel
    from rlhfkit.annotators.fluency import InitialModelFluency
    from rlhfkit.models import tiny_dir

    model = str(tiny_dir())
    openings = [f"The film number {i} was" for i in range(7) for _ in range(3)]
    responses = [("good " * (1 + (3 * i) % 11) + f"and {i}") if i % 8 else "  " for i in range(len(openings))]

    def fluency():
        return InitialModelFluency(model, lambda o: o, bf16=False, batch_size=4)

    whole = default_panel(fluency_fn=fluency(), seed=0)
    parts = default_panel(fluency_fn=fluency(), seed=0)
    procs = Simulated(3)
    parts.prefetch(openings, responses, procs)
    assert sum(procs.calls) == len({(o, r) for o, r in zip(openings, responses) if r.strip()}) and len(procs.calls) == 3
    groups = [responses[i : i + 3] for i in range(0, len(responses), 3)]
    heads = openings[::3]
    # every later call finds the pairs remembered: nothing computed again, the same values, the same draws
    parts.fluency_fn._score = None  # would fail if called
    np.testing.assert_array_equal(parts.fluency_fn(openings, responses), whole.fluency_fn(openings, responses))
    assert parts.rank(heads, groups, flip_prob=0.25, rng=np.random.default_rng(5)) == \
        whole.rank(heads, groups, flip_prob=0.25, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(parts.gold_reward(openings, responses), whole.gold_reward(openings, responses))
