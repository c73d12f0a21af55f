"""Live scaling with state migration (real Kafka, Redis, processes): a supervisor
scaled 1 -> 3 -> 1 mid-stream under each strategy, and a progressive copy that
lets processing resume before it finishes."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from kafkautil import (
    assert_strictly_increasing,
    children,
    committed,
    control,
    converged,
    create_topic,
    events,
    expected_counts,
    group_holds,
    keyshift_cmd,
    produce_json,
    sentences,
    settled,
    spawn,
    stop,
    wait_for,
    worker_env,
    write_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STRATEGIES = ["handoff", "stop-and-copy", "progressive", "replay"]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scale_1_3_1_mid_stream(
    strategy, guarantee, brokers, admin, redis_urls, unique, tmp_path: Path
):
    if strategy != "handoff" and len(redis_urls) < 3:
        pytest.skip("needs 3 Redis servers (keyshift dev up --redis-instances 2)")
    app_id, source, sink = unique("scale"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    data = sentences(15000)
    ref = write_app(tmp_path, "scaleapp", app_id, source, sink, guarantee)
    states = [redis_urls[0]] if strategy == "handoff" else redis_urls[:3]
    mode = "auto" if strategy in ("handoff", "progressive") else strategy
    env = worker_env(tmp_path, KEYSHIFT_MIGRATION=mode)
    log = tmp_path / "run.log"
    state_args = [a for url in states for a in ("--state", url)]
    sup = spawn(keyshift_cmd("run", ref, "--instances", "1", *state_args), tmp_path, log, env)
    producer = threading.Thread(
        target=produce_json, args=(brokers, source, data), kwargs={"rate": 1200}
    )
    repartition = f"{app_id}--keyby-1-repartition"
    try:
        assert wait_for(lambda: len(children(sup.pid)) == 1, 30)
        assert wait_for(lambda: group_holds(admin, app_id, [source, repartition], 1), 60), (
            log.read_text()[-3000:]
        )
        producer.start()
        # Mid-stream: part of the input is processed before the scale-out.
        assert wait_for(lambda: committed(admin, app_id, source) >= len(data) // 6, 60)
        for n in (3, 1):
            subprocess.run(
                keyshift_cmd("scale", ref, "--instances", str(n)),
                cwd=tmp_path,
                env=env,
                check=True,
                capture_output=True,
                timeout=30,
            )
            assert wait_for(lambda n=n: len(children(sup.pid)) == n, 60), log.read_text()[-3000:]
            if n == 3:
                # The scale-out is done: every stateful task's state reached its
                # new owner, and the moved tasks processed (their events are out).
                assert wait_for(lambda: settled(brokers, admin, app_id, repartition, 3), 90), (
                    log.read_text()[-3000:]
                )
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 150), log.read_text()[-4000:]
    finally:
        assert stop(sup, 120) == 0
    # The workers coordinated each step over the control topic: the two the
    # scale-out started joined once the running one had committed ahead of it;
    # the two the scale-in stopped made their last commits before either left.
    # Exactly three processes joined: no worker failed and was restarted on the
    # way (a restart would also converge, and hide the failure).
    messages = control(brokers, app_id)
    joins = [m for m in messages if m["kind"] == "join"]
    assert len(joins) == 3, messages
    acked = {m["about"] for m in messages if m["kind"] == "ack"}
    assert {m["incarnation"] for m in joins[1:]} <= acked, messages
    leavers = [m["incarnation"] for m in messages if m["kind"] == "leave"]
    assert len(leavers) == 3, messages  # two in the scale-in, the last one at the end
    order = [(m["kind"], m["incarnation"]) for m in messages]
    first_two = leavers[:2]
    assert max(order.index(("last", i)) for i in first_two) < min(
        order.index(("bye", i)) for i in first_two
    ), order
    if guarantee == "exactly_once":
        assert_strictly_increasing(brokers, sink)
    moved = [
        e for e in events(brokers, app_id) if e["from_instance"] not in (None, e["to_instance"])
    ]
    assert moved, "no migration event for a task that changed owner"
    assert {e["strategy"] for e in moved} == {strategy}, moved
    if strategy in ("stop-and-copy", "progressive"):
        assert sum(int(e["keys"]) for e in moved) > 0


def test_progressive_resumes_before_copy_finishes(
    brokers, admin, redis_urls, unique, tmp_path: Path
):
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
                time.sleep(1 / rate)  # paces the feed: ``rate`` records a second
        producer.flush(30)

    expected: dict[str, int] = {}
    for key in keys:
        expected[key] = expected.get(key, 0) + 1
    send(keys)
    env = worker_env(tmp_path)
    log = tmp_path / "workers.log"
    first = spawn(
        keyshift_cmd("worker", "progapp:app", "--instance-id", "p0", "--state", redis_urls[0]),
        tmp_path,
        log,
        env,
    )
    second = None
    try:
        assert wait_for(lambda: converged(brokers, sink, expected), 120), log.read_text()[-3000:]
        hot = keys[::10] * 2  # input keeps flowing while the state moves
        for key in hot:
            expected[key] += 1
        feeder = threading.Thread(target=send, args=(hot, 1000))
        feeder.start()
        # The second worker joins while the hot keys are being processed.
        assert wait_for(lambda: committed(admin, app_id, source) > len(keys), 60)
        second = spawn(
            keyshift_cmd("worker", "progapp:app", "--instance-id", "p1", "--state", redis_urls[1]),
            tmp_path,
            log,
            env,
        )
        feeder.join()
        assert wait_for(lambda: converged(brokers, sink, expected), 120), log.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
    moved = [
        e
        for e in events(brokers, app_id)
        if e["from_instance"] == "p0" and e["to_instance"] == "p1"
    ]
    assert len(moved) == 1, moved
    event = moved[0]
    assert event["strategy"] == "progressive"
    assert int(event["keys"]) > 10000  # the background copy moved most of the state
    assert int(event["fetched_on_demand"]) > 0  # the first batches were served on demand
    copy_done = int(event["assigned_ms"]) + int(event["duration_ms"])
    assert int(event["first_record_ms"]) < copy_done  # processing resumed before the copy ended
