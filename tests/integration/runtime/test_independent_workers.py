"""Independent workers (no supervisor, nothing shared but Kafka and Redis URLs)
scaled out and in by starting processes and sending SIGTERM, as containers are."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kafkautil import (
    committed,
    create_topic,
    events,
    expected_counts,
    final_counts,
    group_assignment,
    group_holds,
    keyshift_cmd,
    produce_json,
    read_topic,
    sentences,
    settled,
    wait_for,
    write_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A stopped worker's partitions run again elsewhere well before the session
#: timeout (10 s) would have moved them.
HANDOVER_MS = 4000


class Fleet:
    """``keyshift worker`` processes, one KEYSHIFT_HOME each."""

    def __init__(self, tmp_path: Path, ref: str, env: dict[str, str]) -> None:
        self.tmp_path, self.ref, self.env = tmp_path, ref, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log = tmp_path / "workers.log"

    def start(self, *names: str) -> None:
        for name in names:
            env = dict(self.env, KEYSHIFT_HOME=str(self.tmp_path / f"home-{name}"))
            with self.log.open("ab") as out:
                self.procs[name] = subprocess.Popen(
                    keyshift_cmd("worker", self.ref, "--instance-id", name),
                    cwd=self.tmp_path,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

    def stop(self, *names: str) -> float:
        """SIGTERM ``names`` together; returns when (ms) they were signalled."""
        when = time.time() * 1000
        for name in names:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in names:
            assert self.procs.pop(name).wait(60) == 0, self.tail()
        return when

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("membership", ["dynamic", "static"])
def test_independent_workers_scale_out_and_in_exactly(
    membership: str,
    brokers: str,
    admin: Any,
    redis_url: str,
    unique: Any,
    tmp_path: Path,
) -> None:
    app_id, source, sink = unique("ind"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    ref = write_app(tmp_path, "indapp", app_id, source, sink, "at_least_once")
    # Stable ids with static membership: only the classic protocol lets a
    # static member leave for good (librdkafka sends epoch -2 under KIP-848).
    protocol = "classic" if membership == "static" else "consumer"
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path),
        KEYSHIFT_STATE=redis_url,
        KEYSHIFT_GROUP_PROTOCOL=protocol,
        KEYSHIFT_STATIC_MEMBERSHIP=str(membership == "static").lower(),
    )
    data = sentences(12000)
    fleet = Fleet(tmp_path, ref, env)
    producer = threading.Thread(
        target=produce_json, args=(brokers, source, data), kwargs={"rate": 1000}
    )
    try:
        fleet.start("w0")
        assert wait_for(
            lambda: any(e["to_instance"] == "w0" for e in events(brokers, app_id)), 60
        ), fleet.tail()
        producer.start()
        # Mid-stream: part of the input is processed before the group grows.
        assert wait_for(lambda: committed(admin, app_id, source) >= len(data) // 6, 60)
        fleet.start("w1", "w2")
        # All three in the group, each stateful task's state in place at its holder
        # (the broker's assignor may leave a worker with no stateful task).
        repartition = f"{app_id}--keyby-1-repartition"
        assert wait_for(lambda: settled(brokers, admin, app_id, repartition, 3), 60), fleet.tail()
        # The three process together before two of them stop.
        mark = committed(admin, app_id, source)
        assert wait_for(lambda: committed(admin, app_id, source) >= min(mark + 1000, len(data)), 60)
        held = group_assignment(admin, app_id)
        stateful_away = {
            p for name in ("w1", "w2") for t, p in held.get(name, ()) if t == repartition
        }
        stopped_ms = fleet.stop("w1", "w2")
        # Every partition is w0's again at once, not after a session timeout (a
        # static member that does not leave the group keeps its partitions).
        assert wait_for(lambda: group_holds(admin, app_id, [source, repartition], 1), 30, 0.1)
        assert time.time() * 1000 - stopped_ms < HANDOVER_MS, group_assignment(admin, app_id)
        producer.join()
        expected = expected_counts(data)
        assert wait_for(
            lambda: final_counts(read_topic(brokers, sink, idle_s=0.5)) == expected, 120
        ), fleet.tail()
    finally:
        fleet.stop(*list(fleet.procs))
        fleet.close()
    back = {
        e["partition"]: e
        for e in events(brokers, app_id)
        if e["to_instance"] == "w0" and e["assigned_ms"] > stopped_ms
    }
    # The stateful tasks the stopped workers held came back to w0 with their state.
    assert set(back) == stateful_away, (back, stateful_away)
    assert all(e["from_instance"] in ("w1", "w2") for e in back.values()), back
    assert all(e["assigned_ms"] - stopped_ms < HANDOVER_MS for e in back.values()), back
