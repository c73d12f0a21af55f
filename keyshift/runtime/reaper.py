"""Free the caches of tasks that left, a slice at a time.

A revoked task's cache holds tens of thousands of decoded values, and freeing
them costs about a microsecond each: 313 ms for three tasks of ~83k keys in the
migration benchmark. Freed inside the revocation callback, that time held the
callback up, and the new owners got the partitions only after it; freed all at
once later, it would stall the tasks that stay; left to the garbage collector
(dropped tasks sit in reference cycles), it stalled a worker for 1.6 s in one
full collection. The worker hands dropped caches to a :class:`Reaper`, which
frees at most :data:`SLICE` entries per turn of the worker's loop.
"""

from __future__ import annotations

from typing import Any

#: Entries freed per turn (~10 ms).
SLICE = 10_000


class Reaper:
    def __init__(self, slice_entries: int = SLICE) -> None:
        self.slice_entries = slice_entries
        self._heaps: list[dict[Any, Any]] = []

    def add(self, caches: list[dict[Any, Any]]) -> None:
        self._heaps.extend(c for c in caches if c)

    def pending(self) -> int:
        """Entries not freed yet."""
        return sum(len(h) for h in self._heaps)

    def __bool__(self) -> bool:
        return bool(self._heaps)

    def reap(self) -> int:
        """Free up to one slice of entries; returns how many it freed."""
        budget = self.slice_entries
        while self._heaps and budget > 0:
            heap = self._heaps[-1]
            if len(heap) <= budget:
                budget -= len(heap)
                heap.clear()
                self._heaps.pop()
                continue
            popitem = heap.popitem
            for _ in range(budget):
                popitem()
            budget = 0
        return self.slice_entries - budget
