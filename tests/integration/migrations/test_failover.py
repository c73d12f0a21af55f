"""Crash recovery with state migration (real Kafka, Redis, processes): a worker
killed with its own Redis (state transferred, or replayed once that Redis is
gone too), and a paused worker (a zombie) whose tasks move while it sleeps."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from kafkautil import (
    assert_strictly_increasing,
    committed,
    converged,
    create_topic,
    events,
    group_holds,
    keyshift_cmd,
    settled,
    spawn,
    stop,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _two_workers(ref: str, urls: list[str], tmp_path: Path, env: dict[str, str]):
    log = tmp_path / "workers.log"
    env = dict(env, KEYSHIFT_PEERS=",".join([env.get("KEYSHIFT_PEERS", ""), *urls]).strip(","))
    return [
        spawn(
            keyshift_cmd("worker", ref, "--instance-id", f"w{i}", "--state", urls[i]),
            tmp_path,
            log,
            env,
        )
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
        time.sleep(1 / rate)  # paces the load: ``rate`` records a second
    producer.flush(30)


def _counts(keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


def taken_over(brokers: str, app_id: str, since_ms: float) -> list[dict[str, object]]:
    """Migration events of tasks the survivor w0 took from w1 after ``since_ms``."""
    return [
        e
        for e in events(brokers, app_id)
        if e["from_instance"] == "w1" and e["to_instance"] == "w0" and e["assigned_ms"] > since_ms
    ]


@pytest.mark.parametrize("keep_redis", [True, False], ids=["transfer", "replay"])
def test_kill9_with_per_instance_redis(
    keep_redis, brokers, admin, redis_url, private_redis, unique, tmp_path: Path
):
    victim_url = private_redis.url
    app_id, source, sink = unique("k9"), unique("events"), unique("counts")
    create_topic(admin, source, 4)
    data = _keys(12000)
    ref = _count_app(tmp_path, "k9app", app_id, source, sink)
    env = worker_env(tmp_path)
    (survivor, victim), log = _two_workers(ref, [redis_url, victim_url], tmp_path, env)
    producer = threading.Thread(target=_produce_keys, args=(brokers, source, data, 1500))
    try:
        assert wait_for(lambda: group_holds(admin, app_id, [source], 2), 60), log.read_text()[
            -3000:
        ]
        producer.start()
        # Mid-stream: both workers hold state of their own (their tasks' events are
        # out) and about a third of the input is processed when the victim dies.
        assert wait_for(lambda: settled(brokers, admin, app_id, source, 2), 60), log.read_text()[
            -3000:
        ]
        assert wait_for(lambda: committed(admin, app_id, source) >= len(data) // 3, 60)
        killed_ms = time.time() * 1000
        victim.kill()
        victim.wait()
        if not keep_redis:
            private_redis.stop()
        producer.join()
        expected = _counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        stop(survivor)
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    moved = [
        e
        for e in events(brokers, app_id)
        if e["from_instance"] == "w1" and e["to_instance"] == "w0" and e["assigned_ms"] > killed_ms
    ]
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
    env = worker_env(tmp_path, KEYSHIFT_GUARANTEE=guarantee)
    (survivor, zombie), log = _two_workers(ref, urls, tmp_path, env)
    # The producer outlives the stop, so the rightful owners write after the zombie.
    producer = threading.Thread(target=_produce_keys, args=(brokers, source, data, 500))
    try:
        assert wait_for(lambda: group_holds(admin, app_id, [source], 2), 60), log.read_text()[
            -3000:
        ]
        producer.start()
        # Both workers process: each holds state of its own (their tasks' events are out).
        assert wait_for(lambda: settled(brokers, admin, app_id, source, 2), 60), log.read_text()[
            -3000:
        ]
        stopped_ms = time.time() * 1000
        zombie.send_signal(signal.SIGSTOP)
        # Past the 10 s session timeout its tasks move to the survivor, which
        # claims their state: from then on the zombie is fenced.
        assert wait_for(lambda: taken_over(brokers, app_id, stopped_ms), 90), log.read_text()[
            -4000:
        ]
        zombie.send_signal(signal.SIGCONT)
        producer.join()
        expected = _counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        stop(survivor)
        stop(zombie)
    if guarantee == "exactly_once":
        assert_strictly_increasing(brokers, sink)
