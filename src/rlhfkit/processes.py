"""The processes of a run started by ``accelerate launch`` or ``torchrun`` (one when started plainly), for the
work that is not a training step: split a list of prompts between the processes, gather what each made
back in order, run something on the main process alone while the others wait.

The trainers (``train/run.py``) need none of this: accelerate's ``Accelerator`` does their part. The
pipeline's sampling and judging stages use it so that P processes sample 1/P of the prompts each and
only the main process writes files.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


class Processes:
    """This process's place among the run's processes. With one process (no ``WORLD_SIZE`` > 1 in the
    environment) nothing is initialised and every method is trivial."""

    def __init__(self):
        self.count = int(os.environ.get("WORLD_SIZE", "1"))
        self.index = 0
        if self.count > 1:
            from accelerate import PartialState

            from rlhfkit.train.common import _cpu_processes

            # the same shared state every trainer's Accelerator joins later (gloo on CPUs, as there)
            state = PartialState(cpu=_cpu_processes())
            self.count, self.index = state.num_processes, state.process_index

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def part(self, n: int, align: int = 1) -> tuple[int, int]:
        """(start, stop) of this process's contiguous block of ``n`` items: process i takes
        ``n*i//P .. n*(i+1)//P``, so blocks differ by at most one item and, in process order, make up 0..n.
        With ``align`` > 1 the blocks are cut at multiples of ``align`` (whole batches of that size: the
        ceil(n/align) batches are shared as the items are above, the last one may be short)."""
        batches = -(-n // max(1, align))
        lo, hi = batches * self.index // self.count, batches * (self.index + 1) // self.count
        return min(n, lo * align), min(n, hi * align)

    def gather(self, items: list[T]) -> list[T]:
        """Every process's ``items`` (any picklable objects) concatenated in process order, on every
        process: after ``part``, the whole list in its own order."""
        if self.count == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def map_parts(self, fn: Callable[[list], Sequence[T]], items: Sequence, align: int = 1) -> list[T]:
        """``fn`` (one result per item) on this process's ``part`` of ``items``, every part's results in order on
        every process: for deterministic work item by item (a forward pass that scores each item), so that P
        processes each do 1/P of it. Every process calls it with the same ``items``; ``fn`` is not called on an
        empty part. ``align``: a ``fn`` that works in batches of ``align`` from the start of its list then runs
        the very batches one process runs (the same padding: the same numbers to the last bit). Random draws
        do not belong in ``fn``: each part would draw what one process draws for the first items."""
        lo, hi = self.part(len(items), align)  # 0, len(items) on one process
        mine = list(fn(list(items[lo:hi]))) if hi > lo else []
        if len(mine) != hi - lo:
            raise ValueError(f"map_parts: fn returned {len(mine)} results for {hi - lo} items")
        return self.gather(mine)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the main process alone, its (picklable) result handed to every process; the
        others wait meanwhile. For writing files the others read next, and for decisions made on files that
        ``fn`` changes (every process then acts on one decision). An error in ``fn`` is raised on every
        process (the others would otherwise wait for the main one until the group's timeout)."""
        if self.count == 1:
            return fn()
        import torch.distributed as dist

        box: list = [None]
        if self.is_main:
            try:
                box = [("ok", fn())]
            except BaseException as e:  # handed on, then raised here too
                box = [("error", f"{type(e).__name__}: {e}")]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise RuntimeError(f"the main process failed: {value}")
        return value
