"""Helpers for integration tests: topics, producing, reading back, worker processes."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from keyshift.runtime.kafka import read_topic as keyshift_read_topic

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def create_topic(admin: AdminClient, name: str, partitions: int, **config: str) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)])
    for future in futures.values():
        future.result(30)


def group_config(admin: AdminClient, group: str) -> dict[str, str]:
    """A consumer group's configs (KIP-848 group configs), by name."""
    futures = admin.describe_configs([ConfigResource(ResourceType.GROUP, group)])
    return {name: entry.value for f in futures.values() for name, entry in f.result().items()}


def sentences(n: int, start: int = 0) -> list[str]:
    return [
        " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 4))
        for i in range(start, start + n)
    ]


def expected_counts(items: Iterable[str]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for sentence in items:
        counts.update(sentence.split())
    return dict(counts)


def produce_json(brokers: str, topic: str, values: Iterable[object], *, rate: float = 0.0) -> None:
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    sleep = 1.0 / rate if rate else 0.0
    for i, value in enumerate(values):
        producer.produce(topic, orjson.dumps(value), str(i).encode())
        if sleep:
            producer.poll(0)
            time.sleep(sleep)
    producer.flush(30)


def read_topic(
    brokers: str, topic: str, *, read_committed: bool = True, idle_s: float = 2.0
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` now (per-partition order): key, value, headers."""
    msgs = keyshift_read_topic({"bootstrap.servers": brokers}, topic,
                               read_committed=read_committed, idle_s=idle_s)
    return [(m.key(), m.value(), dict(m.headers() or [])) for m in msgs]


Rows = list[tuple[bytes | None, bytes | None, dict[str, bytes]]]


def final_counts(records: Rows) -> dict[str, int]:
    final: dict[str, int] = {}
    for key, value, _ in records:
        assert key is not None and value is not None
        final[key.decode()] = orjson.loads(value)
    return final


def values_by_key(
    records: list[tuple[bytes | None, bytes | None, dict[str, bytes]]],
) -> dict[str, list[int]]:
    seq: dict[str, list[int]] = collections.defaultdict(list)
    for key, value, _ in records:
        assert key is not None and value is not None
        seq[key.decode()].append(orjson.loads(value))
    return dict(seq)


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def write_app(directory: Path, module: str, app_id: str, source: str, sink: str,
              guarantee: str, **settings: object) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in settings.items())
    code = f"""
    from keyshift import App

    app = App({app_id!r}, guarantee={guarantee!r}{extra})
    (
        app.stream({source!r})
        .flat_map(lambda s: s.split())
        .key_by(lambda w: w)
        .count(store="counts")
        .to({sink!r})
    )
    """
    (directory / f"{module}.py").write_text(textwrap.dedent(code))
    return f"{module}:app"


def keyshift_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "keyshift", *args]


def spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    with log.open("ab") as handle:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.exists():
        return kids
    for task in task_dir.iterdir():
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
