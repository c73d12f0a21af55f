"""When another process owns what this worker thinks is its own: a task claimed by
another instance, a second process with the same instance id."""

from __future__ import annotations

import orjson
import pytest

from fakes import FakeCluster, WorkerThread, wait_for
from keyshift import App
from keyshift.errors import BrokerError, InstanceConflict

pytestmark = pytest.mark.unit


def feed(cluster: FakeCluster, words: list[str]) -> None:
    producer = cluster.clients().producer({})
    for word in words:
        producer.produce("in", orjson.dumps(word), word.encode(), partition=0)
    producer.flush()


def test_a_fenced_task_is_paused_counted_and_stops_the_worker_if_it_stays() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    app = App(
        "f",
        brokers="fake:1",
        state="memory://f",
        commit_interval_ms=10,
        kafka={"session.timeout.ms": "1000"},
    )
    app.stream("in").count(store="counts").to("out")
    worker = app.worker(clients=cluster.clients())
    feed(cluster, ["a"])
    with WorkerThread(worker) as running:
        assert wait_for(lambda: cluster.offsets.get(("f", "in", 0)) == 1)
        # Another instance claims the task's state (its owner epoch goes up).
        cluster.store("memory://f").partition("f", "counts", 0).claim("other")
        feed(cluster, ["a", "a"])
        assert wait_for(lambda: worker.metrics.fenced_tasks == 1)
        assert worker.tasks == {}
        feed(cluster, ["a"])
        # Paused: fetched no more; after twice the session timeout, an error.
        assert wait_for(lambda: running.done, 10)
    assert isinstance(running.error, BrokerError)
    assert "same instance id" in str(running.error)
    assert cluster.offsets[("f", "in", 0)] == 1
    assert worker.metrics.records_in == 3  # the fenced task's batch, nothing after


def test_a_fenced_partition_lost_and_given_back_is_fetched_and_processed_again() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    app = App("f", brokers="fake:1", state="memory://f", commit_interval_ms=10)
    app.stream("in").count(store="counts").to("out")
    worker = app.worker(clients=cluster.clients())
    feed(cluster, ["a"])
    with WorkerThread(worker) as running:
        assert wait_for(lambda: cluster.offsets.get(("f", "in", 0)) == 1)
        cluster.store("memory://f").partition("f", "counts", 0).claim("other")
        feed(cluster, ["a"])
        assert wait_for(lambda: worker.metrics.fenced_tasks == 1)
        (consumer,) = [c for c in cluster.consumers if c.group_id == "f" and c.paused]
        consumer.lose([("in", 0)])  # the session expired; the group gives it back
        feed(cluster, ["a"])
        assert wait_for(lambda: cluster.offsets.get(("f", "in", 0)) == 3)
    assert running.error is None
    table = cluster.store("memory://f").partition("f", "counts", 0)
    assert table.get_many([b"a"]) == [b"3"] and not consumer.paused


def test_a_second_process_with_the_same_instance_id_stops_with_a_clear_error() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)

    def app() -> App:
        made = App(
            "x",
            brokers="fake:1",
            state="memory://x",
            commit_interval_ms=10,
            guarantee="exactly_once",
            instance_id="same",
        )
        made.stream("in").count(store="counts").to("out")
        return made

    first = app().worker(clients=cluster.clients())
    with WorkerThread(first) as running:
        feed(cluster, ["a"])
        assert wait_for(lambda: cluster.offsets.get(("x", "in", 0)) == 1)
        with WorkerThread(app().worker(clients=cluster.clients())) as second:
            feed(cluster, ["a"])
            assert wait_for(lambda: running.done)
        assert second.error is None
    assert isinstance(running.error, InstanceConflict)
    assert "same instance id" in str(running.error)
    assert InstanceConflict.exit_code == 3
