"""Changelog replay against the real broker and Redis: end offsets, the
read_committed tail, and state rebuilt from the changelog after Redis lost it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from kafkautil import (
    converged,
    create_topic,
    events,
    expected_counts,
    keyshift_cmd,
    partition_count,
    produce_json,
    sentences,
    spawn,
    stop,
    wait_for,
    write_app,
)
from keyshift.migrations.replay import replay_changelog
from keyshift.runtime.kafka import end_offsets, reader_config
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_KEY
from keyshift.state.memory import MemoryStore

pytestmark = pytest.mark.integration


def test_end_offsets_and_committed_tail(
    brokers: str, admin: Any, unique: Callable[..., str]
) -> None:
    topic = unique("cl")
    other = unique("cl")
    create_topic(admin, topic, 1, **{"cleanup.policy": "compact"})
    create_topic(admin, other, 2)
    producer = Producer({"bootstrap.servers": brokers, "transactional.id": unique("txn")})
    producer.init_transactions(30)

    # One committed transaction: two values and a marker (offsets 0..2), commit at 3.
    producer.begin_transaction()
    producer.produce(topic, b"1", b"a")
    producer.produce(topic, b"2", b"b")
    producer.produce(topic, Stamp(7, 0, epoch=1).encode(), MARKER_KEY)
    producer.commit_transaction(30)
    # The coordinator writes commit markers just after it answers the commit.
    wanted = [(topic, 0), (other, 0), (other, 1)]
    assert wait_for(
        lambda: end_offsets(admin, wanted, read_committed=True)[(topic, 0)] >= 4, 10, 0.05
    )
    assert end_offsets(admin, wanted, read_committed=True) == {
        (topic, 0): 4,
        (other, 0): 0,
        (other, 1): 0,
    }

    # An open transaction moves the high watermark, not the last stable offset.
    producer.begin_transaction()
    producer.produce(topic, b"3", b"c")
    producer.flush(30)
    assert end_offsets(admin, [(topic, 0)], read_committed=True) == {(topic, 0): 4}
    assert end_offsets(admin, [(topic, 0)]) == {(topic, 0): 5}

    consumer = Consumer(reader_config({"bootstrap.servers": brokers}, "t", read_committed=True))
    try:
        part = MemoryStore().partition("app", "s", 0)
        part.claim("me", 2)
        result = replay_changelog(consumer, topic, 0, part, None, 2, end=4, read_committed=True)
        assert result.records == 3
        assert result.stamp is not None and result.stamp.changelog_offset == 3
        assert result.stamp.input_offset == 7
        assert part.get_many([b"a", b"b", b"c"]) == [b"1", b"2", None]

        # From that stamp only the commit marker is left: nothing to read.
        again = replay_changelog(
            consumer, topic, 0, part, result.stamp, 2, end=4, read_committed=True
        )
        assert (again.stamp, again.records) == (result.stamp, 0)
    finally:
        consumer.close()
        producer.abort_transaction(30)


def test_redis_wiped_rebuilds_from_changelog(brokers, admin, redis_client, unique, tmp_path: Path):
    app_id, source, sink = unique("wipe"), unique("sentences"), unique("counts")
    create_topic(admin, source, 3)
    first, second = sentences(2000), sentences(1000, start=2000)
    produce_json(brokers, source, first)
    ref = write_app(tmp_path, "wipeapp", app_id, source, sink, "at_least_once")
    log = tmp_path / "worker.log"
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, log)
    try:
        assert wait_for(lambda: converged(brokers, sink, expected_counts(first)), 90)
    finally:
        assert stop(proc) == 0
    for key in redis_client.scan_iter(match=f"ks:{{{app_id}:*"):
        redis_client.delete(key)
    assert not list(redis_client.scan_iter(match=f"ks:{{{app_id}:*"))
    produce_json(brokers, source, second)
    restarted_ms = time.time() * 1000
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, log)
    try:
        expected = expected_counts(first + second)
        assert wait_for(lambda: converged(brokers, sink, expected), 90), log.read_text()[-3000:]
    finally:
        assert stop(proc) == 0
    # Every task's state was rebuilt from its whole changelog: the restores after
    # the wipe found no stamp in Redis and replayed the changelog's records.
    rebuilt = [e for e in events(brokers, app_id) if e["assigned_ms"] > restarted_ms]
    tasks = partition_count(admin, f"{app_id}--keyby-1-repartition")
    assert {e["partition"] for e in rebuilt} == set(range(tasks)), rebuilt
    assert all(e["tail_records"] > 0 for e in rebuilt), rebuilt
