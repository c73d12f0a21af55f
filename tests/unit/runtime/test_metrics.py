"""Where a worker's time goes: the garbage-collection clock of its metrics."""

from __future__ import annotations

import gc

import pytest

from keyshift.runtime.metrics import GcClock, Metrics

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
