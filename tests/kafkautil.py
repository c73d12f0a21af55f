"""Helpers for integration tests: topics, producing, reading back, worker processes,
and what a running app shows: its group's members and offsets, its migration
events (``<app>--events``) and control messages (``<app>--control``)."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from keyshift.dev.ports import port_open
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
            time.sleep(sleep)  # paces the load: ``rate`` records a second
    producer.flush(30)


def read_topic(
    brokers: str, topic: str, *, read_committed: bool = True, idle_s: float = 2.0
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` now (per-partition order): key, value, headers."""
    msgs = keyshift_read_topic(
        {"bootstrap.servers": brokers}, topic, read_committed=read_committed, idle_s=idle_s
    )
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


def write_app(
    directory: Path,
    module: str,
    app_id: str,
    source: str,
    sink: str,
    guarantee: str,
    **settings: object,
) -> str:
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


def worker_env(directory: Path, **extra: str) -> dict[str, str]:
    """The environment of worker processes whose app module is in ``directory``:
    their own ``KEYSHIFT_HOME``, and every sandbox Redis as a peer (state moves
    only between configured servers)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(directory),
        KEYSHIFT_HOME=str(directory / "home"),
        KEYSHIFT_PEERS=os.environ.get("KEYSHIFT_REDIS_URLS", ""),
    )
    env.update(extra)
    return env


def spawn(
    args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``args`` in ``cwd``, output appended to ``log``; ``env`` defaults to this
    process's, with ``cwd`` on PYTHONPATH."""
    if env is None:
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


# ------------------------------------------------------------------ what an app shows


def converged(brokers: str, sink: str, expected: dict[str, int]) -> bool:
    """The last value of every key in ``sink`` is the expected count."""
    return final_counts(read_topic(brokers, sink, idle_s=0.5)) == expected


def assert_strictly_increasing(brokers: str, sink: str) -> None:
    """Each key's values in ``sink`` (read_committed) only grow: no output twice."""
    for key, seq in values_by_key(read_topic(brokers, sink, read_committed=True)).items():
        assert all(a < b for a, b in zip(seq, seq[1:], strict=False)), (key, seq)


def events(brokers: str, app_id: str) -> list[dict[str, object]]:
    """The app's migration events (``<app>--events``), oldest first."""
    return [
        orjson.loads(v)
        for _, v, _ in read_topic(brokers, f"{app_id}--events", idle_s=1.0)
        if v is not None
    ]


def control(brokers: str, app_id: str) -> list[dict[str, object]]:
    """The app's control messages (``<app>--control``): how its workers
    coordinated joins and leaves, oldest first."""
    return [
        orjson.loads(v)
        for _, v, _ in read_topic(brokers, f"{app_id}--control", idle_s=1.0)
        if v is not None
    ]


def group_assignment(admin: AdminClient, group: str) -> dict[str, set[tuple[str, int]]]:
    """The partitions each member of consumer group ``group`` holds now, by
    instance (a worker's client id is ``<app>--<instance>``); {} when the group
    cannot be described."""
    try:
        described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except KafkaException:
        return {}
    prefix = f"{group}--"
    held: dict[str, set[tuple[str, int]]] = {}
    for member in described.members:
        name = str(member.client_id)
        name = name[len(prefix) :] if name.startswith(prefix) else name
        parts = member.assignment.topic_partitions if member.assignment else []
        held.setdefault(name, set()).update((tp.topic, tp.partition) for tp in parts)
    return held


def partition_count(admin: AdminClient, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def _holds(
    held: dict[str, set[tuple[str, int]]], admin: AdminClient, topics: Iterable[str], members: int
) -> bool:
    if len(held) != members or not all(held.values()):
        return False
    owned = set().union(*held.values())
    return all(
        (topic, p) in owned for topic in topics for p in range(partition_count(admin, topic))
    )


def group_holds(admin: AdminClient, group: str, topics: Iterable[str], members: int) -> bool:
    """``group`` has ``members`` members, each holding partitions, and every
    partition of ``topics`` is held by one of them."""
    return _holds(group_assignment(admin, group), admin, topics, members)


def settled(
    brokers: str, admin: AdminClient, app_id: str, topic: str, members: int, store: str = "counts"
) -> bool:
    """The group has ``members`` members, every partition of ``topic`` (the
    input of ``store``'s tasks) is held, and the last migration event of each
    of those tasks names its holder: every moved task's state is in place and
    it has processed (or waited out) its first records."""
    held = group_assignment(admin, app_id)
    if not _holds(held, admin, [topic], members):
        return False
    holders = {p: name for name, parts in held.items() for t, p in parts if t == topic}
    latest = {
        e["partition"]: e["to_instance"] for e in events(brokers, app_id) if e["store"] == store
    }
    return all(latest.get(p) == name for p, name in holders.items())


def committed(admin: AdminClient, group: str, topic: str) -> int:
    """How many records of ``topic`` the group has committed (its offsets' sum)."""
    request = [ConsumerGroupTopicPartitions(group)]
    try:
        result = admin.list_consumer_group_offsets(request, request_timeout=10)[group].result()
    except KafkaException:
        return 0
    return sum(max(tp.offset, 0) for tp in result.topic_partitions or [] if tp.topic == topic)


class RedisServer:
    """A redis-server owned by a test, without persistence: it can be killed, and
    a restart comes back empty."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        proc = subprocess.Popen(
            [*cmd, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        if not wait_for(lambda: port_open(self.port), 10, 0.02):
            raise RuntimeError("redis-server did not start")
        return proc

    def restart_empty(self) -> None:
        self.stop()
        self.proc = self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
