"""Live scaling and crash recovery with state migration (real Kafka, Redis, processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from kafkautil import (
    children,
    create_topic,
    expected_counts,
    final_counts,
    keyshift_cmd,
    produce_json,
    read_topic,
    sentences,
    stop,
    values_by_key,
    wait_for,
    write_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STRATEGIES = ["handoff", "stop-and-copy", "progressive", "replay"]


def _events(brokers: str, app_id: str) -> list[dict[str, object]]:
    return [orjson.loads(v) for _, v, _ in read_topic(brokers, f"{app_id}--events", idle_s=1.0)
            if v is not None]


def _control(brokers: str, app_id: str) -> list[dict[str, object]]:
    """The app's control topic: how its workers coordinated joins and leaves."""
    return [orjson.loads(v) for _, v, _ in read_topic(brokers, f"{app_id}--control", idle_s=1.0)
            if v is not None]


def _converged(brokers: str, sink: str, expected: dict[str, int]) -> bool:
    return final_counts(read_topic(brokers, sink, idle_s=0.5)) == expected


def _strictly_increasing(brokers: str, sink: str) -> None:
    for key, seq in values_by_key(read_topic(brokers, sink)).items():
        assert all(a < b for a, b in zip(seq, seq[1:], strict=False)), (key, seq)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Every sandbox Redis is a peer: state moves only between configured servers.
    env = dict(os.environ, PYTHONPATH=str(tmp_path), KEYSHIFT_HOME=str(tmp_path / "home"),
               KEYSHIFT_PEERS=os.environ.get("KEYSHIFT_REDIS_URLS", ""))
    env.update(extra)
    return env


def _spawn(
    args: list[str], tmp_path: Path, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scale_1_3_1_mid_stream(strategy, guarantee, brokers, admin, redis_urls, unique,
                                tmp_path: Path):
    if strategy != "handoff" and len(redis_urls) < 3:
        pytest.skip("needs 3 Redis servers (keyshift dev up --redis-instances 2)")
    app_id, source, sink = unique("scale"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    data = sentences(15000)
    ref = write_app(tmp_path, "scaleapp", app_id, source, sink, guarantee)
    states = [redis_urls[0]] if strategy == "handoff" else redis_urls[:3]
    mode = "auto" if strategy in ("handoff", "progressive") else strategy
    env = _env(tmp_path, KEYSHIFT_MIGRATION=mode)
    log = tmp_path / "run.log"
    state_args = [a for url in states for a in ("--state", url)]
    sup = _spawn(keyshift_cmd("run", ref, "--instances", "1", *state_args), tmp_path, log, env)
    producer = threading.Thread(target=produce_json, args=(brokers, source, data),
                                kwargs={"rate": 1200})
    try:
        assert wait_for(lambda: len(children(sup.pid)) == 1, 30)
        time.sleep(4)
        producer.start()
        time.sleep(2)
        for n, pause in ((3, 6), (1, 0)):
            subprocess.run(keyshift_cmd("scale", ref, "--instances", str(n)), cwd=tmp_path,
                           env=env, check=True, capture_output=True, timeout=30)
            assert wait_for(lambda n=n: len(children(sup.pid)) == n, 60), log.read_text()[-3000:]
            time.sleep(pause)
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: _converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        assert stop(sup, 120) == 0
    # The workers coordinated each step over the control topic: the two the
    # scale-out started joined once the running one had committed ahead of it;
    # the two the scale-in stopped made their last commits before either left.
    # Exactly three processes joined: no worker failed and was restarted on the
    # way (a restart would also converge, and hide the failure).
    control = _control(brokers, app_id)
    joins = [m for m in control if m["kind"] == "join"]
    assert len(joins) == 3, control
    acked = {m["about"] for m in control if m["kind"] == "ack"}
    assert {m["incarnation"] for m in joins[1:]} <= acked, control
    leavers = [m["incarnation"] for m in control if m["kind"] == "leave"]
    assert len(leavers) == 3, control  # two in the scale-in, the last one at the end
    order = [(m["kind"], m["incarnation"]) for m in control]
    first_two = leavers[:2]
    assert max(order.index(("last", i)) for i in first_two) < min(
        order.index(("bye", i)) for i in first_two), order
    if guarantee == "exactly_once":
        _strictly_increasing(brokers, sink)
    moved = [e for e in _events(brokers, app_id) if e["from_instance"] not in (None,
             e["to_instance"])]
    assert moved, "no migration event for a task that changed owner"
    assert {e["strategy"] for e in moved} == {strategy}, moved
    if strategy in ("stop-and-copy", "progressive"):
        assert sum(int(e["keys"]) for e in moved) > 0


def _two_workers(ref: str, urls: list[str], tmp_path: Path, env: dict[str, str]):
    log = tmp_path / "workers.log"
    env = dict(env, KEYSHIFT_PEERS=",".join([env.get("KEYSHIFT_PEERS", ""), *urls]).strip(","))
    return [
        _spawn(keyshift_cmd("worker", ref, "--instance-id", f"w{i}", "--state", urls[i]),
               tmp_path, log, env)
        for i in range(2)
    ], log


def _count_app(tmp_path: Path, module: str, app_id: str, source: str, sink: str) -> str:
    """A single-stage keyed count: every task is stateful, so each worker owns state."""
    (tmp_path / f"{module}.py").write_text(
        "from keyshift import App\n"
        f"app = App({app_id!r})\n"
        f"app.stream({source!r}).count(store='counts').to({sink!r})\n"
    )
    return f"{module}:app"


def _keys(n: int) -> list[str]:
    return [f"user-{(i * 7) % 97:02d}" for i in range(n)]


def _produce_keys(brokers: str, topic: str, keys: list[str], rate: float) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    for key in keys:
        producer.produce(topic, b"1", key.encode())
        producer.poll(0)
        time.sleep(1 / rate)
    producer.flush(30)


def _counts(keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


@pytest.fixture
def private_redis(tmp_path: Path):
    """A redis-server owned by the test, so it can be stopped."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                           capture_output=True).stdout.strip() == b"PONG",
                    10, 0.1)
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.parametrize("keep_redis", [True, False], ids=["transfer", "replay"])
def test_kill9_with_per_instance_redis(keep_redis, brokers, admin, redis_url, private_redis,
                                       unique, tmp_path: Path):
    redis_proc, victim_url = private_redis
    app_id, source, sink = unique("k9"), unique("events"), unique("counts")
    create_topic(admin, source, 4)
    data = _keys(12000)
    ref = _count_app(tmp_path, "k9app", app_id, source, sink)
    env = _env(tmp_path)
    (survivor, victim), log = _two_workers(ref, [redis_url, victim_url], tmp_path, env)
    producer = threading.Thread(target=_produce_keys, args=(brokers, source, data, 1500))
    try:
        time.sleep(6)
        producer.start()
        time.sleep(3)
        killed_ms = time.time() * 1000
        victim.kill()
        victim.wait()
        if not keep_redis:
            redis_proc.kill()
            redis_proc.wait()
        producer.join()
        expected = _counts(data)
        assert wait_for(lambda: _converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        stop(survivor)
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    moved = [e for e in _events(brokers, app_id) if e["from_instance"] == "w1"
             and e["to_instance"] == "w0" and e["assigned_ms"] > killed_ms]
    assert moved, log.read_text()[-3000:]
    assert {e["strategy"] for e in moved} == ({"progressive"} if keep_redis else {"replay"})


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_zombie_is_fenced(guarantee, brokers, admin, redis_urls, unique, tmp_path: Path):
    """Under exactly-once the zombie's open transaction is also aborted by the
    broker (transaction timeout), so none of its late outputs become visible."""
    app_id, source, sink = unique("zombie"), unique("events"), unique("counts")
    create_topic(admin, source, 4)
    data = _keys(12000)
    ref = _count_app(tmp_path, "zapp", app_id, source, sink)
    urls = [redis_urls[0], redis_urls[1 % len(redis_urls)]]
    env = _env(tmp_path, KEYSHIFT_GUARANTEE=guarantee)
    (survivor, zombie), log = _two_workers(ref, urls, tmp_path, env)
    # The producer outlives the stop, so the rightful owners write after the zombie.
    producer = threading.Thread(target=_produce_keys, args=(brokers, source, data, 500))
    try:
        time.sleep(6)
        producer.start()
        time.sleep(2)
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(16)  # past the 10 s session timeout: its tasks move to the survivor
        zombie.send_signal(signal.SIGCONT)
        producer.join()
        expected = _counts(data)
        assert wait_for(lambda: _converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        stop(survivor)
        stop(zombie)
    text = log.read_text()
    assert "fenced" in text, text[-4000:]
    if guarantee == "exactly_once":
        _strictly_increasing(brokers, sink)


def test_progressive_resumes_before_copy_finishes(brokers, admin, redis_urls, unique,
                                                  tmp_path: Path):
    """Processing restarts at once; keys fetched on demand are correct (exact counts)."""
    if len(redis_urls) < 2:
        pytest.skip("needs 2 Redis servers")
    app_id, source, sink = unique("prog"), unique("events"), unique("counts")
    create_topic(admin, source, 2)
    keys = [f"user-{i:05d}" for i in range(40000)]
    (tmp_path / "progapp.py").write_text(
        "from keyshift import App\n"
        f"app = App({app_id!r})\n"
        f"app.stream({source!r}).count(store='counts').to({sink!r})\n"
    )
    from confluent_kafka import Producer

    def send(batch: list[str], rate: float = 0.0) -> None:
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        for key in batch:
            producer.produce(source, b"1", key.encode())
            producer.poll(0)
            if rate:
                time.sleep(1 / rate)
        producer.flush(30)

    expected: dict[str, int] = {}
    for key in keys:
        expected[key] = expected.get(key, 0) + 1
    send(keys)
    env = _env(tmp_path)
    log = tmp_path / "workers.log"
    first = _spawn(keyshift_cmd("worker", "progapp:app", "--instance-id", "p0",
                                "--state", redis_urls[0]), tmp_path, log, env)
    second = None
    try:
        assert wait_for(lambda: _converged(brokers, sink, expected), 120), log.read_text()[-3000:]
        hot = keys[::10] * 2  # input keeps flowing while the state moves
        for key in hot:
            expected[key] += 1
        feeder = threading.Thread(target=send, args=(hot, 1000))
        feeder.start()
        time.sleep(1)
        second = _spawn(keyshift_cmd("worker", "progapp:app", "--instance-id", "p1",
                                     "--state", redis_urls[1]), tmp_path, log, env)
        feeder.join()
        assert wait_for(lambda: _converged(brokers, sink, expected), 120), log.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
    moved = [e for e in _events(brokers, app_id) if e["from_instance"] == "p0"
             and e["to_instance"] == "p1"]
    assert len(moved) == 1, moved
    event = moved[0]
    assert event["strategy"] == "progressive"
    assert int(event["keys"]) > 10000  # the background copy moved most of the state
    assert int(event["fetched_on_demand"]) > 0  # the first batches were served on demand
    copy_done = int(event["assigned_ms"]) + int(event["duration_ms"])
    assert int(event["first_record_ms"]) < copy_done  # processing resumed before the copy ended
