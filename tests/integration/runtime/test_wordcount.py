"""A word count end to end on the real broker and Redis, one worker process:
exact outputs and state, the dead-letter topic, a missing source topic."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import ConfigResource

from kafkautil import (
    assert_strictly_increasing,
    converged,
    create_topic,
    expected_counts,
    group_config,
    keyshift_cmd,
    produce_json,
    read_topic,
    sentences,
    spawn,
    stop,
    wait_for,
    write_app,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("guarantee", "protocol"),
    [("at_least_once", "classic"), ("exactly_once", "classic"), ("exactly_once", "consumer")],
)
def test_wordcount_end_to_end(
    guarantee, protocol, brokers, admin, redis_client, unique, tmp_path: Path
):
    app_id, source, sink = unique("wc"), unique("sentences"), unique("counts")
    create_topic(admin, source, 4)
    data = sentences(3000)
    produce_json(brokers, source, data)
    ref = write_app(tmp_path, "wcapp", app_id, source, sink, guarantee, group_protocol=protocol)
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, tmp_path / "worker.log")
    try:
        expected = expected_counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 90), (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
    finally:
        assert stop(proc) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    # State in Redis equals the outputs, and the changelog is compacted.
    state: dict[str, int] = {}
    for p in range(4):
        raw = redis_client.hgetall(f"ks:{{{app_id}:counts:{p}}}:d")
        state.update({k.decode(): orjson.loads(v) for k, v in raw.items()})
    assert state == expected
    changelog = f"{app_id}--counts-changelog"
    configs = admin.describe_configs([ConfigResource("topic", changelog)])
    for future in configs.values():
        assert future.result()["cleanup.policy"].value == "compact"
    if guarantee == "exactly_once":
        assert_strictly_increasing(brokers, sink)
    if protocol == "consumer":
        # The worker set its group's KIP-848 timeouts and turned off assignment batching.
        group = group_config(admin, app_id)
        assert group["consumer.assignment.interval.ms"] == "0"
        assert group["consumer.session.timeout.ms"] == "10000"
        assert group["consumer.heartbeat.interval.ms"] == "50"


def test_malformed_record_goes_to_dlq(brokers, admin, unique, tmp_path: Path):
    from confluent_kafka import Producer

    app_id, source, sink = unique("dlq"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    good = sentences(200)
    producer = Producer({"bootstrap.servers": brokers})
    producer.produce(source, b'{"not json', b"bad-key", partition=0)
    for i, sentence in enumerate(good):
        producer.produce(source, orjson.dumps(sentence), str(i).encode())
    producer.flush(10)
    ref = write_app(tmp_path, "dlqapp", app_id, source, sink, "at_least_once")
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, tmp_path / "worker.log")
    try:
        expected = expected_counts(good)
        assert wait_for(lambda: converged(brokers, sink, expected), 90)
    finally:
        assert stop(proc) == 0
    dead = read_topic(brokers, f"{app_id}--dlq")
    assert len(dead) == 1
    key, value, headers = dead[0]
    assert key == b"bad-key" and value == b'{"not json'
    assert headers["ks.stage"] == b"deserialize"
    assert headers["ks.error"].startswith(b"SerializationError: invalid JSON")
    assert headers["ks.topic"] == source.encode()
    assert headers["ks.partition"] == b"0" and headers["ks.offset"] == b"0"


def test_missing_source_topic_is_a_clear_startup_error(unique, tmp_path: Path):
    import subprocess

    ref = write_app(
        tmp_path, "missingapp", unique("missing"), unique("nosuch"), "out", "at_least_once"
    )
    result = subprocess.run(
        keyshift_cmd("worker", ref),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode == 1
    assert b"source topic" in result.stderr and b"does not exist" in result.stderr
