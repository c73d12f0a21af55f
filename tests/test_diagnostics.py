"""Where a worker's time goes: garbage collection and state reads (pure unit tests)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import pytest

from keyshift.runtime.metrics import GcClock, Metrics
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit


def test_the_gc_clock_adds_up_collections_only_while_started() -> None:
    metrics = Metrics()
    clock = GcClock(metrics)
    clock.start()
    garbage = [[i] for i in range(100_000)]
    del garbage
    gc.collect()
    clock.stop()
    took, longest = metrics.gc_seconds, metrics.gc_max_seconds
    assert took > 0 and 0 < longest <= took
    assert metrics.snapshot()["gc_seconds"] == round(took, 3)
    gc.collect()
    assert metrics.gc_seconds == took


class _SlowSource:
    """A migration source that takes 20 ms per read and has every key."""

    done = False

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]:
        time.sleep(0.02)
        return [b"1" for _ in keys]

    def forget(self, keys: Sequence[bytes]) -> None:
        pass


def test_a_table_counts_the_time_it_waits_for_reads() -> None:
    backend = MemoryPartition()
    table = Table(backend)
    table.adopt(None, backend.claim("me"))
    table.prefetch([b"a"])
    assert table.read_seconds > 0 and table.remote_seconds == 0
    table.source = _SlowSource()
    table.prefetch([b"b", b"c"])
    assert table.remote_seconds >= 0.02
    assert table.get(b"b") == 1
