"""The DS2 autoscaler against workers under the local supervisor (`keyshift run`):
each record costs a worker 2 ms of busy time, so one instance serves about 450
records/s. A load step from 100/s to 1,000/s scales the job out, the drop back
to 50/s scales it in, and within each load phase the count never turns back."""

from __future__ import annotations

import importlib
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from kafkautil import children, create_topic, keyshift_cmd, spawn, stop, wait_for, worker_env
from keyshift.orchestration.autoscale import Bounds, Decision, DS2Policy
from keyshift.orchestration.autoscaler import Autoscaler, JobProbe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6


class Load:
    """Produces keyed records at a rate that can be changed while it runs."""

    def __init__(self, brokers: str, topic: str) -> None:
        self.rate = 0.0
        self._producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set():
            tick = time.monotonic()
            for _ in range(int(self.rate / 10)):
                self._producer.produce(self._topic, orjson.dumps(1), f"k{sent % 500}".encode())
                sent += 1
            self._producer.poll(0)
            self._stop.wait(max(0.0, 0.1 - (time.monotonic() - tick)))
        self._producer.flush(30)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def write_costly_app(directory: Path, app_id: str, source: str, sink: str) -> str:
    code = f"""
    import time
    from keyshift import App

    def costly(value):
        time.sleep(0.002)
        return value

    # Small batches: a batch of costly records holds the loop (commits, rate
    # reports) for as long as it takes.
    app = App({app_id!r}, commit_interval_ms=500, batch_size=100)
    app.stream({source!r}).map(costly).count(store="counts").to({sink!r})
    """
    (directory / "costlyapp.py").write_text(textwrap.dedent(code))
    return "costlyapp:app"


def decide_until(scaler: Autoscaler, done: Callable[[Decision], bool], limit: int) -> list[int]:
    """Decisions until ``done`` holds for one (at most ``limit``): their counts."""
    counts = []
    for _ in range(limit):
        decision = scaler.step()
        counts.append(decision.instances)
        if done(decision):
            return counts
    raise AssertionError(f"not done after {limit} decisions: {counts}")


def monotonic(counts: list[int], start: int) -> bool:
    steps = [b - a for a, b in zip([start, *counts], counts, strict=False) if b != a]
    return all(s > 0 for s in steps) or all(s < 0 for s in steps)


def test_ds2_scales_out_on_a_load_step_and_back_in_without_flapping(
    brokers: str, admin: Any, unique: Callable[..., str], tmp_path: Path, monkeypatch: Any
) -> None:
    app_id, source, sink = unique("auto"), unique("in"), unique("out")
    create_topic(admin, source, PARTITIONS)
    ref = write_costly_app(tmp_path, app_id, source, sink)
    env = worker_env(tmp_path)
    monkeypatch.setenv("KEYSHIFT_HOME", env["KEYSHIFT_HOME"])  # where the supervisor is found
    log = tmp_path / "run.log"
    sup = spawn(keyshift_cmd("run", ref, "--instances", "1"), tmp_path, log, env)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = importlib.import_module("costlyapp").app
    probe = JobProbe(job.settings, job.topology)
    scaler = Autoscaler(probe, DS2Policy(Bounds(1, PARTITIONS)), backend="local", window_s=12.0)
    try:
        assert wait_for(lambda: len(children(sup.pid)) == 1, 30), log.read_text()[-3000:]
        assert wait_for(lambda: len(probe.members()) == 1, 60), log.read_text()[-3000:]
        with Load(brokers, source) as load:
            load.rate = 100
            first = decide_until(scaler, lambda d: d.observation.processing_rate > 0, 6)
            assert first[-1] == 1, (first, scaler.decisions[-1].reason)
            load.rate = 1000
            out = decide_until(scaler, lambda d: not d.changes and d.instances > 1, 6)
            assert out[-1] >= 3, [d.reason for d in scaler.decisions]
            assert monotonic(out, 1), out
            assert len(children(sup.pid)) == out[-1]
            load.rate = 50
            back = decide_until(scaler, lambda d: not d.changes and d.instances == 1, 6)
            assert monotonic(back, out[-1]), back
            assert wait_for(lambda: len(children(sup.pid)) == 1, 60)
        changes = sum(1 for d in scaler.decisions if d.changes)
        assert changes <= 4, [d.reason for d in scaler.decisions]
    finally:
        probe.close()
        assert stop(sup, 90) == 0, log.read_text()[-3000:]
