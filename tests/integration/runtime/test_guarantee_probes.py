"""The review's probes against the real broker and Redis: outputs a topic refuses,
forged markers, a poisoned locations topic, two processes with one instance id."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from fakes import WorkerThread, wait_for
from kafkautil import create_topic, read_topic
from keyshift import App
from keyshift.errors import InstanceConflict
from keyshift.migrations.locations import Location

pytestmark = pytest.mark.integration


def wordcount(app_id: str, source: str, sink: str, **settings: Any) -> App:
    app = App(app_id, commit_interval_ms=200, **settings)
    (
        app.stream(source)
        .flat_map(lambda s: s.split(" "))
        .key_by(lambda w: w)
        .count(store="counts")
        .to(sink)
    )
    return app


def produce(brokers: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = Producer({"bootstrap.servers": brokers, "message.max.bytes": 2_000_000})
    for value in values:
        producer.produce(topic, value, key)
    producer.flush(30)


def counts(brokers: str, sink: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value, _ in read_topic(brokers, sink, idle_s=0.5):
        assert key is not None and value is not None
        out[key.decode()] = orjson.loads(value)
    return out


def test_an_output_too_large_for_its_sink_is_dead_lettered_and_the_next_one_arrives(
    brokers: str,
    admin: Any,
    unique: Callable[..., str],
) -> None:
    app_id, source, sink = unique("h1"), unique("in"), unique("out")
    create_topic(admin, source, 1)
    create_topic(admin, sink, 1, **{"max.message.bytes": "200"})
    produce(brokers, source, [orjson.dumps("a" * 300), orjson.dumps("hello")])
    with WorkerThread(wordcount(app_id, source, sink).worker()) as running:
        assert wait_for(lambda: counts(brokers, sink) == {"hello": 1}, 60)
        assert wait_for(lambda: len(read_topic(brokers, f"{app_id}--dlq", idle_s=0.5)) == 1, 30)
    assert running.error is None
    # Refused before sending (the sink's limit is known): the input record is
    # dead-lettered, with where it came from and why.
    ((key, _, headers),) = read_topic(brokers, f"{app_id}--dlq")
    assert key == b"a" * 300 and headers["ks.stage"] == b"produce"
    assert headers["ks.topic"] == f"{app_id}--keyby-1-repartition".encode()
    assert sink.encode() in headers["ks.error"]


def test_an_input_word_equal_to_the_marker_key_cannot_forge_a_marker(
    brokers: str,
    admin: Any,
    redis_url: str,
    unique: Callable[..., str],
) -> None:
    app_id, source, sink = unique("h3"), unique("in"), unique("out")
    create_topic(admin, source, 1)
    produce(brokers, source, [orjson.dumps("one \u0000keyshift.stamp two"), orjson.dumps("one")])
    with WorkerThread(wordcount(app_id, source, sink).worker()) as running:
        assert wait_for(lambda: counts(brokers, sink) == {"one": 2, "two": 1}, 60)
    assert running.error is None
    (dead,) = read_topic(brokers, f"{app_id}--dlq")
    assert b"reserved" in dead[2]["ks.error"]
    # Redis loses the state: the rebuild from the changelog must not trip over it.
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"ks:{{{app_id}:*"):
            client.delete(key)
    finally:
        client.close()
    produce(brokers, source, [orjson.dumps("two")])
    with WorkerThread(wordcount(app_id, source, sink).worker()) as running:
        assert wait_for(lambda: counts(brokers, sink).get("two") == 2, 60)
    assert running.error is None
    assert counts(brokers, sink) == {"one": 2, "two": 2}


def test_garbage_and_forged_records_in_the_locations_topic_are_not_followed(
    brokers: str,
    admin: Any,
    redis_urls: list[str],
    unique: Callable[..., str],
) -> None:
    if len(redis_urls) < 2:
        pytest.skip("needs two Redis servers (keyshift dev up --redis-instances 1)")
    app_id, source, sink = unique("h2"), unique("in"), unique("out")
    create_topic(admin, source, 1)
    produce(brokers, source, [orjson.dumps("x y")])
    with WorkerThread(wordcount(app_id, source, sink, state=redis_urls[0]).worker()):
        assert wait_for(lambda: counts(brokers, sink) == {"x": 1, "y": 1}, 60)
    # Garbage, and a location naming a Redis that is not a configured peer, with
    # a planted value and stamp there.
    other = redis.Redis.from_url(redis_urls[1])
    data, meta = f"ks:{{{app_id}:counts:0}}:d", f"ks:{{{app_id}:counts:0}}:m"
    try:
        other.hset(data, "x", "1000000")
        other.hset(meta, "stamp", orjson.dumps({"in": 0, "cl": 0, "ep": 50}))
        locations = f"{app_id}--state-locations"
        producer = Producer({"bootstrap.servers": brokers})
        producer.produce(locations, b"junk", b"x")
        producer.produce(locations, b'{"epoch": 1.5}', b"counts:0")
        forged = Location("counts", 0, "attacker", redis_urls[1], 50)
        producer.produce(locations, forged.encode(), forged.key())
        producer.flush(30)
        produce(brokers, source, [orjson.dumps("x")])
        with WorkerThread(wordcount(app_id, source, sink, state=redis_urls[0]).worker()) as r:
            assert wait_for(lambda: counts(brokers, sink).get("x") == 2, 60)
        assert r.error is None
        assert other.hget(data, "x") == b"1000000"  # never read, never claimed
    finally:
        other.delete(data, meta)
        other.close()


def test_two_processes_with_one_instance_id_do_not_fence_each_other_in_turn(
    brokers: str,
    admin: Any,
    unique: Callable[..., str],
) -> None:
    app_id, source, sink = unique("m5"), unique("in"), unique("out")
    create_topic(admin, source, 2)

    def worker() -> Any:
        return wordcount(
            app_id,
            source,
            sink,
            guarantee="exactly_once",
            instance_id="same",
            static_membership=False,
        ).worker()

    with WorkerThread(worker()) as first:
        produce(brokers, source, [orjson.dumps("a")])
        assert wait_for(lambda: counts(brokers, sink) == {"a": 1}, 60)
        with WorkerThread(worker()) as second:
            deadline = time.monotonic() + 60
            while not (first.done or second.done):
                produce(brokers, source, [orjson.dumps("a")])
                assert time.monotonic() < deadline
                time.sleep(0.5)  # paces the producer: one record per half second
    failed = first if first.done and first.error else second
    assert isinstance(failed.error, InstanceConflict), (first.error, second.error)
    assert "same instance id" in str(failed.error)
