"""Changelog replay bounds: batched end offsets and the read_committed tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from kafkautil import create_topic
from keyshift.migrations.replay import replay_changelog
from keyshift.runtime.kafka import end_offsets, reader_config
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_KEY
from keyshift.state.memory import MemoryStore


class _NoBroker:
    """A consumer stand-in that fails on any use: proves no broker work is done."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"consumer.{name} called")


@pytest.mark.unit
def test_known_empty_tail_needs_no_broker() -> None:
    part = MemoryStore().partition("app", "s", 0)
    stamp = Stamp(10, 42, epoch=1)
    consumer: Any = _NoBroker()
    # Nothing beyond the stamp.
    result = replay_changelog(consumer, "t", 0, part, stamp, 2, end=42)
    assert (result.stamp, result.records) == (stamp, 0)
    # Under read_committed one offset before the stable end is a commit marker.
    result = replay_changelog(consumer, "t", 0, part, stamp, 2, end=43, read_committed=True)
    assert (result.stamp, result.records) == (stamp, 0)


@pytest.mark.integration
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
    deadline = time.monotonic() + 10
    while (ends := end_offsets(admin, wanted, read_committed=True))[(topic, 0)] < 4:
        assert time.monotonic() < deadline, ends
        time.sleep(0.05)
    assert ends == {(topic, 0): 4, (other, 0): 0, (other, 1): 0}

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
        again = replay_changelog(consumer, topic, 0, part, result.stamp, 2, end=4,
                                 read_committed=True)
        assert (again.stamp, again.records) == (result.stamp, 0)
    finally:
        consumer.close()
        producer.abort_transaction(30)
