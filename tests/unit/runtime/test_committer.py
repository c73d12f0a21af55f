"""The commit protocol on the in-memory cluster: what reaches Kafka, in which order,
and what a failed delivery does (at-least-once unless said otherwise)."""

from __future__ import annotations

import random

import orjson
import pytest
from confluent_kafka import KafkaError

from fakes import FakeCluster, WorkerThread, wait_for
from keyshift import App
from keyshift.errors import BrokerError
from keyshift.runtime.worker import WorkerState
from keyshift.state.changelog import MARKER_HEADER, MARKER_KEY

pytestmark = pytest.mark.unit

CHANGELOG = "wc--counts-changelog"


def make_app(guarantee: str = "at_least_once", **settings: object) -> App:
    settings.setdefault("commit_interval_ms", 20)
    app = App("wc", brokers="fake:1", state="memory://one", guarantee=guarantee, **settings)
    app.stream("words").count(store="counts").to("totals")
    return app


def feed(cluster: FakeCluster, words: list[str], topic: str = "words") -> None:
    producer = cluster.clients().producer({})
    for i, word in enumerate(words):
        producer.produce(
            topic, orjson.dumps(word), word.encode(), partition=i % cluster.partitions(topic)
        )
    producer.flush()


def committed(cluster: FakeCluster, topic: str = "words") -> bool:
    return all(
        cluster.offsets.get(("wc", topic, p), 0) >= cluster.high(topic, p)
        for p in range(cluster.partitions(topic))
    )


def markers(cluster: FakeCluster) -> list[int]:
    """Positions in the append order of every changelog marker."""
    return [
        i
        for i, (topic, partition, offset) in enumerate(cluster.appended)
        if topic == CHANGELOG and cluster.logs[topic][partition][offset].key == MARKER_KEY
    ]


def test_no_marker_is_written_before_the_outputs_it_covers_are_delivered() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 4)
    cluster.create_topic("totals", 4)
    cluster.shuffle = random.Random(7)  # records reach partitions out of order
    feed(cluster, [f"w{i % 8}" for i in range(200)])  # few keys: short changelogs
    # Commits right after the batch: outputs are still in flight.
    with WorkerThread(make_app(commit_interval_ms=1).worker(clients=cluster.clients())):
        assert wait_for(lambda: committed(cluster))
    outputs = [i for i, (topic, _, _) in enumerate(cluster.appended) if topic == "totals"]
    assert len(outputs) == 200
    assert markers(cluster) and min(markers(cluster)) > max(outputs)


def test_markers_carry_the_header_and_their_commits_first_offset() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    feed(cluster, ["a", "b", "a"])
    with WorkerThread(make_app().worker(clients=cluster.clients())):
        assert wait_for(lambda: committed(cluster))
    records = cluster.records(CHANGELOG)
    marker = [m for m in records if m.key() == MARKER_KEY][0]
    assert (MARKER_HEADER, b"2") in (marker.headers() or [])
    stamp = orjson.loads(marker.value())
    assert stamp["fo"] == records[0].offset() and stamp["in"] == 3


def test_an_output_its_topic_refuses_goes_to_the_dead_letter_topic_and_nothing_is_lost() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker):
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        # Smaller than the limit read at start: refused only at delivery.
        cluster.configs["totals"]["max.message.bytes"] = "40"
        feed(cluster, ["x" * 100, "hello"])
        assert wait_for(lambda: committed(cluster))
    assert [m.key() for m in cluster.records("totals")] == [b"hello"]
    (dead,) = cluster.records("wc--dlq")
    headers = dict(dead.headers() or [])
    assert dead.key() == b"x" * 100 and headers["ks.stage"] == b"deliver"
    assert b"MSG_SIZE_TOO_LARGE" in headers["ks.error"] or b"too large" in headers["ks.error"]
    assert headers["ks.topic"] == b"totals"
    assert worker.metrics.dead_letters == 1


def test_an_output_larger_than_its_topic_takes_is_dead_lettered_with_its_input() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    cluster.create_topic("totals", 1, **{"max.message.bytes": "600"})
    feed(cluster, ["y" * 500, "ok"])
    with WorkerThread(make_app().worker(clients=cluster.clients())):
        assert wait_for(lambda: committed(cluster))
    assert [m.key() for m in cluster.records("totals")] == [b"ok"]
    (dead,) = cluster.records("wc--dlq")
    headers = dict(dead.headers() or [])
    assert headers["ks.stage"] == b"produce" and headers["ks.offset"] == b"0"
    assert dead.value() == orjson.dumps("y" * 500)


def test_a_delivery_failure_that_is_not_the_records_fails_the_commit_before_any_write() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        cluster.delete_topic("totals")  # UNKNOWN_TOPIC_OR_PART: the cluster's fault
        feed(cluster, ["a"])
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, BrokerError)
    assert "delivery failed" in str(running.error)
    assert not [m for m in cluster.records(CHANGELOG) if m.key() == MARKER_KEY]
    assert cluster.offsets.get(("wc", "words", 0)) is None
    assert cluster.records("wc--dlq") == []
    backend = cluster.store("memory://one").partition("wc", "counts", 0)
    assert backend.read_stamp() is None and backend.data == {}


def test_a_failed_dead_letter_fails_the_commit() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        cluster.configs["totals"]["max.message.bytes"] = "40"
        cluster.delete_topic("wc--dlq")
        feed(cluster, ["x" * 100])
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, BrokerError)
    assert cluster.offsets.get(("wc", "words", 0)) is None


def test_an_infrastructure_produce_error_is_not_blamed_on_the_record() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        (main,) = [p for p in cluster.producers if p.config.get("client.id") == "wc-producer"]
        # The output cannot be sent for a reason that is not its own; the
        # dead-letter topic would take it.
        main.refuse_topics["totals"] = KafkaError(KafkaError._TRANSPORT, "broker down")
        feed(cluster, ["a"])
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, BrokerError)
    assert "wc--dlq" not in cluster.logs or cluster.records("wc--dlq") == []
    assert worker.metrics.dead_letters == 0
