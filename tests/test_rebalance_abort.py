"""Exactly-once under a rebalance: a transaction the group rejects is aborted and
redone, not fatal (real broker and Redis; the worker runs in this process)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import Consumer

from kafkautil import (
    create_topic,
    expected_counts,
    final_counts,
    produce_json,
    read_topic,
    sentences,
    values_by_key,
    wait_for,
)
from keyshift.app.app import App
from keyshift.runtime.clients import Clients

pytestmark = pytest.mark.integration


class _StaleGroupMetadata:
    """The worker's real consumer, except that, once ``stale`` is set, it hands out
    that group metadata snapshot for one commit: the broker then rejects the
    transaction's offsets as coming from an old generation, exactly as when a
    rebalance overtakes a commit. ``last`` is the snapshot of the worker's last
    commit (taken in the worker's thread: from another thread the call can
    block while the worker polls)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.stale: Any = None
        self.last: Any = None

    def consumer_group_metadata(self) -> Any:
        stale, self.stale = self.stale, None
        if stale is not None:
            return stale
        self.last = self._consumer.consumer_group_metadata()
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _totals(brokers: str, sink: str) -> dict[str, int]:
    return final_counts(read_topic(brokers, sink, idle_s=0.5))


def test_a_transaction_overtaken_by_a_rebalance_is_aborted_and_redone(
    brokers, admin, redis_url, unique
):
    """Classic protocol: the broker rejects offsets from an old generation. (Under
    KIP-848 it accepts an older member epoch while the member still owns the
    partitions, so the same overtaking is no error there.)"""
    app_id, source, sink, other = unique("rw"), unique("words"), unique("totals"), unique("o")
    create_topic(admin, source, 2)
    create_topic(admin, other, 1)
    app = App(app_id, brokers=brokers, state=redis_url, guarantee="exactly_once",
              commit_interval_ms=200, group_protocol="classic")
    (app.stream(source)
        .flat_map(lambda s: s.split())
        .key_by(lambda w: w)
        .count(store="counts")
        .to(sink))
    first, second = sentences(400), sentences(400, start=400)
    wrapped: list[_StaleGroupMetadata] = []

    def consumers(config: dict[str, Any]) -> Any:
        made = Consumer(config)
        if config.get("group.id") != app_id:
            return made  # readers of the changelog and the locations topic
        wrapped.append(_StaleGroupMetadata(made))
        return wrapped[-1]

    worker = app.worker(clients=Clients(consumer=consumers))
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=drive)
    thread.start()
    intruder: Consumer | None = None
    try:
        assert wait_for(lambda: bool(wrapped), 60, 0.1)
        (consumer,) = wrapped
        produce_json(brokers, source, first)
        assert wait_for(lambda: _totals(brokers, sink) == expected_counts(first), 60), errors
        stale = consumer.last
        assert stale is not None
        # Another member joins (on another topic, so the worker keeps its
        # partitions): the group moves to a new generation.
        intruder = Consumer({"bootstrap.servers": brokers, "group.id": app_id,
                             "partition.assignment.strategy": "cooperative-sticky"})
        intruder.subscribe([other])
        assert wait_for(lambda: intruder.poll(0.2) is None and bool(intruder.assignment()),
                        60, 0.1)
        consumer.stale = stale
        produce_json(brokers, source, second)
        assert wait_for(lambda: worker.metrics.aborted_transactions == 1, 60, 0.2), errors
        expected = expected_counts(first + second)
        assert wait_for(lambda: _totals(brokers, sink) == expected, 60), errors
        assert not errors
    finally:
        worker.stop()
        thread.join(60)
        if intruder is not None:
            intruder.close()
    assert not thread.is_alive() and not errors
    assert worker.metrics.aborted_transactions == 1
    for key, seq in values_by_key(read_topic(brokers, sink, read_committed=True)).items():
        assert all(a < b for a, b in zip(seq, seq[1:], strict=False)), (key, seq)
