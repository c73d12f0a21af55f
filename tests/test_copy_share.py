"""The background copy's share of a worker's time (pure unit test: a stand-in
copy and clock, the worker's real scheduling)."""

from __future__ import annotations

import pytest

from keyshift.app import worker as worker_module
from keyshift.app.worker import COPY_TURN_S, Worker
from keyshift.config import Settings
from keyshift.migrations.events import MigrationEvent
from keyshift.migrations.restore import Restored
from keyshift.operators.topology import Topology
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit

STEP_S = 0.008


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Copy:
    """A background copy whose every step takes STEP_S of the clock."""

    def __init__(self, clock: _Clock, steps: int) -> None:
        self.clock, self.left, self.done, self.steps = clock, steps, False, 0

    def step(self) -> bool:
        self.clock.now += STEP_S
        self.steps += 1
        self.left -= 1
        self.done = self.left == 0
        return self.done


class _Sink:
    def __init__(self) -> None:
        self.finished: list[int] = []
        self.emitted: list[MigrationEvent] = []

    def copy_finished(self, store: str, partition: int, restored: Restored) -> None:
        self.finished.append(partition)
        restored.event.finish()

    def emit(self, event: MigrationEvent) -> None:
        event.emitted = True
        self.emitted.append(event)


def _worker(share: float, clock: _Clock, steps: int) -> tuple[Worker, _Copy, _Sink]:
    worker = Worker(Topology("app"), Settings.build("app", brokers="b:1", state="memory://",
                                                    copy_share=share))
    sink = _Sink()
    worker._restorer = worker._events = sink  # type: ignore[assignment]
    copy = _Copy(clock, steps)
    event = MigrationEvent("app", "counts", 0, "progressive", "test", "a", "redis://a", "b",
                           "redis://b", assigned_ms=1)
    event.record_first(2)
    worker._restored[("words", 0)] = [Restored(Table(MemoryPartition()), event, copy)]  # type: ignore[arg-type]
    return worker, copy, sink


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_a_copy_turn_is_bounded_and_followed_by_its_share_of_rest(monkeypatch, share) -> None:
    clock = _Clock()
    monkeypatch.setattr(worker_module.time, "monotonic", clock)
    worker, copy, _ = _worker(share, clock, steps=1000)
    start = clock.now
    worker._migration_tick(copy=True)
    spent = clock.now - start
    assert COPY_TURN_S <= spent < COPY_TURN_S + STEP_S  # stops at the turn's end
    assert worker._copying
    rest = worker._copy_turn - clock.now
    assert rest == pytest.approx(spent * (1 - share) / share)
    # Off its turn the copy does not advance, but finished migrations are still handled.
    steps = copy.steps
    worker._migration_tick(copy=False)
    assert copy.steps == steps


def test_the_copy_finishes_and_its_migration_is_emitted(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(worker_module.time, "monotonic", clock)
    worker, copy, sink = _worker(0.25, clock, steps=5)
    turns = 0
    while worker._restored:
        clock.now = max(clock.now, worker._copy_turn)
        worker._migration_tick(copy=True)
        turns += 1
    assert copy.done and sink.finished == [0] and len(sink.emitted) == 1
    assert turns == 2  # 3 steps fill a 20 ms turn, 2 more finish it
    assert not worker._copying
