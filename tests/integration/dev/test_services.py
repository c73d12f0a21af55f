"""The services every integration test relies on: the sandbox's Kafka and Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from kafkautil import wait_for

pytestmark = pytest.mark.integration


def _create_topic(admin: Any, name: str, partitions: int = 1, **config: str) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)])
    futures[name].result(timeout=30)

    # The controller acknowledges before every broker has applied the new metadata.
    def ready() -> bool:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        return (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        )

    assert wait_for(ready, 30, 0.1), f"topic {name} did not appear in the metadata within 30s"


def _delete_topic(admin: Any, name: str) -> None:
    for future in admin.delete_topics([name]).values():
        future.result(timeout=30)


def test_produce_consume_round_trip(admin: Any, brokers: str, unique: Callable[..., str]) -> None:
    topic = unique()
    _create_topic(admin, topic, partitions=3)
    try:
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
        sent = [(f"key-{i % 4}".encode(), f"value-{i}".encode()) for i in range(30)]
        for key, value in sent:
            producer.produce(topic, key=key, value=value)
        assert producer.flush(30) == 0

        consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": unique("g"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })  # fmt: skip
        received: list[tuple[bytes, bytes, int]] = []
        try:
            consumer.subscribe([topic])
            for _ in range(60):
                for msg in consumer.consume(num_messages=100, timeout=1.0):
                    assert msg.error() is None, msg.error()
                    received.append((msg.key(), msg.value(), msg.partition()))
                if len(received) >= len(sent):
                    break
        finally:
            consumer.close()
        assert sorted((k, v) for k, v, _ in received) == sorted(sent)
        # Same key, same partition, and per-key order is kept.
        for key in {k for k, _ in sent}:
            mine = [(v, p) for k, v, p in received if k == key]
            assert len({p for _, p in mine}) == 1
            assert [v for v, _ in mine] == [v for k, v in sent if k == key]
    finally:
        _delete_topic(admin, topic)


def test_compacted_topic_is_created(admin: Any, unique: Callable[..., str]) -> None:
    topic = unique("changelog")
    _create_topic(admin, topic, partitions=2, **{"cleanup.policy": "compact"})
    try:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        configs = admin.describe_configs([resource])[resource].result(timeout=30)
        assert configs["cleanup.policy"].value == "compact"
        metadata = admin.list_topics(topic, timeout=10)
        assert len(metadata.topics[topic].partitions) == 2
    finally:
        _delete_topic(admin, topic)


def test_redis_pipeline_round_trip(redis_client: redis.Redis, unique: Callable[..., str]) -> None:
    prefix = unique("k")
    keys = [f"{prefix}:{i}" for i in range(100)]
    try:
        pipe = redis_client.pipeline(transaction=True)
        for i, key in enumerate(keys):
            pipe.set(key, i.to_bytes(4, "big"))
        pipe.hset(f"{prefix}:hash", mapping={"a": b"1", "b": b"2"})
        pipe.incrby(f"{prefix}:counter", 5)
        results = pipe.execute()
        assert results[:100] == [True] * 100 and results[-1] == 5

        pipe = redis_client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        pipe.hgetall(f"{prefix}:hash")
        values = pipe.execute()
        assert [int.from_bytes(v, "big") for v in values[:100]] == list(range(100))
        assert values[-1] == {b"a": b"1", b"b": b"2"}
    finally:
        redis_client.delete(*keys, f"{prefix}:hash", f"{prefix}:counter")


def test_every_redis_instance_answers(redis_urls: list[str]) -> None:
    assert len(set(redis_urls)) == len(redis_urls)
    for url in redis_urls:
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
        finally:
            client.close()
