"""Free the caches of tasks that left, a slice at a time.

A revoked task's cache can hold many thousands of decoded values, and freeing
them costs about a microsecond each. Freed inside the revocation callback,
that time holds the callback up, and the new owners get the partitions only
after it; freed all at once later, it stalls the tasks that stay; left to the
garbage collector (dropped tasks sit in reference cycles), it lands in a full
collection at an unknown moment. The worker hands dropped caches to a
:class:`Reaper`, which frees at most :data:`SLICE` entries per turn of the
worker's loop.
"""

from __future__ import annotations

from typing import Any

#: Entries freed per turn (~10 ms).
SLICE = 10_000


class Reaper:
    def __init__(self, slice_entries: int = SLICE) -> None:
        self.slice_entries = slice_entries
        self._caches: list[dict[Any, Any]] = []

    def add(self, caches: list[dict[Any, Any]]) -> None:
        self._caches.extend(c for c in caches if c)

    def pending(self) -> int:
        """Entries not freed yet."""
        return sum(len(h) for h in self._caches)

    def __bool__(self) -> bool:
        return bool(self._caches)

    def reap(self) -> int:
        """Free up to one slice of entries; returns how many it freed."""
        budget = self.slice_entries
        while self._caches and budget > 0:
            cache = self._caches[-1]
            if len(cache) <= budget:
                budget -= len(cache)
                cache.clear()
                self._caches.pop()
                continue
            popitem = cache.popitem
            for _ in range(budget):
                popitem()
            budget = 0
        return self.slice_entries - budget
