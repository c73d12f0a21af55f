"""Fault suite against real services: a 3-broker Kafka sandbox, one Redis per worker.

For each guarantee (at_least_once, exactly_once) a fresh app
``app.stream(src).count(store="counts").to(sink)`` runs as three ``keyshift
worker`` processes (w1..w3, each with its own Redis, all Redis servers as
peers, KIP-848 groups, dynamic membership) over a 6-partition source topic
(replication factor 3, min.insync.replicas 2). A load generator sends records
keyed by word at a steady rate, and one more record per word at the end of
each window (so that every word's state is checked in every window); each
fault gets a window of that load:

``leader-broker``         kill -9 the leader of the source's partition 0, restart it
``redis-kill``            kill -9 w1's Redis, restart it empty (the state must be replayed)
``redis-kill-mid-copy``   stop w1 (its tasks move by progressive copy from its Redis),
                          kill -9 that Redis mid-copy, restart it empty, restart w1
``redis-pause``           SIGSTOP w2's Redis for longer than a commit interval, SIGCONT
``worker-kill-mid-copy``  stop w3 (its tasks move by progressive copy), kill -9 the
                          worker that copies while the copy is in flight, restart both
``worker-zombie``         SIGSTOP w2 past its session timeout, SIGCONT it while the
                          new owners still copy its state (it resumes as a zombie)
``fuzz``                  bad records mixed into the load: random bytes, invalid UTF-8
                          keys, null keys and values, deeply nested JSON, values near
                          ``max.message.bytes``, forged internal headers and marker keys

A ``baseline`` window (no fault) comes first: it also loads ``--ballast`` keys
of one record each, so that a moved task has enough state for its progressive
copy to be caught in flight (the workers run with ``KEYSHIFT_COPY_SHARE``
``--copy-share``, which slows background copies down, not processing).

After each window the script waits until every input's count is in the sink,
then checks per key: the output counts must contain 1..N (``lost`` = missing
ones); under exactly-once, read with ``read_committed``, they must be exactly
1..N in order (``duplicated`` = extra ones). The fuzz window also checks that
every bad record is in ``<app>--dlq`` with its ``ks.error`` header, and nothing
legitimate is. A worker that exits on its own is restarted (same instance id),
as ``keyshift run`` would; those restarts are counted per window.

The sandbox is private: ``KEYSHIFT_HOME`` is a temporary directory (the Kafka
jars are linked from the default cache) and ports are picked free, so the
developer's and the test suite's sandboxes are never touched; it is stopped at
the end, always. Worker logs stay in the printed work directory when a check
fails (or with ``--keep``).

    python bench/chaos.py                              # full run, both guarantees
    python bench/chaos.py --quick                      # the reduced form CI runs
    python bench/chaos.py --guarantee exactly_once --faults redis-kill,fuzz --seconds 20

Progress goes to stderr, the table (markdown) to stdout. Exit 0 only if every
check of every row holds.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from keyshift.dev import DEFAULT_KAFKA_VERSION, down, status, up
from keyshift.dev.paths import HOME_ENV, kafka_dist_dir
from keyshift.state.changelog import MARKER_HEADER, MARKER_KEY, ORIGIN_HEADER

GUARANTEES = ("at_least_once", "exactly_once")
FAULTS = (
    "leader-broker",
    "redis-kill",
    "redis-kill-mid-copy",
    "redis-pause",
    "worker-kill-mid-copy",
    "worker-zombie",
    "fuzz",
)
BASELINE = "baseline"
PARTITIONS = 6
REPLICATION = 3
MIN_ISR = "2"
WORKERS = ("w1", "w2", "w3")
# Preferred first ports of the private sandbox (free ones above are taken if busy),
# away from the defaults (9092, 6379) of the developer's and the tests' sandbox,
# and below Linux's ephemeral port range (32768-60999): a broker or Redis server
# restarted after a fault binds its old port again, and an outgoing connection
# given that port meanwhile would keep it from starting ("Address already in use").
KAFKA_PORT = 29092
REDIS_PORT = 26379
#: Kafka's group session timeout as keyshift sets it (10 s).
SESSION_S = 10.0
#: How long a Redis server stays stopped: 5 commit intervals at least once,
#: 50 at exactly once, and below the transaction timeout (10 s).
REDIS_PAUSE_S = 5.0
#: Share of a window that runs under steady load before the fault.
LEAD = 0.3
#: After the sink converged: time for late duplicates to show up.
SETTLE_S = 3.0
#: How long a worker may take to stop on SIGTERM (commit, leave the group).
STOP_S = 30.0
#: A sink that gains no count for this long will not converge.
STUCK_S = 60.0
#: More crash restarts than this in one window is a crash loop.
CRASH_LOOP = 8
#: The "task state ready" log line of a task restored by progressive copy.
COPY_STARTED = re.compile(r"task state ready .*task=(\S+) strategy=progressive")

log = logging.getLogger("chaos")
_QUIET = logging.getLogger("chaos.librdkafka")
_QUIET.setLevel(logging.CRITICAL)


def now_ms() -> int:
    return int(time.time() * 1000)


def quiet(config: dict[str, Any]) -> dict[str, Any]:
    """A client config whose librdkafka logs and transient errors are not printed
    (a killed broker makes every client complain; the checks say what matters)."""
    return {**config, "logger": _QUIET, "error_cb": lambda err: None}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    guarantees: tuple[str, ...]
    faults: tuple[str, ...]
    seconds: float
    rate: float
    keys: int
    ballast: int
    copy_share: float
    converge_s: float
    keep: bool
    quick: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced form for CI: 10 s windows, fewer keys, lower rate",
    )
    parser.add_argument("--guarantee", choices=[*GUARANTEES, "both"], default="both")
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}"
    )
    parser.add_argument("--seconds", type=float, help="load per fault window (30, quick 10)")
    parser.add_argument("--rate", type=float, help="records/s of steady load (600, quick 300)")
    parser.add_argument("--keys", type=int, help="distinct words of the load (2000, quick 500)")
    parser.add_argument(
        "--ballast", type=int, help="keys loaded once in the baseline (120000, quick 60000)"
    )
    parser.add_argument(
        "--copy-share",
        type=float,
        default=0.05,
        help="KEYSHIFT_COPY_SHARE of the workers (slow background copies)",
    )
    parser.add_argument(
        "--converge-timeout",
        type=float,
        default=240.0,
        help="most seconds to wait for the sink after a window",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {','.join(unknown)}; known: {','.join(FAULTS)}")
    quick = bool(args.quick)
    return Options(
        guarantees=GUARANTEES if args.guarantee == "both" else (args.guarantee,),
        faults=tuple(f for f in FAULTS if f in faults),
        seconds=args.seconds or (10.0 if quick else 30.0),
        rate=args.rate or (300.0 if quick else 600.0),
        keys=args.keys or (500 if quick else 2000),
        ballast=args.ballast if args.ballast is not None else (60_000 if quick else 120_000),
        copy_share=args.copy_share,
        converge_s=args.converge_timeout,
        keep=bool(args.keep),
        quick=quick,
    )


# --------------------------------------------------------------------------- sandbox


class Sandbox:
    """The private ``keyshift dev`` sandbox: 3 brokers, 3 Redis servers."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.brokers = ""
        self.redis_urls: list[str] = []

    def start(self) -> None:
        # The jars cache of the default home, computed before KEYSHIFT_HOME moves.
        cached = kafka_dist_dir(DEFAULT_KAFKA_VERSION)
        cached.mkdir(parents=True, exist_ok=True)
        os.environ[HOME_ENV] = str(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / cached.name).symlink_to(cached, target_is_directory=True)
        log.info("starting the sandbox in %s (3 brokers, 3 Redis servers)", self.home)
        self._up()

    def _up(self) -> None:
        sandbox = up(
            brokers=3,
            redis_instances=2,
            auto_ports=True,
            kafka_port=KAFKA_PORT,
            redis_port=REDIS_PORT,
        )
        if self.brokers and (sandbox.brokers, sandbox.redis_urls) != (
            self.brokers,
            self.redis_urls,
        ):
            raise RuntimeError(f"the sandbox moved: {sandbox.brokers} {sandbox.redis_urls}")
        self.brokers, self.redis_urls = sandbox.brokers, list(sandbox.redis_urls)

    def restart_dead(self) -> None:
        """``up`` again: restarts the dead services on their ports (Redis empty)."""
        self._up()

    def pid(self, service: str) -> int:
        for each in status().services:
            if each.name == service and each.pid is not None:
                return each.pid
        raise RuntimeError(f"sandbox service {service} is not running")

    def stop(self) -> None:
        """Resume anything a fault left stopped, then ``down``."""
        for each in status().services:
            if each.pid is not None:
                try:
                    os.kill(each.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        down()
        log.info("sandbox stopped")


def create_topics(admin: AdminClient, names: list[str]) -> None:
    config = {"min.insync.replicas": MIN_ISR}
    new = [
        NewTopic(n, num_partitions=PARTITIONS, replication_factor=REPLICATION, config=config)
        for n in names
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(60)


def topic_limit(admin: AdminClient, topic: str) -> int:
    """The topic's ``max.message.bytes`` (the broker default unless set)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(30)
    return int(entries["max.message.bytes"].value)


def replication(admin: AdminClient, prefix: str) -> dict[str, int]:
    """Replication factor of every topic whose name starts with ``prefix``."""
    topics = admin.list_topics(timeout=30).topics
    return {
        name: len(meta.partitions[0].replicas)
        for name, meta in sorted(topics.items())
        if name.startswith(prefix) and meta.partitions
    }


def partition_leader(admin: AdminClient, topic: str, partition: int) -> int:
    return int(admin.list_topics(topic, timeout=30).topics[topic].partitions[partition].leader)


def wait_for_topics(admin: AdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics and topics[n].error is None for n in names):
            return
        time.sleep(0.5)
    raise RuntimeError(f"topics {names} were not created within {timeout:.0f} s")


# --------------------------------------------------------------------------- workers


@dataclass
class Slot:
    """One worker instance: its Redis, log and current process."""

    name: str
    redis_url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    supervised: bool = False  # restarted by the fleet when it exits
    restart_at: float | None = None


class Fleet:
    """The worker processes; restarts the ones that exit on their own."""

    def __init__(self, ref: str, workdir: Path, env: dict[str, str], redis_urls: list[str]) -> None:
        self.ref = ref
        self.workdir = workdir
        self.env = env
        self.slots = {
            name: Slot(name, url, workdir / f"{ref.split(':')[0]}-{name}.log")
            for name, url in zip(WORKERS, redis_urls, strict=False)
        }
        self.crashes: list[str] = []  # exits the fleet restarted
        self.hangs: list[str] = []  # workers that did not stop on SIGTERM in time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="fleet", daemon=True)

    def start_all(self) -> None:
        for name in self.slots:
            self.start(name)
        self._thread.start()

    def start(self, name: str) -> None:
        """Start the worker, once its previous process (if any) is gone."""
        slot = self.slots[name]
        self._retire(slot)
        with self._lock:
            self._spawn(slot, "start")

    def _spawn(self, slot: Slot, why: str) -> None:
        env = {**self.env, "KEYSHIFT_STATE": slot.redis_url}
        cmd = [sys.executable, "-m", "keyshift", "worker", self.ref, "--instance-id", slot.name]
        with slot.log.open("ab") as out:
            out.write(f"=== chaos: {why} {slot.name} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            slot.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        slot.supervised = True
        slot.restart_at = None

    def _retire(self, slot: Slot) -> None:
        """Wait for a stopping process to exit; one that takes longer than
        ``STOP_S`` has its stacks dumped into its log (SIGUSR1), then is killed."""
        proc = slot.proc
        if proc is None:
            return
        try:
            proc.wait(STOP_S)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        proc.wait()
        self.hangs.append(
            f"{slot.name} (pid {proc.pid}) did not stop within {STOP_S:.0f} s "
            f"of SIGTERM: stacks dumped to its log, killed"
        )
        log.warning("worker %s did not stop in time: killed", slot.name)

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for slot in self.slots.values():
                    self._check(slot)

    def _check(self, slot: Slot) -> None:
        if not slot.supervised or slot.proc is None or slot.proc.poll() is None:
            return
        if slot.restart_at is None:
            code = slot.proc.returncode
            what = " (InstanceConflict: keyshift run would not restart it)" if code == 3 else ""
            self.crashes.append(f"{slot.name} exited {code}{what} at {time.strftime('%H:%M:%S')}")
            log.info("worker %s exited with %s; restarting it in 2 s", slot.name, code)
            slot.restart_at = time.monotonic() + 2.0
        elif time.monotonic() >= slot.restart_at:
            self._spawn(slot, "restart after exit")

    def pid(self, name: str) -> int:
        proc = self.slots[name].proc
        assert proc is not None
        return proc.pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.pid(name), sig)

    def stop(self, name: str) -> None:
        """SIGTERM: the worker commits and leaves the group (not waited for)."""
        with self._lock:
            self._terminate(self.slots[name])

    def _terminate(self, slot: Slot) -> None:
        slot.supervised = False
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.send_signal(signal.SIGCONT)
            slot.proc.send_signal(signal.SIGTERM)

    def kill(self, name: str) -> None:
        with self._lock:
            slot = self.slots[name]
            slot.supervised = False
            assert slot.proc is not None
            slot.proc.kill()
            slot.proc.wait()

    def dump_stacks(self) -> None:
        """Every running worker writes its threads' stacks into its log."""
        with self._lock:
            for slot in self.slots.values():
                if slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.send_signal(signal.SIGUSR1)

    def restart_all(self) -> None:
        with self._lock:
            for slot in self.slots.values():
                self._terminate(slot)
        for name in self.slots:
            self.start(name)

    def log_marks(self) -> dict[str, int]:
        return {name: slot.log.stat().st_size for name, slot in self.slots.items()}

    def log_since(self, name: str, mark: int) -> str:
        with self.slots[name].log.open("rb") as handle:
            handle.seek(mark)
            return handle.read().decode(errors="replace")

    def stop_all(self) -> None:
        self._stop.set()
        with self._lock:
            for slot in self.slots.values():
                self._terminate(slot)
        for slot in self.slots.values():
            self._retire(slot)


def worker_env(
    sandbox: Sandbox,
    guarantee: str,
    workdir: Path,
    copy_share: float,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    env.update(
        {
            HOME_ENV: str(sandbox.home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")])),
            "KEYSHIFT_BROKERS": sandbox.brokers,
            "KEYSHIFT_PEERS": ",".join(sandbox.redis_urls),
            "KEYSHIFT_GUARANTEE": guarantee,
            "KEYSHIFT_GROUP_PROTOCOL": "consumer",
            "KEYSHIFT_STATIC_MEMBERSHIP": "false",
            "KEYSHIFT_COPY_SHARE": str(copy_share),
        }
    )
    return env


def write_app(workdir: Path, module: str, app_id: str, source: str, sink: str) -> str:
    code = f"""
    from keyshift import App

    app = App({app_id!r})
    app.stream({source!r}).count(store="counts").to({sink!r})
    """
    (workdir / f"{module}.py").write_text(textwrap.dedent(code))
    return f"{module}:app"


# --------------------------------------------------------------------------- fuzz


@dataclass(frozen=True)
class FuzzCase:
    """A bad (or odd) input record and what must become of it."""

    kind: str
    key: bytes | None
    value: bytes | None
    outcome: str  # "dlq", "counted" (goes through count()) or "dropped" (null key)
    stage: str = ""  # expected ks.stage of the dead letter
    reason: str = ""  # expected in its ks.error
    truncated: bool = False  # too large for the dead-letter topic: cut down
    headers: tuple[tuple[str, bytes], ...] = ()


def fuzz_cases(rng: random.Random, limit: int, big: bool) -> list[FuzzCase]:
    """One round of bad records; ``limit`` is the source's ``max.message.bytes``."""
    junk = b"\xff" + rng.randbytes(63)
    valid = b'{"ok": true}'
    near = limit - 1000  # key, headers and the batch overhead fit in the rest
    cases = [
        FuzzCase("random-value", b"fz-random-value", junk, "dlq", "deserialize", "invalid JSON"),
        FuzzCase(
            "random-key-value",
            b"\xfe" + rng.randbytes(15),
            junk,
            "dlq",
            "deserialize",
            "invalid UTF-8",
        ),
        FuzzCase(
            "invalid-utf8-key", b"fz-\xc3\x28-key", valid, "dlq", "deserialize", "invalid UTF-8"
        ),
        FuzzCase("null-key", None, valid, "dropped"),
        FuzzCase("null-record-value", b"fz-null-value", None, "counted"),
        FuzzCase("json-null-value", b"fz-json-null", b"null", "counted"),
        FuzzCase("empty-value", b"fz-empty-value", b"", "dlq", "deserialize", "invalid JSON"),
        FuzzCase("empty-key", b"", b"1", "counted"),
        FuzzCase(
            "odd-utf8-key", "fz-\u043a\u043b\u044e\u0447-\U0001f511-\x00".encode(), valid, "counted"
        ),
        FuzzCase("nested-json-1000", b"fz-nested-ok", b"[" * 1000 + b"]" * 1000, "counted"),
        FuzzCase(
            "nested-json-100000",
            b"fz-nested-deep",
            b"[" * 100_000 + b"]" * 100_000,
            "dlq",
            "deserialize",
            "invalid JSON",
        ),
        FuzzCase(
            "forged-origin-and-marker-headers",
            b"fz-forged",
            valid,
            "counted",
            headers=(
                (ORIGIN_HEADER, struct.pack(">iqi", 0, 2**62, 0)),
                (MARKER_HEADER, b"2"),
                ("ks.error", b"forged"),
            ),
        ),
        FuzzCase(
            "malformed-origin-header",
            b"fz-forged-malformed",
            valid,
            "counted",
            headers=((ORIGIN_HEADER, b"\x01"),),
        ),
        FuzzCase("marker-key", MARKER_KEY, valid, "dlq", "process", "reserved"),
        FuzzCase(
            "marker-key-with-marker-header",
            MARKER_KEY,
            orjson.dumps({"in": 0, "cl": 0, "ep": 99}),
            "dlq",
            "process",
            "reserved",
            headers=((MARKER_HEADER, b"2"),),
        ),
    ]
    if big:
        cases += [
            FuzzCase(
                "value-near-max-message-bytes",
                b"fz-big-ok",
                b'"' + b"x" * (near - 2) + b'"',
                "counted",
            ),
            FuzzCase(
                "invalid-value-near-max-message-bytes",
                b"fz-big-bad",
                b"\xff" * near,
                "dlq",
                "deserialize",
                "invalid JSON",
                truncated=True,
            ),
        ]
    return cases


# --------------------------------------------------------------------------- load


@dataclass
class WindowInput:
    """What a window sent (acknowledged by Kafka)."""

    records: int = 0
    failed: int = 0
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition: first, last
    cases: dict[tuple[int, int], FuzzCase] = field(default_factory=dict)

    def add(self, partition: int, offset: int) -> None:
        self.records += 1
        first, last = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (min(first, offset), max(last, offset))


class Load:
    """Steady keyed load; counts per key what Kafka acknowledged."""

    def __init__(self, brokers: str, topic: str, keys: int, limit: int) -> None:
        self.topic = topic
        self.words = [f"word-{i:05d}".encode() for i in range(keys)]
        # murmur2_random: as the Java client (and keyshift), an empty key is hashed like
        # any other; the librdkafka default spreads empty keys at random.
        base = {
            "bootstrap.servers": brokers,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
        self.producer = Producer(quiet({**base, "linger.ms": 5}))
        # Records near the topic's limit go alone, through a producer that takes them.
        self.big = Producer(quiet({**base, "linger.ms": 0, "message.max.bytes": limit}))
        self.expected: collections.Counter[bytes] = collections.Counter()
        self.window = WindowInput()
        self._lock = threading.Lock()
        self._rng = random.Random(7)
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, rate: float) -> None:
        self.window = WindowInput()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(rate,), name="load", daemon=True)
        self._thread.start()

    def end(self) -> WindowInput:
        """Stop the load, send one more record for every word (so that a word
        whose state a fault damaged shows it in this window), wait for acks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for word in self.words:
            self.send_word(word)
        for producer in (self.producer, self.big):
            left = producer.flush(120)
            if left:
                raise RuntimeError(f"{left} records of the load not acknowledged in 120 s")
        return self.window

    def rebase(self, counts: dict[bytes, int]) -> None:
        with self._lock:
            for key, count in counts.items():
                self.expected[key] = count

    def snapshot(self) -> dict[bytes, int]:
        with self._lock:
            return dict(self.expected)

    def _run(self, rate: float) -> None:
        interval = 1.0 / rate
        due = time.monotonic()
        while not self._stop.is_set():
            self.send_word(self._rng.choice(self.words))
            self.producer.poll(0)
            due = max(due + interval, time.monotonic() - 1.0)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def send_word(self, word: bytes) -> None:
        self._seq += 1
        self._send(self.producer, word, orjson.dumps({"n": self._seq}), (), counted=True)

    def send_ballast(self, count: int) -> None:
        for i in range(count):
            self._send(self.producer, f"ballast-{i:07d}".encode(), b"{}", (), counted=True)

    def send_case(self, case: FuzzCase) -> None:
        producer = self.big if len(case.value or b"") > 100_000 else self.producer
        self._send(
            producer,
            case.key,
            case.value,
            case.headers,
            counted=case.outcome == "counted",
            case=case,
        )
        producer.poll(0)

    def _send(
        self,
        producer: Producer,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...],
        *,
        counted: bool,
        case: FuzzCase | None = None,
    ) -> None:
        window = self.window

        def delivered(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    window.failed += 1
                    return
                window.add(msg.partition(), msg.offset())
                if counted and key is not None:
                    self.expected[key] += 1
                if case is not None:
                    window.cases[(msg.partition(), msg.offset())] = case

        while True:
            try:
                producer.produce(
                    self.topic, value, key, headers=list(headers) or None, on_delivery=delivered
                )
                return
            except BufferError:
                producer.poll(0.05)


# --------------------------------------------------------------------------- tail


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    headers: dict[str, bytes]

    @property
    def position(self) -> tuple[str, int, int]:
        h = self.headers
        return (
            h.get("ks.topic", b"").decode(),
            int(h.get("ks.partition", b"-1")),
            int(h.get("ks.offset", b"-1")),
        )


class Tail(threading.Thread):
    """Reads the sink, the dead-letter topic and the events topic as they grow
    (``read_committed``: under exactly-once only committed outputs count)."""

    def __init__(self, brokers: str, sink: str, dlq: str, events: str) -> None:
        super().__init__(name="tail", daemon=True)
        self.sink, self.dlq, self.events_topic = sink, dlq, events
        self.outputs: dict[bytes | None, list[int]] = collections.defaultdict(list)
        self.partition: dict[bytes | None, int] = {}  # of each key (the sink's = the source's)
        self.bad_outputs: list[str] = []
        self.dead: list[DeadLetter] = []
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._halt = threading.Event()
        self._consumer = Consumer(
            quiet(
                {
                    "bootstrap.servers": brokers,
                    "group.id": f"chaos-tail-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 50,
                    "fetch.message.max.bytes": 2_000_000,
                }
            )
        )
        self._consumer.assign(
            [TopicPartition(sink, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
            + [
                TopicPartition(dlq, 0, OFFSET_BEGINNING),
                TopicPartition(events, 0, OFFSET_BEGINNING),
            ]
        )

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                msgs = self._consumer.consume(2000, 0.2)
                with self.lock:
                    for msg in msgs:
                        if msg.error() is None:
                            self._take(msg)
        finally:
            self._consumer.close()

    def _take(self, msg: Message) -> None:
        topic = msg.topic()
        if topic == self.sink:
            value = msg.value()
            try:
                count = orjson.loads(value) if value is not None else None
            except orjson.JSONDecodeError:
                count = None
            if type(count) is not int:
                self.bad_outputs.append(f"{msg.key()!r}={value!r:.40}")
                return
            self.outputs[msg.key()].append(count)
            self.partition[msg.key()] = msg.partition()
        elif topic == self.dlq:
            self.dead.append(DeadLetter(msg.key(), dict(msg.headers() or [])))
        elif msg.value():
            self.events.append(orjson.loads(msg.value()))

    def lengths(self) -> dict[bytes | None, int]:
        with self.lock:
            return {k: len(v) for k, v in self.outputs.items()}

    def since(self, start: dict[bytes | None, int]) -> dict[bytes | None, list[int]]:
        with self.lock:
            return {
                k: v[start.get(k, 0) :] for k, v in self.outputs.items() if len(v) > start.get(k, 0)
            }

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


# --------------------------------------------------------------------------- checks


@dataclass
class Row:
    """One fault window under one guarantee."""

    guarantee: str
    fault: str
    records_in: int = 0
    outputs_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    max_pause_ms: int | None = None
    restarts: int = 0
    converge_s: float | None = None
    started_ms: int = 0
    ended_ms: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def eos(self) -> bool:
        return self.guarantee == "exactly_once"

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Bounds:
    """Per key, the count before the window (``lo``) and after it (``hi``): the
    window's outputs must be the counts ``lo+1 .. hi``."""

    lo: dict[bytes, int]
    hi: dict[bytes, int]

    def changed(self) -> list[bytes]:
        return [k for k, n in self.hi.items() if n > self.lo.get(k, 0)]


def missing(bounds: Bounds, new: dict[bytes | None, list[int]]) -> int:
    """How many counts of the window are not in the sink yet."""
    total = 0
    for key in bounds.changed():
        lo, hi = bounds.lo.get(key, 0), bounds.hi[key]
        got = {v for v in new.get(key, ()) if lo < v <= hi}
        total += hi - lo - len(got)
    return total


@dataclass(frozen=True)
class KeyCheck:
    """One key's outputs in a window against its expected counts ``lo+1 .. hi``.

    The previous window ended with every count up to ``lo`` in the sink and
    committed, so a count of ``lo`` or below in this window means the key's
    state went back (lost), not a repeated output."""

    lost: int
    duplicated: int
    regressed: int
    over: int
    disordered: bool

    @classmethod
    def of(cls, values: list[int], lo: int, hi: int, eos: bool) -> KeyCheck:
        inside = [v for v in values if lo < v <= hi]
        distinct = sorted(set(inside))
        return cls(
            lost=hi - lo - len(distinct),
            duplicated=len(inside) - len(distinct),
            regressed=sum(1 for v in values if v <= lo),
            over=sum(1 for v in values if v > hi),
            disordered=eos and inside != distinct,
        )

    def failed(self, eos: bool) -> bool:
        return bool(
            self.lost or self.regressed or self.over or self.disordered or (eos and self.duplicated)
        )


def check_outputs(
    row: Row,
    bounds: Bounds,
    new: dict[bytes | None, list[int]],
    partitions: dict[bytes | None, int],
) -> dict[bytes, int]:
    """Lost, duplicated, regressed, out-of-order and over-counted outputs of the
    window. Returns the keys whose counts went wrong, with the last count the
    sink got."""
    regressed, over, disordered, strangers = 0, 0, 0, 0
    examples = []
    wrong: dict[bytes, int] = {}
    for key in set(new) | set(bounds.changed()):
        values = new.get(key, [])
        row.outputs_checked += len(values)
        if key is None or key not in bounds.hi:
            strangers += len(values)
            continue
        lo, hi = bounds.lo.get(key, 0), bounds.hi[key]
        check = KeyCheck.of(values, lo, hi, row.eos)
        row.lost += check.lost
        row.duplicated += check.duplicated
        regressed += check.regressed
        over += check.over
        disordered += check.disordered
        if check.failed(row.eos):
            examples.append(
                f"{key!r} (partition {partitions.get(key, '?')}) expected "
                f"{lo + 1}..{hi}, got {values[:12]}"
            )
        if check.lost or check.regressed or check.over:
            wrong[key] = values[-1] if values else lo
    if row.lost:
        row.problems.append(f"{row.lost} counts lost")
    if row.eos and row.duplicated:
        row.problems.append(f"{row.duplicated} outputs duplicated under exactly-once")
    if regressed:
        row.problems.append(
            f"{regressed} outputs with a count from before the window (the key's state went back)"
        )
    if over:
        row.problems.append(f"{over} outputs above the number of inputs (double counting)")
    if disordered:
        row.problems.append(f"{disordered} keys with outputs out of order")
    if strangers:
        row.problems.append(f"{strangers} outputs for keys never sent (or null keys)")
    if examples:
        row.problems.append(f"{len(examples)} keys wrong, e.g. " + "; ".join(sorted(examples)[:3]))
    return wrong


class DeadLetterBook:
    """Every dead letter expected so far, and which have been seen."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.expected: dict[tuple[int, int], FuzzCase] = {}
        self.seen: collections.Counter[tuple[int, int]] = collections.Counter()
        self.read = 0

    def check(self, row: Row, tail: Tail, window: WindowInput) -> None:
        self.expected.update({p: c for p, c in window.cases.items() if c.outcome == "dlq"})
        with tail.lock:
            fresh = tail.dead[self.read :]
            self.read = len(tail.dead)
        row.dead_lettered = len(fresh)
        for letter in fresh:
            self._check_letter(row, letter)
        for position, case in window.cases.items():
            if case.outcome == "dlq" and not self.seen[position]:
                row.problems.append(f"{case.kind}: no dead letter for {position}")

    def _check_letter(self, row: Row, letter: DeadLetter) -> None:
        topic, partition, offset = letter.position
        position = (partition, offset)
        case = self.expected.get(position) if topic == self.source else None
        error = letter.headers.get("ks.error", b"").decode(errors="replace")
        if case is None:
            row.problems.append(
                f"legitimate record dead-lettered: {topic}[{partition}]@{offset} {error[:120]}"
            )
            return
        self.seen[position] += 1
        if self.seen[position] > 1:
            (row.problems if row.eos else row.notes).append(f"{case.kind} dead-lettered again")
        stage = letter.headers.get("ks.stage", b"").decode()
        if not error or case.reason not in error or stage != case.stage:
            row.problems.append(f"{case.kind}: dead letter stage={stage} error={error[:120]!r}")
        if case.truncated and "ks.truncated" not in letter.headers:
            row.problems.append(f"{case.kind}: dead letter without ks.truncated")


def max_pause(events: list[dict[str, Any]], start_ms: int, end_ms: int) -> int | None:
    pauses = [
        e["pause_ms"]
        for e in events
        if start_ms <= e.get("assigned_ms", 0) <= end_ms and e.get("pause_ms") is not None
    ]
    return max(pauses, default=None)


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Outcome:
    """How waiting for the sink ended: ``complete``, ``processed`` (all input
    committed, counts missing) or ``stuck``; after how many seconds."""

    state: str
    seconds: float


@dataclass
class Run:
    """Everything a fault and a window need for one guarantee."""

    opts: Options
    guarantee: str
    sandbox: Sandbox
    admin: AdminClient
    app_id: str
    source: str
    fleet: Fleet
    load: Load
    tail: Tail
    book: DeadLetterBook
    limit: int
    row: Row = field(default_factory=lambda: Row("", ""))


def fault_baseline(run: Run) -> None:
    if run.opts.ballast:
        log.info("loading %d ballast keys", run.opts.ballast)
        run.load.send_ballast(run.opts.ballast)


def fault_leader_broker(run: Run) -> None:
    node = partition_leader(run.admin, run.source, 0)
    os.kill(run.sandbox.pid(f"kafka-{node}"), signal.SIGKILL)
    killed = time.monotonic()
    log.info("killed broker node %d (leader of %s[0]) with SIGKILL", node, run.source)
    time.sleep(max(5.0, run.opts.seconds * 0.4))
    run.sandbox.restart_dead()
    run.row.notes.append(
        f"node {node} (leader of {run.source}[0]) down {time.monotonic() - killed:.0f} s, restarted"
    )


def fault_redis_kill(run: Run) -> None:
    slot = run.fleet.slots["w1"]
    os.kill(run.sandbox.pid("redis-0"), signal.SIGKILL)
    killed = time.monotonic()
    log.info("killed redis-0 (state of %s) with SIGKILL", slot.name)
    time.sleep(1.0)
    run.sandbox.restart_dead()
    run.row.notes.append(
        f"redis-0 (state of w1) killed, back empty after {time.monotonic() - killed:.1f} s"
    )


def fault_redis_kill_mid_copy(run: Run) -> None:
    fleet = run.fleet
    url = fleet.slots["w1"].redis_url
    marks = fleet.log_marks()
    fleet.stop("w1")
    log.info("stopped w1 (SIGTERM): its tasks move to w2 and w3 by progressive copy")
    seen = wait_for_copy(fleet, ["w2", "w3"], marks, 30.0, source=url)
    if seen is None:
        run.row.problems.append("fault not exercised: no copy from w1's Redis in 30 s")
    os.kill(run.sandbox.pid("redis-0"), signal.SIGKILL)
    log.info(
        "killed redis-0 (state of w1) with SIGKILL%s",
        f" while {seen.worker} copied {seen.task} from it" if seen else "",
    )
    time.sleep(1.0)
    run.sandbox.restart_dead()
    if seen is not None:
        finished = copy_finished(fleet, seen, marks[seen.worker])
        run.row.notes.append(
            f"redis-0 killed while {seen.worker} copied {seen.task} from it"
            + (" (copy already finished)" if finished else "")
            + "; back empty"
        )
        if finished:
            run.row.problems.append("fault not exercised: the copy finished before the kill")
    time.sleep(2.0)
    fleet.start("w1")


def fault_redis_pause(run: Run) -> None:
    pid = run.sandbox.pid("redis-1")
    os.kill(pid, signal.SIGSTOP)
    log.info("stopped redis-1 (state of w2) with SIGSTOP for %.0f s", REDIS_PAUSE_S)
    try:
        time.sleep(REDIS_PAUSE_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    run.row.notes.append(f"redis-1 (state of w2) stopped {REDIS_PAUSE_S:.0f} s")


@dataclass(frozen=True)
class CopySeen:
    worker: str
    task: str
    line: str


def wait_for_copy(
    fleet: Fleet, workers: list[str], marks: dict[str, int], timeout: float, source: str = ""
) -> CopySeen | None:
    """The first progressive copy (from ``source``, a Redis URL, if given) one of
    ``workers`` starts after ``marks``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in workers:
            for line in fleet.log_since(name, marks[name]).splitlines():
                found = COPY_STARTED.search(line)
                if found and source in line:
                    return CopySeen(name, found.group(1), line)
        time.sleep(0.05)
    return None


def copy_finished(fleet: Fleet, seen: CopySeen, mark: int) -> bool:
    """Whether ``seen``'s worker logged the migration of its task as done."""
    text = fleet.log_since(seen.worker, mark)
    return any(
        "migration" in line and f"task={seen.task} " in line and "task state ready" not in line
        for line in text.splitlines()
    )


def fault_worker_kill_mid_copy(run: Run) -> None:
    fleet = run.fleet
    marks = fleet.log_marks()
    fleet.stop("w3")
    log.info("stopped w3 (SIGTERM): its tasks move to w1 and w2 by progressive copy")
    seen = wait_for_copy(fleet, ["w1", "w2"], marks, 30.0)
    if seen is None:
        run.row.problems.append("fault not exercised: no progressive copy started in 30 s")
        fleet.start("w3")
        return
    fleet.kill(seen.worker)
    finished = copy_finished(fleet, seen, marks[seen.worker])
    log.info("killed %s (SIGKILL) while copying %s", seen.worker, seen.task)
    run.row.notes.append(
        f"{seen.worker} killed copying {seen.task} from w3's Redis"
        + (" (its copy had already finished)" if finished else "")
    )
    if finished:
        run.row.problems.append("fault not exercised: the copy finished before the kill")
    time.sleep(2.0)
    fleet.start("w3")
    fleet.start(seen.worker)


def fault_worker_zombie(run: Run) -> None:
    fleet = run.fleet
    marks = fleet.log_marks()
    fleet.signal("w2", signal.SIGSTOP)
    stopped = time.monotonic()
    log.info("stopped w2 with SIGSTOP; waiting for its tasks to be copied elsewhere")
    try:
        seen = wait_for_copy(fleet, ["w1", "w3"], marks, SESSION_S + 30.0)
    finally:
        fleet.signal("w2", signal.SIGCONT)
    held = time.monotonic() - stopped
    if seen is None:
        run.row.problems.append(f"fault not exercised: no copy of w2's tasks in {held:.0f} s")
        return
    finished = copy_finished(fleet, seen, marks[seen.worker])
    log.info("resumed w2 (SIGCONT) after %.1f s, %s copying %s", held, seen.worker, seen.task)
    run.row.notes.append(
        f"w2 stopped {held:.0f} s, resumed while {seen.worker} copied "
        f"{seen.task}" + (" (copy already finished)" if finished else "")
    )
    if finished:
        run.row.problems.append("fault not exercised: the copy finished before the resume")


def fault_fuzz(run: Run) -> None:
    rng = random.Random(11)
    rounds = 3
    gap = run.opts.seconds * (1 - LEAD) / rounds
    for i in range(rounds):
        cases = fuzz_cases(rng, run.limit, big=i == 0)
        for case in cases:
            run.load.send_case(case)
            time.sleep(gap / len(cases))
    kinds = sorted({c.kind for c in fuzz_cases(rng, run.limit, big=True)})
    run.row.notes.append(f"{len(kinds)} kinds of bad records, {rounds} rounds")


FAULT_ACTIONS: dict[str, Callable[[Run], None]] = {
    BASELINE: fault_baseline,
    "leader-broker": fault_leader_broker,
    "redis-kill": fault_redis_kill,
    "redis-kill-mid-copy": fault_redis_kill_mid_copy,
    "redis-pause": fault_redis_pause,
    "worker-kill-mid-copy": fault_worker_kill_mid_copy,
    "worker-zombie": fault_worker_zombie,
    "fuzz": fault_fuzz,
}


# --------------------------------------------------------------------------- windows


def group_lag(admin: AdminClient, group: str, topic: str) -> int | None:
    """Records of ``topic`` the group has not committed yet (None: unknown now)."""
    try:
        request = [ConsumerGroupTopicPartitions(group)]
        done = admin.list_consumer_group_offsets(request)[group].result(10)
        committed = {tp.partition: tp.offset for tp in done.topic_partitions if tp.topic == topic}
        wanted = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(PARTITIONS)}
        ends = {tp.partition: f.result(10).offset for tp, f in admin.list_offsets(wanted).items()}
    except KafkaException:
        return None
    return int(sum(max(0, end - committed.get(p, 0)) for p, end in ends.items()))


def converge(run: Run, bounds: Bounds, start: dict[bytes | None, int]) -> Outcome:
    """Wait until every count of the window is in the sink. Gives up when the
    group has committed all input and the sink no longer changes (the counts
    are lost), or when the sink made no progress for ``STUCK_S`` (stuck), or
    after ``--converge-timeout``."""
    began = time.monotonic()
    reported = progressed = began
    before = -1
    while True:
        left = missing(bounds, run.tail.since(start))
        now = time.monotonic()
        if not left:
            return Outcome("complete", now - began)
        if left != before:
            before, progressed = left, now
        if now - progressed >= SETTLE_S and group_lag(run.admin, run.app_id, run.source) == 0:
            return Outcome("processed", now - began)
        if now - began > run.opts.converge_s or now - progressed > STUCK_S:
            return Outcome("stuck", now - began)
        if now - reported >= 15:
            log.info("waiting for the sink: %d counts missing", left)
            reported = now
        time.sleep(0.5)


def recover(run: Run, row: Row, bounds: Bounds, start: dict[bytes | None, int]) -> None:
    """The sink stopped short: dump the workers' stacks into their logs, restart
    them all and wait again, so that what was lost for good can be told from
    what was only stuck (and the next window starts clean)."""
    left = missing(bounds, run.tail.since(start))
    row.problems.append(
        f"sink stuck with {left} counts missing: worker stacks dumped "
        f"into their logs, all workers restarted"
    )
    log.info("sink stuck (%d counts missing): dumping stacks, restarting the workers", left)
    run.fleet.dump_stacks()
    time.sleep(1.0)
    run.fleet.restart_all()
    again = converge(run, bounds, start)
    row.notes.append(f"after the restart: {again.state} in {again.seconds:.0f} s")


def run_window(run: Run, fault: str) -> Row:
    row = run.row = Row(run.guarantee, fault, started_ms=now_ms())
    log.info(
        "[%s] %s: window of %.0f s at %.0f records/s",
        run.guarantee,
        fault,
        run.opts.seconds,
        run.opts.rate,
    )
    start = run.tail.lengths()
    crashes, hangs = len(run.fleet.crashes), len(run.fleet.hangs)
    lo = run.load.snapshot()
    began = time.monotonic()
    run.load.begin(run.opts.rate)
    time.sleep(0 if fault == BASELINE else run.opts.seconds * LEAD)
    try:
        FAULT_ACTIONS[fault](run)
    finally:
        time.sleep(max(0.0, began + run.opts.seconds - time.monotonic()))
        window = run.load.end()
    bounds = Bounds(lo, run.load.snapshot())
    row.records_in = window.records
    if window.failed:
        row.notes.append(f"{window.failed} records not acknowledged by Kafka (not counted)")
    outcome = converge(run, bounds, start)
    if outcome.state == "complete":
        row.converge_s = outcome.seconds
    elif outcome.state == "processed":
        row.notes.append("the group committed all input, the sink still lacks counts")
    else:
        recover(run, row, bounds, start)
    time.sleep(SETTLE_S)
    wrong = check_outputs(row, bounds, run.tail.since(start), run.tail.partition)
    if wrong:
        # The app's counts of these keys are off now: expect the next windows to
        # continue from what it says, so that this damage is counted once.
        run.load.rebase(wrong)
        row.notes.append(f"expected counts of {len(wrong)} wrong keys reset to the sink's")
    with run.tail.lock:
        if run.tail.bad_outputs:
            row.problems.append(f"undecodable outputs: {run.tail.bad_outputs[:3]}")
            run.tail.bad_outputs.clear()
    run.book.check(row, run.tail, window)
    row.problems += run.fleet.hangs[hangs:]
    exits = run.fleet.crashes[crashes:]
    row.restarts = len(exits)
    if exits:
        row.notes.append("worker exits: " + "; ".join(exits[:6]))
    if len(exits) > CRASH_LOOP:
        row.problems.append(f"crash loop: {len(exits)} worker exits")
    row.ended_ms = now_ms()
    log.info("[%s] %s: %s", run.guarantee, fault, "ok" if row.ok else "; ".join(row.problems))
    return row


def run_guarantee(
    opts: Options,
    guarantee: str,
    sandbox: Sandbox,
    workdir: Path,
    rows: list[Row],
    rf: dict[str, int],
) -> None:
    """Run the baseline and every fault window of one guarantee, adding a row each."""
    rid = uuid.uuid4().hex[:6]
    short = "alo" if guarantee == "at_least_once" else "eos"
    app_id, source, sink = f"chaos-{short}-{rid}", f"chaos-src-{rid}", f"chaos-out-{rid}"
    admin = AdminClient(quiet({"bootstrap.servers": sandbox.brokers}))
    create_topics(admin, [source, sink])
    ref = write_app(workdir, f"chaosapp_{short}_{rid}", app_id, source, sink)
    env = worker_env(sandbox, guarantee, workdir, opts.copy_share)
    fleet = Fleet(ref, workdir, env, sandbox.redis_urls)
    log.info("[%s] app %s: starting workers %s", guarantee, app_id, ",".join(fleet.slots))
    fleet.start_all()
    tail: Tail | None = None
    mine: list[Row] = []
    try:
        dlq, events = f"{app_id}--dlq", f"{app_id}--events"
        wait_for_topics(admin, [dlq, events, f"{app_id}--counts-changelog"], 120.0)
        tail = Tail(sandbox.brokers, sink, dlq, events)
        tail.start()
        limit = topic_limit(admin, source)
        run = Run(
            opts,
            guarantee,
            sandbox,
            admin,
            app_id,
            source,
            fleet,
            Load(sandbox.brokers, source, opts.keys, limit),
            tail,
            DeadLetterBook(source),
            limit,
        )
        rf.update(replication(admin, f"{app_id}--"))
        for fault in (BASELINE, *opts.faults):
            mine.append(run_window(run, fault))
            rows.append(mine[-1])
        time.sleep(SETTLE_S)  # the last migration events
    finally:
        fleet.stop_all()
        if tail is not None:
            tail.stop()
            for row in mine:
                row.max_pause_ms = max_pause(tail.events, row.started_ms, row.ended_ms)


# --------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    head = (
        "| guarantee | fault | records in | outputs checked | lost | duplicated | DLQ'd "
        "| max pause ms | worker restarts | converged s | result |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pause = "—" if r.max_pause_ms is None else f"{r.max_pause_ms:,}"
        conv = "—" if r.converge_s is None else f"{r.converge_s:.1f}"
        dup = f"{r.duplicated:,}" if r.eos else f"({r.duplicated:,})"
        lines.append(
            f"| {r.guarantee} | {r.fault} | {r.records_in:,} | {r.outputs_checked:,} "
            f"| {r.lost:,} | {dup} | {r.dead_lettered:,} | {pause} | {r.restarts} | {conv} "
            f"| {'ok' if r.ok else 'FAIL'} |"
        )
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        for text in r.problems:
            lines.append(f"- FAIL {r.guarantee} / {r.fault}: {text}")
        for text in r.notes:
            lines.append(f"- {r.guarantee} / {r.fault}: {text}")
    return "\n".join(lines)


@contextmanager
def workspace(keep: bool) -> Iterator[tuple[Path, Callable[[bool], None]]]:
    """A work directory; removed at the end unless kept (``--keep``, or a failure)."""
    path = Path(tempfile.mkdtemp(prefix="keyshift-chaos-"))
    outcome = {"ok": False}

    def done(ok: bool) -> None:
        outcome["ok"] = ok

    try:
        yield path, done
    finally:
        if outcome["ok"] and not keep:
            shutil.rmtree(path, ignore_errors=True)
        else:
            log.info("work directory kept (worker and sandbox logs): %s", path)


def report(
    opts: Options, rows: list[Row], rf: dict[str, int], complete: bool, elapsed: float
) -> None:
    """The table and its details on stdout (also after an interruption)."""
    print(table(rows))
    print()
    print(details(rows))
    print()
    if not complete:
        print("INTERRUPTED: the rows above are the windows that finished.")
    print(
        "Internal topics' replication factor: " + ", ".join(f"{name} {n}" for name, n in rf.items())
    )
    print(
        f"Duplicated in parentheses: at-least-once, where repeated outputs are allowed. "
        f"{'Quick' if opts.quick else 'Full'} run: {opts.seconds:.0f} s windows at "
        f"{opts.rate:.0f} records/s over {opts.keys} keys, {opts.ballast} ballast keys, "
        f"copy share {opts.copy_share}; {elapsed / 60:.1f} min in all.",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in a client library leaves its Python stacks
    opts = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    rows: list[Row] = []
    rf: dict[str, int] = {}
    complete = False
    try:
        with workspace(opts.keep) as (workdir, done):
            sandbox = Sandbox(workdir / "home")
            try:
                sandbox.start()
                log.info(
                    "sandbox: brokers %s, redis %s", sandbox.brokers, " ".join(sandbox.redis_urls)
                )
                for guarantee in opts.guarantees:
                    run_guarantee(opts, guarantee, sandbox, workdir, rows, rf)
                complete = True
            finally:
                sandbox.stop()
            done(all(r.ok for r in rows))
    finally:
        report(opts, rows, rf, complete, time.monotonic() - started)
    return 0 if complete and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
