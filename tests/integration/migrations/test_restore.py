"""Restore on assignment, against real Kafka and Redis: what replay may trust."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from kafkautil import create_topic
from keyshift.config import Settings
from keyshift.errors import StateError
from keyshift.migrations.locations import Location, LocationsView, aside_of
from keyshift.migrations.restore import Restorer
from keyshift.migrations.transfer import stop_and_copy
from keyshift.runtime.kafka import control_consumer_config, control_producer_config, reader_config
from keyshift.state import open_store
from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.changelog import MARKER_KEY
from keyshift.state.redis import RedisStore
from keyshift.state.redis.store import partition_keys
from keyshift.urls import redact

pytestmark = pytest.mark.integration

GONE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def create_topics(admin: Any, app: str, partitions: int = 1) -> str:
    """The changelog of store "s" (``partitions`` partitions) and the locations
    topic; returns the changelog's name."""
    changelog = f"{app}--s-changelog"
    create_topic(admin, changelog, partitions, **{"cleanup.policy": "compact"})
    create_topic(admin, f"{app}--state-locations", 1, **{"cleanup.policy": "compact"})
    return changelog


def two_servers(
    brokers: str,
    redis_urls: list[str],
    admin: Any,
    unique: Callable[..., str],
    *,
    partitions: int = 1,
    **given: Any,
) -> tuple[Settings, str, str]:
    """Settings (``given``: more of them) of a new app on R1 with R2 as its peer,
    its topics created; skips the test without two Redis servers."""
    if len(redis_urls) < 2:
        pytest.skip("needs 2 Redis servers (keyshift dev up --redis-instances 1)")
    r1_url, r2_url = redis_urls[:2]
    app = unique("app")
    settings = Settings.build(app, brokers=brokers, state=r1_url, peers=(r2_url,), **given)
    create_topics(admin, app, partitions)
    return settings, r1_url, r2_url


@contextmanager
def restorer_for(
    settings: Settings,
    local: RedisStore,
    instance: str,
    *,
    sources: Callable[[str], Store] | None = None,
) -> Iterator[tuple[LocationsView, Restorer]]:
    """A live locations view and a Restorer for ``instance`` (``sources``: how it
    opens another instance's state), closed afterwards."""
    app = settings.app_id
    view = LocationsView(
        f"{app}--state-locations",
        control_consumer_config(settings, "locations"),
        control_producer_config(settings),
    )
    restore_consumer = Consumer(reader_config({"bootstrap.servers": settings.brokers}, "t"))
    restorer = Restorer(
        settings,
        local,
        view,
        lambda: restore_consumer,
        instance,
        lambda s: f"{app}--{s}-changelog",
        sources=sources,
    )
    try:
        yield view, restorer
    finally:
        restorer.close()
        restore_consumer.close()
        view.close()


def test_replay_does_not_trust_a_partial_local_copy(
    brokers: str, redis_url: str, admin: Any, unique: Callable[..., str]
) -> None:
    """A copy cut short left keys missing here under a current stamp; replay rebuilds."""
    app = unique("app")
    settings = Settings.build(app, brokers=brokers, state=redis_url)
    changelog = create_topics(admin, app)

    # The committed changelog: a=1, b=2, then the marker (offset 2).
    producer = Producer({"bootstrap.servers": brokers})
    for key, value in ((b"a", b"1"), (b"b", b"2")):
        producer.produce(changelog, value, key)
    producer.produce(changelog, Stamp(10, 0, epoch=1).encode(), MARKER_KEY)
    producer.flush(30)

    store = RedisStore(redis_url)
    local = store.partition(app, "s", 0)
    # This Redis got only "a" before its copy was interrupted, with a current stamp.
    epoch = local.claim("earlier-self", 2)
    local.commit({b"a": b"1"}, Stamp(10, 3, epoch=epoch), epoch)

    try:
        with restorer_for(settings, store, "me") as (view, restorer):
            # Last recorded owner: an instance whose Redis is gone.
            view.publish(Location("s", 0, "gone-instance", GONE, epoch))
            view.catch_up()
            restored = restorer.open("s", 0)
        assert restored.event.strategy == "replay"
        assert restored.event.tail_records == 3  # the whole changelog, not the tail
        assert local.get_many([b"a", b"b"]) == [b"1", b"2"]
        stamp = local.read_stamp()
        assert stamp is not None and (stamp.input_offset, stamp.changelog_offset) == (10, 3)
    finally:
        local.clear()
        store.close()


def test_task_back_mid_copy_sets_its_stale_copy_aside(
    brokers: str, redis_urls: list[str], admin: Any, unique: Callable[..., str]
) -> None:
    """R1 -> R2 mid-copy, then back to R1: progressive from R2 with R1's old data
    read last from its aside copy (not a replay), and the result is the newest."""
    settings, r1_url, r2_url = two_servers(brokers, redis_urls, admin, unique)
    app = settings.app_id
    r1, r2 = RedisStore(r1_url), RedisStore(r2_url)
    old, new = r1.partition(app, "s", 0), r2.partition(app, "s", 0)
    aside = r1.partition(app, "s", 0, aside=True)
    # R1 owned the task: a, b, c. R2 took it over mid-copy: it has a newer "a" only.
    e1 = old.claim("i1", 1)
    old.commit({b"a": b"1", b"b": b"2", b"c": b"3"}, Stamp(10, 0, epoch=e1), e1)
    e2 = new.claim("i2", e1 + 1)
    old.claim("i2", e2)  # R2's copy fenced R1
    new.commit({b"a": b"10"}, Stamp(20, 0, epoch=e2), e2)

    try:
        with restorer_for(settings, r1, "i1") as (view, restorer):
            view.publish(
                Location("s", 0, "i2", redact(r2_url), e2, complete=False, source=redact(r1_url))
            )
            view.catch_up()
            restored = restorer.open("s", 0)
            restorer.flush()  # the chain reads the aside copy: it stays
            assert aside.key_count() == 3
            assert restored.event.strategy == "progressive", restored.event.reason
            assert "set aside" in restored.event.reason
            copy = restored.copy
            assert copy is not None
            published = view.get("s", 0)
            assert published is not None and not published.complete
            assert published.source == redact(r2_url)
            assert published.origins == (aside_of(redact(r1_url)),)
            assert copy.fetch([b"a", b"b", b"zz"]) == [b"10", b"2", None]
            while not copy.step():
                pass
            restorer.copy_finished("s", 0, restored)
            final = view.get("s", 0)
            assert final is not None and final.complete and final.url == redact(r1_url)
        assert {k: v for batch in old.scan() for k, v in batch} == {
            b"a": b"10",
            b"b": b"2",
            b"c": b"3",
        }
        assert aside.key_count() == 0 and new.key_count() == 0
        stamp = old.read_stamp()
        assert stamp is not None and stamp.input_offset == 20  # R2's, the newest
    finally:
        for part in (old, new, aside):
            part.clear()
        r1.close()
        r2.close()


def test_an_aside_copy_no_chain_reads_is_dropped_once_the_location_is_durable(
    brokers: str, redis_url: str, redis_client: Any, admin: Any, unique: Callable[..., str]
) -> None:
    """An aside copy left by an abandoned chain goes when the task is restored here
    without it, after (never before) the new location is flushed."""
    app = unique("app")
    settings = Settings.build(app, brokers=brokers, state=redis_url)
    create_topics(admin, app)
    store = RedisStore(redis_url)
    local, aside = store.partition(app, "s", 0), store.partition(app, "s", 0, aside=True)
    epoch = local.claim("i1", 1)
    local.commit({b"a": b"1", b"b": b"2"}, Stamp(10, 0, epoch=epoch), epoch)
    assert local.set_aside("abandoned@1")
    try:
        with restorer_for(settings, store, "me") as (view, restorer):
            # The task went on to an instance whose Redis is gone: replay, no chain.
            view.publish(Location("s", 0, "gone-instance", GONE, epoch + 1))
            view.catch_up()
            restored = restorer.open("s", 0)
            assert restored.event.strategy == "replay"
            assert aside.key_count() == 2  # not before the flush
            restorer.flush()
            published = view.get("s", 0)
            assert published is not None and published.instance == "me"
        assert aside.key_count() == 0
        assert redis_client.exists(*partition_keys(app, "s", 0, aside=True)) == 0
        # A later set-aside under the same tag is not mistaken for a retry.
        local.commit({b"c": b"3"}, Stamp(11, 0, epoch=restored.table.epoch), restored.table.epoch)
        assert local.set_aside("abandoned@1")
        assert aside.key_count() == 1
    finally:
        local.clear()
        aside.clear()
        store.close()


def test_warm_up_connects_to_the_other_instances_redis_before_any_restore(
    brokers: str, redis_urls: list[str], admin: Any, unique: Callable[..., str]
) -> None:
    """A worker about to join connects ahead of time to every Redis a first
    restore may read; its own and unreachable ones are skipped."""
    settings, r1_url, r2_url = two_servers(brokers, redis_urls, admin, unique)
    r1 = RedisStore(r1_url)
    opened: list[str] = []

    def open_source(url: str) -> Store:
        opened.append(url)
        return open_store(url, timeout_s=5.0)

    try:
        with restorer_for(settings, r1, "i1", sources=open_source) as (view, restorer):
            created: list[int] = []
            make_consumer = restorer.restore_consumer
            restorer.restore_consumer = lambda: created.append(1) or make_consumer()
            for partition, url in enumerate((r1_url, r2_url, GONE)):
                view.publish(Location("s", partition, f"i{partition}", redact(url), 1))
            view.catch_up()
            # r2 answered; r1 is its own; GONE is no configured peer (never
            # connected to)
            assert restorer.warm_up() == 1
            assert created == [1]
            assert opened == [r2_url]
    finally:
        r1.close()


def test_a_source_that_answered_just_now_is_not_pinged_again(
    brokers: str,
    redis_urls: list[str],
    admin: Any,
    unique: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Warmed up ahead of a planned rebalance, the restores that follow skip a
    round trip per source; an unreachable one is pinged every time."""
    settings, r1_url, r2_url = two_servers(brokers, redis_urls, admin, unique)
    r1 = RedisStore(r1_url)
    pings: list[str] = []
    real_ping = RedisStore.ping

    def counted(store: RedisStore) -> None:
        pings.append(store.url)
        real_ping(store)

    monkeypatch.setattr(RedisStore, "ping", counted)
    try:
        with restorer_for(settings, r1, "i1") as (_, restorer):
            assert restorer.reachable(r2_url) and restorer.reachable(r2_url)
            assert pings == [r2_url]
            assert not restorer.reachable(GONE) and not restorer.reachable(GONE)
            assert pings == [r2_url, GONE, GONE]
            monkeypatch.setattr("keyshift.migrations.restore.ANSWERED_RECENTLY_S", 0.0)
            assert restorer.reachable(r2_url)
            assert pings == [r2_url, GONE, GONE, r2_url]
    finally:
        r1.close()


def _three_tasks_on(
    source: RedisStore, settings: Settings, view: LocationsView
) -> dict[int, dict[bytes, bytes]]:
    """Store "s" partitions 0-2 owned by i1 in ``source``, their locations
    published; returns each partition's data."""
    data = {}
    for partition in range(3):
        part = source.partition(settings.app_id, "s", partition)
        epoch = part.claim("i1", 1)
        data[partition] = {f"k{partition}-{i}".encode(): str(i).encode() for i in range(500)}
        part.commit(data[partition], Stamp(10 + partition, 0, epoch=epoch), epoch)
        view.publish(Location("s", partition, "i1", redact(source.url), epoch))
    view.catch_up()
    return data


@contextmanager
def _source_and_target(
    r1_url: str, r2_url: str, app: str
) -> Iterator[tuple[RedisStore, RedisStore]]:
    """R1 (this instance's) and R2 (the source's), emptied of partitions 0-2 and
    closed afterwards."""
    r1, r2 = RedisStore(r1_url), RedisStore(r2_url)
    try:
        yield r1, r2
    finally:
        for partition in range(3):
            r1.partition(app, "s", partition).clear()
            r2.partition(app, "s", partition).clear()
        r1.close()
        r2.close()


def test_the_restores_of_one_assignment_move_their_state_side_by_side(
    brokers: str,
    redis_urls: list[str],
    admin: Any,
    unique: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three stop-and-copy restores: every copy starts before any ends (they wait
    for each other at a barrier), each comes out whole, in the order asked, with
    the assignment's time."""
    settings, r1_url, r2_url = two_servers(
        brokers, redis_urls, admin, unique, partitions=3, migration="stop-and-copy"
    )
    all_started = threading.Barrier(3, timeout=10)
    threads: list[str] = []

    def side_by_side(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        all_started.wait()  # broken (an error) unless all three copies run at once
        return stop_and_copy(*args, **kwargs)

    monkeypatch.setattr("keyshift.migrations.restore.stop_and_copy", side_by_side)
    app = settings.app_id
    with _source_and_target(r1_url, r2_url, app) as (r1, r2):
        with restorer_for(settings, r1, "i2") as (view, restorer):
            data = _three_tasks_on(r2, settings, view)
            restored = list(restorer.open_all([("s", p, None) for p in range(3)], assigned_ms=1234))
            restorer.flush()
        assert [r.event.partition for r in restored] == [0, 1, 2]
        assert len(set(threads)) == 3 and all(t.startswith("keyshift-restore") for t in threads)
        for partition, item in enumerate(restored):
            assert item.event.strategy == "stop-and-copy"
            assert item.event.keys == 500 and item.event.assigned_ms == 1234
            local = r1.partition(app, "s", partition)
            assert {k: v for batch in local.scan() for k, v in batch} == data[partition]
            stamp = local.read_stamp()
            assert stamp is not None and stamp.input_offset == 10 + partition
            assert r2.partition(app, "s", partition).key_count() == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("keyshift-restore")]


class _LosesPartition1:
    """A migration source whose partition 1 cannot be read (its server went away
    mid-restore); everything else is the real store's."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> StorePartition:
        if partition == 1:
            raise StateError("lost the source mid-restore")
        return self.inner.partition(app_id, store, partition, aside=aside)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_restore_fails_the_assignment_after_the_others_stopped(
    brokers: str,
    redis_urls: list[str],
    admin: Any,
    unique: Callable[..., str],
) -> None:
    """The error reaches the caller where that restore's turn comes; by then no
    restore thread runs any more."""
    settings, r1_url, r2_url = two_servers(brokers, redis_urls, admin, unique, partitions=3)

    def losing_partition_1(url: str) -> Store:
        return _LosesPartition1(open_store(url, timeout_s=5.0))

    with _source_and_target(r1_url, r2_url, settings.app_id) as (r1, r2):
        with restorer_for(settings, r1, "i2", sources=losing_partition_1) as (view, restorer):
            _three_tasks_on(r2, settings, view)
            ready = restorer.open_all([("s", p, None) for p in range(3)])
            assert next(ready).event.partition == 0
            with pytest.raises(StateError, match="lost the source"):
                next(ready)
        assert not [t for t in threading.enumerate() if t.name.startswith("keyshift-restore")]
