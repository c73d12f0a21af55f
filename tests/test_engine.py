"""End-to-end tests of the core engine against the real broker and Redis."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import ConfigResource

from kafkautil import (
    children,
    create_topic,
    expected_counts,
    final_counts,
    group_config,
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

pytestmark = pytest.mark.integration

GUARANTEES = ["at_least_once", "exactly_once"]


def _converged(brokers: str, sink: str, expected: dict[str, int]) -> bool:
    return final_counts(read_topic(brokers, sink, idle_s=0.5)) == expected


def _assert_strictly_increasing(brokers: str, sink: str) -> None:
    for key, seq in values_by_key(read_topic(brokers, sink, read_committed=True)).items():
        assert all(a < b for a, b in zip(seq, seq[1:], strict=False)), (key, seq)


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
        assert wait_for(lambda: _converged(brokers, sink, expected), 90), (
            (tmp_path / "worker.log").read_text()[-3000:]
        )
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
        _assert_strictly_increasing(brokers, sink)
    if protocol == "consumer":
        # The worker set its group's KIP-848 timeouts and turned off assignment batching.
        group = group_config(admin, app_id)
        assert group["consumer.assignment.interval.ms"] == "0"
        assert group["consumer.session.timeout.ms"] == "10000"
        assert group["consumer.heartbeat.interval.ms"] == "50"
        assert "group configs set" in (tmp_path / "worker.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("guarantee", "protocol"),
    [("at_least_once", "classic"), ("exactly_once", "classic"), ("exactly_once", "consumer")],
)
def test_kill9_worker_mid_stream(guarantee, protocol, brokers, admin, unique, tmp_path: Path):
    """Exact counts after a kill -9, also under KIP-848 (where the dead member's
    partitions move once the group session timeout keyshift set has passed)."""
    app_id, source, sink = unique("crash"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    data = sentences(20000)
    ref = write_app(tmp_path, "crashapp", app_id, source, sink, guarantee,
                    group_protocol=protocol)
    sup = spawn(keyshift_cmd("run", ref, "--instances", "2"), tmp_path, tmp_path / "run.log")
    producer = threading.Thread(
        target=produce_json, args=(brokers, source, data), kwargs={"rate": 2500}
    )
    try:
        assert wait_for(lambda: len(children(sup.pid)) == 2, 30)
        time.sleep(4)  # let both workers join and process
        producer.start()
        time.sleep(3)
        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: _converged(brokers, sink, expected), 150), (
            (tmp_path / "run.log").read_text()[-4000:]
        )
        assert victim not in children(sup.pid)
        assert "exited with -9" in (tmp_path / "run.log").read_text()
    finally:
        assert stop(sup, 90) == 0
    if guarantee == "exactly_once":
        _assert_strictly_increasing(brokers, sink)


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
    others = []
    try:
        time.sleep(4)
        producer.start()
        time.sleep(2)
        others = [
            spawn(keyshift_cmd("worker", ref, "--instance-id", f"w{i}"), tmp_path, log)
            for i in (1, 2)
        ]
        time.sleep(6)
        assert stop(others[0]) == 0  # graceful scale-in: its tasks migrate
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: _converged(brokers, sink, expected), 120), log.read_text()[-4000:]
    finally:
        for proc in [first, *others]:
            stop(proc)
    text = log.read_text()
    assert "partitions revoked" in text and "partitions assigned" in text


def test_redis_wiped_rebuilds_from_changelog(
    brokers, admin, redis_client, unique, tmp_path: Path
):
    app_id, source, sink = unique("wipe"), unique("sentences"), unique("counts")
    create_topic(admin, source, 3)
    first, second = sentences(2000), sentences(1000, start=2000)
    produce_json(brokers, source, first)
    ref = write_app(tmp_path, "wipeapp", app_id, source, sink, "at_least_once")
    log = tmp_path / "worker.log"
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, log)
    try:
        assert wait_for(lambda: _converged(brokers, sink, expected_counts(first)), 90)
    finally:
        assert stop(proc) == 0
    for key in redis_client.scan_iter(match=f"ks:{{{app_id}:*"):
        redis_client.delete(key)
    assert not list(redis_client.scan_iter(match=f"ks:{{{app_id}:*"))
    produce_json(brokers, source, second)
    proc = spawn(keyshift_cmd("worker", ref), tmp_path, log)
    try:
        expected = expected_counts(first + second)
        assert wait_for(lambda: _converged(brokers, sink, expected), 90), log.read_text()[-3000:]
    finally:
        assert stop(proc) == 0
    assert "changelog replayed" in log.read_text()


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
        assert wait_for(lambda: _converged(brokers, sink, expected), 90)
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

    ref = write_app(tmp_path, "missingapp", unique("missing"), unique("nosuch"), "out",
                    "at_least_once")
    result = subprocess.run(
        keyshift_cmd("worker", ref), cwd=tmp_path, capture_output=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode == 1
    assert b"source topic" in result.stderr and b"does not exist" in result.stderr
