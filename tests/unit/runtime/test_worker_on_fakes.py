"""A whole worker on the in-memory cluster: processing, committing, restoring."""

from __future__ import annotations

import threading

import orjson
import pytest

from fakes import FakeCluster, wait_for
from keyshift import App

pytestmark = pytest.mark.unit


def make_app(guarantee: str = "at_least_once") -> App:
    app = App(
        "wc", brokers="fake:1", state="memory://one", guarantee=guarantee, commit_interval_ms=20
    )
    app.stream("words").count(store="counts").to("totals")
    return app


def produce(cluster: FakeCluster, topic: str, words: list[str]) -> None:
    producer = cluster.clients().producer({})
    for word in words:
        producer.produce(topic, orjson.dumps(word), word.encode(), partition=0)
    producer.flush()


def test_a_worker_counts_commits_and_a_second_one_resumes_from_the_stamp() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    produce(cluster, "words", ["a", "b", "a"])
    app = make_app()
    worker = app.worker(clients=cluster.clients())
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        assert wait_for(
            lambda: "wc--counts-changelog" in cluster.logs or "wc-counts-changelog" in cluster.logs
        )
        assert wait_for(lambda: len(cluster.records("totals")) == 3)
    finally:
        worker.stop()
        runner.join(10)
    totals = [(m.key(), orjson.loads(m.value())) for m in cluster.records("totals")]
    assert totals == [(b"a", 1), (b"b", 1), (b"a", 2)]
    produce(cluster, "words", ["a"])
    second = make_app().worker(clients=cluster.clients())
    runner = threading.Thread(target=second.run)
    runner.start()
    try:
        assert wait_for(lambda: len(cluster.records("totals")) == 4)
    finally:
        second.stop()
        runner.join(10)
    assert orjson.loads(cluster.records("totals")[-1].value()) == 3
