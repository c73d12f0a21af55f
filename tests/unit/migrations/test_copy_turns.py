"""The background copy's share of a worker's time: the
:class:`~keyshift.migrations.tracker.MigrationTracker`'s copy turns, over a real
progressive restore on the in-memory cluster, with a clock that only the copy
moves (each batch scanned at the source takes ``STEP_S``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from fakes import FakeCluster, ManualClock, WorkerThread, wait_for
from keyshift import App
from keyshift.migrations import tracker as tracker_module
from keyshift.migrations.events import EventLog, now_ms
from keyshift.migrations.locations import LocationsView
from keyshift.migrations.restore import Restorer
from keyshift.migrations.tracker import COPY_TURN_S, MigrationTracker
from keyshift.migrations.transfer import BATCH
from keyshift.runtime.kafka import (
    control_consumer_config,
    control_producer_config,
    restore_consumer_config,
)
from keyshift.state.memory.store import MemoryPartition

pytestmark = pytest.mark.unit

STEP_S = 0.008
TASK = ("words", 0)


class SlowScans:
    """A migration source's store whose every scanned batch takes ``STEP_S`` of
    ``clock`` (a round trip to the source)."""

    def __init__(self, store: Any, clock: ManualClock) -> None:
        self.store, self.clock = store, clock

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> SlowScanPartition:
        inner = self.store.partition(app_id, store, partition, aside=aside)
        return SlowScanPartition(inner, self.clock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class SlowScanPartition:
    def __init__(self, inner: Any, clock: ManualClock) -> None:
        self.inner, self.clock = inner, clock

    def scan(self, batch: int = BATCH) -> Iterator[list[tuple[bytes, bytes]]]:
        for chunk in self.inner.scan(batch):
            self.clock.now += STEP_S
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def count_app(state: str, instance: str, **settings: object) -> App:
    app = App(
        "wc", brokers="fake:1", state=state, instance_id=instance, commit_interval_ms=20, **settings
    )
    app.stream("words").count(store="counts").to("totals")
    return app


def source(cluster: FakeCluster) -> MemoryPartition:
    return cluster.store("memory://a").partition("wc", "counts", 0)


def target(cluster: FakeCluster) -> MemoryPartition:
    return cluster.store("memory://b").partition("wc", "counts", 0)


def previous_owner(cluster: FakeCluster, keys: int) -> dict[bytes, bytes]:
    """Instance a counts ``keys`` distinct words in memory://a and stops (its
    location published); returns its state."""
    cluster.create_topic("words", 1)
    producer = cluster.clients().producer({})
    for i in range(keys):
        producer.produce("words", orjson.dumps(f"w{i}"), f"w{i}".encode(), partition=0)
    producer.flush()
    with WorkerThread(count_app("memory://a", "a").worker(clients=cluster.clients())):
        assert wait_for(lambda: cluster.offsets.get(("wc", "words", 0)) == keys)
    data = dict(source(cluster).data)
    assert len(data) == keys
    return data


def moving_here(cluster: FakeCluster, share: float, clock: ManualClock) -> MigrationTracker:
    """Instance b's tracker, with words[0] just moved here by a progressive restore
    from instance a, and its first record processed (its pause is over)."""
    app = count_app(
        "memory://b", "b", peers="memory://a", migration="progressive", copy_share=share
    )
    settings, topology = app.settings, app.topology
    clients = cluster.clients()
    control = clients.producer(control_producer_config(settings))
    locations = LocationsView(
        topology.locations_topic,
        {},
        {},
        consumer=clients.consumer(control_consumer_config(settings, "locations")),
        producer=control,
    )
    locations.catch_up()
    reader = clients.consumer(restore_consumer_config(settings))
    restorer = Restorer(
        settings,
        clients.store(settings.state),
        locations,
        lambda: reader,
        "b",
        topology.changelog_topic,
        sources=lambda url: SlowScans(clients.store(url), clock),
    )
    tracker = MigrationTracker(restorer, EventLog(topology.events_topic, control), copy_share=share)
    with closing(tracker.restore([("counts", 0, None)], assigned_ms=now_ms())) as ready:
        restored = list(ready)
    assert [r.event.strategy for r in restored] == ["progressive"]
    tracker.started(TASK, restored)
    tracker.publish()
    tracker.processed_first(TASK)
    return tracker


def events(cluster: FakeCluster) -> list[dict[str, Any]]:
    """The migration events of instance b."""
    docs = [orjson.loads(m.value()) for m in cluster.records("wc--events")]
    return [doc for doc in docs if doc["to_instance"] == "b"]


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_a_copy_turn_is_bounded_and_followed_by_its_share_of_rest(
    monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    cluster = FakeCluster()
    previous_owner(cluster, 10 * BATCH)
    clock = ManualClock()
    tracker = moving_here(cluster, share, clock)
    monkeypatch.setattr(tracker_module, "time", SimpleNamespace(monotonic=clock))
    assert target(cluster).data == {}  # nothing copied before the first turn
    start = clock.now
    tracker.tick(copy=True)
    spent = clock.now - start
    assert COPY_TURN_S <= spent < COPY_TURN_S + STEP_S  # stops at the turn's end
    assert len(target(cluster).data) == 3 * BATCH  # 3 batches fill a 20 ms turn
    assert tracker.copying and TASK in tracker
    rest = tracker.next_copy_turn - clock.now
    assert rest == pytest.approx(spent * (1 - share) / share)
    # Off its turn the copy does not advance.
    tracker.tick(copy=False)
    assert clock.now == start + spent and len(target(cluster).data) == 3 * BATCH
    assert tracker.copying and events(cluster) == []


def test_the_copy_finishes_and_its_migration_is_emitted(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster()
    state = previous_owner(cluster, 4 * BATCH)
    clock = ManualClock()
    tracker = moving_here(cluster, 0.25, clock)
    monkeypatch.setattr(tracker_module, "time", SimpleNamespace(monotonic=clock))
    turns = 0
    while tracker and turns < 10:
        clock.now = max(clock.now, tracker.next_copy_turn)
        tracker.tick(copy=True)
        turns += 1
    assert turns == 2  # 3 batches fill a 20 ms turn; the 4th and the end finish it
    assert not tracker.copying and TASK not in tracker
    assert target(cluster).data == state and source(cluster).data == {}
    (event,) = events(cluster)
    assert event["task"] == "counts[0]" and event["strategy"] == "progressive"
    assert event["from_instance"] == "a" and event["to_instance"] == "b"
    assert event["keys"] == 4 * BATCH
    assert event["duration_ms"] is not None and event["resume_ms"] is not None
    # The copy's end is published: b's location of counts[0] is complete.
    location = [
        orjson.loads(m.value())
        for m in cluster.records("wc--state-locations")
        if m.key() == b"counts:0"
    ][-1]
    assert location["instance"] == "b" and location["complete"] is True
