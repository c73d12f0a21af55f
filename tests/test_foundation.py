"""The foundations every other test relies on: real Kafka, real Redis, the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from keyshift._version import __version__
from keyshift.cli import main

# ------------------------------------------------------------------ Kafka + Redis


def _create_topic(admin: Any, name: str, partitions: int = 1, **config: str) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)])
    futures[name].result(timeout=30)
    # The controller acknowledges before every broker has applied the new metadata.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        ready = topic is not None and topic.error is None
        if ready and len(topic.partitions) == partitions:
            ready = all(p.leader >= 0 for p in topic.partitions.values())
            if ready:
                return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} did not appear in the metadata within 30s")


def _delete_topic(admin: Any, name: str) -> None:
    for future in admin.delete_topics([name]).values():
        future.result(timeout=30)


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_every_redis_instance_answers(redis_urls: list[str]) -> None:
    assert len(set(redis_urls)) == len(redis_urls)
    for url in redis_urls:
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
        finally:
            client.close()


# ------------------------------------------------------------------ CLI


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [["--help"], ["dev", "--help"], ["dev", "up", "--help"], ["dev", "down", "--help"],
     ["dev", "status", "--help"], ["dev", "env", "--help"]],
)  # fmt: skip
def test_cli_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.unit
def test_cli_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.unit
def test_cli_dev_status_when_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "status"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output

    result = CliRunner().invoke(main, ["dev", "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["running"] is False and data["services"] == []


@pytest.mark.unit
def test_cli_dev_env_fails_when_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "env"])
    assert result.exit_code == 1
    assert "not running" in result.stderr and result.stdout == ""


@pytest.mark.unit
def test_cli_dev_up_reports_errors_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "up", "--kafka-version", "../../etc"])
    assert result.exit_code == 1
    assert "bad Kafka version" in result.stderr and result.stdout == ""


@pytest.mark.integration
def test_cli_dev_status_shows_the_sandbox(sandbox: Any) -> None:
    from keyshift.dev import status

    if not status().running:
        pytest.skip("the services in use are not managed by `keyshift dev`")
    result = CliRunner().invoke(main, ["dev", "status"])
    assert result.exit_code == 0, result.output
    assert "kafka-0" in result.output and "redis-0" in result.output
    assert sandbox.brokers.split(",")[0] in result.output
