"""A Redis server that restarts empty under a running worker: the worker must not
carry on from nothing (its counts would start again at zero). It stops with
:class:`StateLostError`; the task's next owner replays the changelog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
import redis
from confluent_kafka import Producer

from fakes import WorkerThread, wait_for
from kafkautil import RedisServer, assert_strictly_increasing, create_topic, read_topic
from keyshift import App
from keyshift.errors import StateLostError

pytestmark = pytest.mark.integration


def wordcount(app_id: str, source: str, sink: str, state: str, guarantee: str) -> App:
    app = App(app_id, commit_interval_ms=200, state=state, guarantee=guarantee)
    (
        app.stream(source)
        .flat_map(lambda s: s.split(" "))
        .key_by(lambda w: w)
        .count(store="counts")
        .to(sink)
    )
    return app


def produce(brokers: str, topic: str, sentences: list[str]) -> None:
    producer = Producer({"bootstrap.servers": brokers})
    for sentence in sentences:
        producer.produce(topic, orjson.dumps(sentence))
    producer.flush(30)


def counts(brokers: str, sink: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value, _ in read_topic(brokers, sink, idle_s=0.5, read_committed=True):
        assert key is not None and value is not None
        out[key.decode()] = orjson.loads(value)
    return out


def committed_count(url: str, app_id: str, key: bytes) -> int | None:
    """``key``'s count as committed to Redis (partition 0 of store ``counts``)."""
    client = redis.Redis.from_url(url)
    try:
        value = client.hget(f"ks:{{{app_id}:counts:0}}:d", key)
    finally:
        client.close()
    return None if value is None else int(cast("bytes", value))


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_redis_restarted_empty_stops_its_worker_and_the_next_owner_replays(
    brokers: str,
    admin: Any,
    unique: Callable[..., str],
    private_redis: RedisServer,
    guarantee: str,
) -> None:
    app_id, source, sink = unique("lost"), unique("in"), unique("out")
    create_topic(admin, source, 1)
    produce(brokers, source, ["a b"] * 5)
    worker = wordcount(app_id, source, sink, private_redis.url, guarantee).worker()
    with WorkerThread(worker) as running:
        assert wait_for(lambda: counts(brokers, sink) == {"a": 5, "b": 5}, 60)
        assert wait_for(lambda: committed_count(private_redis.url, app_id, b"a") == 5, 60)
        private_redis.restart_empty()
        produce(brokers, source, ["a c"] * 3)
        assert wait_for(lambda: running.done, 60), "the worker carried on from empty state"
    assert isinstance(running.error, StateLostError)

    successor = wordcount(app_id, source, sink, private_redis.url, guarantee).worker()
    with WorkerThread(successor) as running:
        assert wait_for(lambda: counts(brokers, sink) == {"a": 8, "b": 5, "c": 3}, 90)
    assert running.error is None
    if guarantee == "exactly_once":
        assert_strictly_increasing(brokers, sink)  # no count started again from 1
    else:  # outputs may repeat, but no count was rebuilt from zero
        a_values = [orjson.loads(v) for k, v, _ in read_topic(brokers, sink) if k == b"a"]
        assert a_values[:5] == [1, 2, 3, 4, 5] and a_values[-1] == 8
        assert all(value > 5 for value in a_values[5:]), a_values
