"""Rebalances mid-stream on the real broker and Redis: workers scaled out and in
while data flows, and, under exactly-once, a transaction the group rejects is
aborted and redone, not fatal (that worker runs in this process)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from kafkautil import (
    committed,
    converged,
    create_topic,
    events,
    expected_counts,
    final_counts,
    group_holds,
    keyshift_cmd,
    produce_json,
    read_topic,
    sentences,
    spawn,
    stop,
    values_by_key,
    wait_for,
    write_app,
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
    app = App(
        app_id,
        brokers=brokers,
        state=redis_url,
        guarantee="exactly_once",
        commit_interval_ms=200,
        group_protocol="classic",
    )
    (
        app.stream(source)
        .flat_map(lambda s: s.split())
        .key_by(lambda w: w)
        .count(store="counts")
        .to(sink)
    )
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
        intruder = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": app_id,
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )
        intruder.subscribe([other])
        assert wait_for(lambda: intruder.poll(0.2) is None and bool(intruder.assignment()), 60, 0.1)
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


@pytest.mark.slow
def test_scale_out_and_in_mid_stream(brokers, admin, unique, tmp_path: Path):
    app_id, source, sink = unique("rebal"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    data = sentences(15000)
    ref = write_app(tmp_path, "rebalapp", app_id, source, sink, "at_least_once")
    log = tmp_path / "workers.log"
    first = spawn(keyshift_cmd("worker", ref, "--instance-id", "w0"), tmp_path, log)
    producer = threading.Thread(
        target=produce_json, args=(brokers, source, data), kwargs={"rate": 2000}
    )
    topics = [source, f"{app_id}--keyby-1-repartition"]
    others = []
    try:
        assert wait_for(lambda: group_holds(admin, app_id, topics, 1), 60), log.read_text()[-4000:]
        producer.start()
        # Mid-stream: part of the input is processed before the group grows.
        assert wait_for(lambda: committed(admin, app_id, source) >= len(data) // 4, 60)
        others = [
            spawn(keyshift_cmd("worker", ref, "--instance-id", f"w{i}"), tmp_path, log)
            for i in (1, 2)
        ]
        assert wait_for(lambda: group_holds(admin, app_id, topics, 3), 60), log.read_text()[-4000:]
        # The three process together before one of them leaves.
        mark = committed(admin, app_id, source)
        assert wait_for(lambda: committed(admin, app_id, source) >= min(mark + 2000, len(data)), 60)
        stopped_ms = time.time() * 1000
        assert stop(others[0]) == 0  # graceful scale-in: its tasks migrate
        assert wait_for(lambda: group_holds(admin, app_id, topics, 2), 60), log.read_text()[-4000:]
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 120), log.read_text()[-4000:]
    finally:
        for proc in [first, *others]:
            stop(proc)
    # Partitions were revoked and assigned as the group grew and shrank: the
    # scale-out moved stateful tasks from w0 to the new workers (12 partitions
    # over 3 members: some of the 6 stateful ones moved), and after the
    # scale-in no task's last owner is the stopped w1.
    published = events(brokers, app_id)
    moved = [
        e
        for e in published
        if e["from_instance"] == "w0"
        and e["to_instance"] in ("w1", "w2")
        and e["assigned_ms"] < stopped_ms
    ]
    assert moved, published
    last_owner = {e["partition"]: e["to_instance"] for e in published}
    assert "w1" not in last_owner.values(), published
