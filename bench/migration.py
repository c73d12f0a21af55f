"""Migration benchmark: pause, latency, duration and keys/s of each strategy.

For each strategy (handoff, stop-and-copy, progressive, replay):

1. build state of ``--keys`` keys (~100 bytes each) with one instance;
2. run a producer at ``--rate`` records/s (about half of one instance's capacity
   by default) and step the instance count through ``--steps`` (1,2,4,2,1),
   ``--step-seconds`` apart, with ``keyshift run`` / ``keyshift scale``;
3. read the migration events and the end-to-end latency of every output record.

Prints, per strategy: max pause per moved partition, p50/p99 end-to-end latency
during migrations vs steady state, total migration duration, keys/s moved, and
whether the final per-key values are exact. Handoff uses one shared Redis; the
others one Redis per instance (started by this script on free loopback ports).

``--deployment supervised`` (the default) runs the workers under ``keyshift run``
and scales with ``keyshift scale``; ``--deployment independent`` starts one
``keyshift worker`` process per instance, each with its own ``KEYSHIFT_HOME``
(nothing shared but Kafka and the Redis URLs), adds instances by starting
processes and removes the newest by SIGTERM, as a StatefulSet does.

    python bench/migration.py                      # 1M keys (slow: minutes per strategy)
    python bench/migration.py --keys 20000 --step-seconds 5   # smoke
    python bench/migration.py --deployment independent --strategies handoff,progressive
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from keyshift.runtime.kafka import read_topic

STRATEGIES = ["handoff", "stop-and-copy", "progressive", "replay"]
APP = """
from keyshift import App

app = App({app_id!r})
(
    app.stream({source!r})
    .aggregate(lambda: {{"n": 0, "pad": ""}},
               lambda acc, v: {{"n": acc["n"] + 1, "pad": v["pad"]}}, store="totals")
    .map(lambda acc: acc["n"])
    .to({sink!r})
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(n: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls.append(f"redis://127.0.0.1:{port}/0")
    time.sleep(0.5)
    return procs, urls


def high_watermarks(brokers: str, topic: str) -> int:
    """Records in ``topic`` so far (0 while it is not usable yet)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-hw"})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in meta.partitions
        )
    except KafkaException:  # e.g. a just-created topic without a leader yet
        return 0
    finally:
        c.close()


def read_all(brokers: str, topic: str) -> list[tuple[bytes | None, bytes | None, int]]:
    msgs = read_topic({"bootstrap.servers": brokers}, topic, idle_s=10.0)
    return [(m.key(), m.value(), m.timestamp()[1]) for m in msgs]


class LatencyProbe(threading.Thread):
    """Reads the output topic live; latency = receive time - input record timestamp."""

    def __init__(self, brokers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.partitions: list[int] = []  # of each sample
        self.stop_flag = False
        self.c = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": f"probe-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "fetch.wait.max.ms": 10,
            }
        )
        self.c.subscribe([topic])

    def run(self) -> None:
        while not self.stop_flag:
            for m in self.c.consume(1000, 0.05):
                if not m.error():
                    now = time.time() * 1000
                    self.samples.append((now, now - m.timestamp()[1]))
                    self.partitions.append(m.partition())
        self.c.close()


def covered_ms(intervals: list[tuple[int, int]]) -> int:
    """Total length of the union of [start, end] intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Supervised:
    """The workers run under ``keyshift run``; steps go through ``keyshift scale``."""

    def __init__(
        self,
        ref: str,
        states: list[str],
        env: dict[str, str],
        workdir: Path,
        log: IO[bytes],
        quiet: bool,
        instances: int,
    ) -> None:
        self.ref, self.env, self.workdir = ref, env, workdir
        cmd = [
            sys.executable,
            "-m",
            "keyshift",
            "run",
            ref,
            "--instances",
            str(instances),
            "--log-level",
            "WARNING" if quiet else "INFO",
        ]
        for url in states:
            cmd += ["--state", url]
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def scale(self, n: int) -> None:
        subprocess.run(
            [sys.executable, "-m", "keyshift", "scale", self.ref, "--instances", str(n)],
            cwd=self.workdir,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(180)


class Independent:
    """One ``keyshift worker`` process per instance, each with its own KEYSHIFT_HOME;
    a step starts processes or SIGTERMs the newest ones (like a StatefulSet)."""

    def __init__(
        self,
        ref: str,
        states: list[str],
        env: dict[str, str],
        workdir: Path,
        log: IO[bytes],
        quiet: bool,
        instances: int,
    ) -> None:
        self.ref, self.states, self.env, self.workdir, self.log = ref, states, env, workdir, log
        self.quiet = quiet
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scale(instances)

    def scale(self, n: int) -> None:
        while len(self.procs) < n:
            i = len(self.procs)
            env = dict(
                self.env,
                KEYSHIFT_HOME=str(self.workdir / f"home-w{i}"),
                KEYSHIFT_STATE=self.states[i % len(self.states)],
            )
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "keyshift",
                        "worker",
                        self.ref,
                        "--instance-id",
                        f"w{i}",
                        "--log-level",
                        "WARNING" if self.quiet else "INFO",
                    ],
                    cwd=self.workdir,
                    env=env,
                    stdout=self.log,
                    stderr=subprocess.STDOUT,
                )
            )
        stopping = self.procs[n:]
        self.procs = self.procs[:n]
        for proc in stopping:
            proc.send_signal(signal.SIGTERM)
        for proc in stopping:
            proc.wait(120)

    def stop(self) -> None:
        self.scale(0)


class Load:
    """The records: one per key to build state, then a steady random stream."""

    PAD = "x" * 60

    def __init__(self, brokers: str, topic: str, keys: int, rate: float) -> None:
        self.topic, self.keys, self.rate = topic, keys, rate
        self.expected: dict[str, int] = {}
        # murmur2, as keyshift's sink producer: a key's input and output partitions
        # have the same number.
        self.producer = Producer(
            {
                "bootstrap.servers": brokers,
                "linger.ms": 20,
                "queue.buffering.max.messages": 2_000_000,
                "partitioner": "murmur2_random",
            }
        )
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    def send(self, key: str) -> None:
        while True:
            try:
                self.producer.produce(self.topic, orjson.dumps({"pad": self.PAD}), key.encode())
                break
            except BufferError:
                self.producer.poll(0.05)
        self.expected[key] = self.expected.get(key, 0) + 1

    def build(self) -> None:
        for i in range(self.keys):
            self.send(f"key-{i:08d}")
        self.producer.flush(120)

    def _feed(self) -> None:
        rng = random.Random(7)
        interval = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.send(f"key-{rng.randrange(self.keys):08d}")
            self.producer.poll(0)
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> None:
        self._feeder.start()

    def stop(self) -> None:
        self._stop.set()
        self._feeder.join()
        self.producer.flush(60)


def wait_for_outputs(brokers: str, sink: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while high_watermarks(brokers, sink) < count and time.monotonic() < deadline:
        time.sleep(1)


def run_strategy(
    strategy: str, args: argparse.Namespace, urls: list[str], shared: str, workdir: Path
) -> dict[str, object]:
    brokers = args.brokers
    rid = uuid.uuid4().hex[:6]
    app_id, source, sink = f"mig-{rid}", f"mig-src-{rid}", f"mig-out-{rid}"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(source, num_partitions=args.partitions)])[source].result(30)
    module = f"migapp_{rid}"
    (workdir / f"{module}.py").write_text(APP.format(app_id=app_id, source=source, sink=sink))
    ref = f"{module}:app"
    mode = "auto" if strategy in ("handoff", "progressive") else strategy
    env = dict(
        os.environ,
        PYTHONPATH=str(workdir),
        KEYSHIFT_HOME=str(workdir / "home"),
        KEYSHIFT_MIGRATION=mode,
        KEYSHIFT_BROKERS=brokers,
        KEYSHIFT_GROUP_PROTOCOL=args.group_protocol,
        KEYSHIFT_PEERS=",".join(urls),
        KEYSHIFT_STATIC_MEMBERSHIP=str(args.stable_ids).lower(),
    )
    states = [shared] if strategy == "handoff" else urls
    load = Load(brokers, source, args.keys, args.rate)
    log = (workdir / f"{app_id}.log").open("wb")
    fleet_type = Independent if args.deployment == "independent" else Supervised
    fleet = fleet_type(
        ref, states, env, workdir, log, quiet=not args.workdir, instances=args.steps[0]
    )
    try:
        # 1. build state
        load.build()
        wait_for_outputs(brokers, sink, args.keys, 600)
        probe = LatencyProbe(brokers, sink)
        probe.start()
        # 2. steady load + scaling steps
        load.start()
        time.sleep(args.step_seconds)
        steady_end = time.time() * 1000
        scale_times = []
        for n in args.steps[1:]:
            scale_times.append(time.time() * 1000)
            fleet.scale(n)
            time.sleep(args.step_seconds)
        load.stop()
        wait_for_outputs(brokers, sink, sum(load.expected.values()), 300)
        time.sleep(2)
        probe.stop_flag = True
        probe.join()
    finally:
        fleet.stop()
        log.close()
    expected = load.expected
    final: dict[str, int] = {}
    for key, value, _ in read_all(brokers, sink):
        if key is not None and value is not None:
            final[key.decode()] = orjson.loads(value)
    events = [orjson.loads(v) for _, v, _ in read_all(brokers, f"{app_id}--events") if v]
    if args.workdir:  # the raw material, for a closer look
        (workdir / f"{app_id}.samples.json").write_bytes(
            orjson.dumps(
                {
                    "samples": probe.samples,
                    "partitions": probe.partitions,
                    "events": events,
                    "steady_end": steady_end,
                    "scale_times": scale_times,
                }
            )
        )
    return summarize(
        strategy, events, probe.samples, steady_end, scale_times, args.steps, final == expected
    )


def summarize(
    strategy: str,
    events: list[dict[str, Any]],
    samples: list[tuple[float, float]],
    steady_end: float,
    scale_times: list[float],
    steps: list[int],
    exact: bool,
) -> dict[str, object]:
    """One strategy's row: pauses of the moves after the steady phase, latency
    percentiles steady and during migrations (overall and by step), keys/s."""
    moved = [
        e
        for e in events
        if e["from_instance"] not in (None, e["to_instance"]) and e["assigned_ms"] >= steady_end
    ]
    windows = [
        (
            e["assigned_ms"] - 2000,
            e["assigned_ms"] + (e["duration_ms"] or 0) + (e["pause_ms"] or 0) + 1000,
        )
        for e in moved
    ]
    steady = [lat for t, lat in samples if t < steady_end]
    during = [lat for t, lat in samples if any(a <= t <= b for a, b in windows)]
    # The same, step by step (a move belongs to the step whose scale command
    # came last before its assignment).
    bounds = [*scale_times, float("inf")]
    p99_by_step = {}
    for i, (before, after) in enumerate(zip(steps, steps[1:], strict=False)):
        spans = [
            w
            for w, e in zip(windows, moved, strict=True)
            if bounds[i] <= e["assigned_ms"] < bounds[i + 1]
        ]
        name = f"{before}->{after}"
        p99_by_step[name if name not in p99_by_step else f"{name} (step {i + 1})"] = pct(
            [lat for t, lat in samples if any(a <= t <= b for a, b in spans)], 0.99
        )
    keys_moved = sum(int(e["keys"]) for e in moved)
    # A task that got no record within its event's idle limit has no pause.
    paused = [e for e in moved if e["pause_ms"] is not None]
    # Wall-clock time during which some copy ran: progressive copies of one
    # assignment run side by side, so summing their durations would understate
    # the rate by that concurrency.
    move_seconds = (
        covered_ms(
            [
                (e["assigned_ms"], e["assigned_ms"] + (e["duration_ms"] or 0))
                for e in moved
                if e["keys"]
            ]
        )
        / 1000
    )
    return {
        "strategy": strategy,
        "moves": len(moved),
        "used": sorted({e["strategy"] for e in moved}),
        "without_pause": len(moved) - len(paused),
        "max_pause_ms": max((e["pause_ms"] for e in paused), default=0),
        "max_resume_ms": max((e["resume_ms"] for e in paused), default=0),
        "p50_pause_ms": pct([float(e["pause_ms"]) for e in paused], 0.5),
        "p50_resume_ms": pct([float(e["resume_ms"]) for e in paused], 0.5),
        "p50_steady": pct(steady, 0.5),
        "p99_steady": pct(steady, 0.99),
        "p50_migr": pct(during, 0.5),
        "p99_migr": pct(during, 0.99),
        "p99_by_step": p99_by_step,
        "duration_s": max((e["duration_ms"] or 0 for e in moved), default=0) / 1000,
        "keys_per_s": keys_moved / move_seconds if move_seconds else 0.0,
        "exact": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rate", type=float, default=4000.0, help="records/s during steps")
    parser.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 2, 1]
    )
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--group-protocol", choices=["classic", "consumer"], default="consumer")
    parser.add_argument(
        "--deployment",
        choices=["supervised", "independent"],
        default="supervised",
        help="keyshift run, or one process per instance",
    )
    parser.add_argument(
        "--stable-ids",
        action="store_true",
        help="static group membership (group.instance.id = instance id)",
    )
    parser.add_argument("--workdir", help="keep app modules and worker logs here")
    parser.add_argument("--brokers", default=os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092"))
    args = parser.parse_args()
    procs, urls = start_redis(max(args.steps))
    shared = urls[0]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.workdir:
                tmp = args.workdir
                Path(tmp).mkdir(parents=True, exist_ok=True)
            for strategy in args.strategies.split(","):
                print(f"running {strategy} ({args.keys} keys, steps {args.steps})...", flush=True)
                rows.append(run_strategy(strategy, args, urls, shared, Path(tmp)))
                for proc_url in urls:  # fresh Redis contents for the next strategy
                    subprocess.run(
                        ["redis-cli", "-u", proc_url, "FLUSHALL"], capture_output=True, check=False
                    )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print_report(rows)


def print_report(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'strategy':<14}{'moves':>6}{'max pause ms':>14}{'beyond rebal.':>14}"
        f"{'p50/p99 steady ms':>20}"
        f"{'p50/p99 migr ms':>18}{'duration s':>12}{'keys/s':>10}{'exact':>7}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['strategy']:<14}{r['moves']:>6}{r['max_pause_ms']:>14.0f}"
            f"{r['max_resume_ms']:>14.0f}"
            f"{r['p50_steady']:>10.0f}/{r['p99_steady']:<9.0f}"
            f"{r['p50_migr']:>8.0f}/{r['p99_migr']:<9.0f}{r['duration_s']:>12.2f}"
            f"{r['keys_per_s']:>10.0f}{'yes' if r['exact'] else 'NO':>7}"
        )
    for r in rows:
        print(
            f"{r['strategy']}: per move, median pause {r['p50_pause_ms']:.0f} ms, "
            f"median after assignment {r['p50_resume_ms']:.0f} ms"
            + (
                f" ({r['without_pause']} moves without a first record, no pause)"
                if r["without_pause"]
                else ""
            )
        )
    by = {r["strategy"]: r for r in rows}
    if "replay" in by:
        for s in ("progressive", "handoff"):
            if s in by and by[s]["max_pause_ms"]:
                ratio = by["replay"]["max_pause_ms"] / max(1.0, by[s]["max_pause_ms"])
                print(f"replay max pause / {s} max pause = {ratio:.1f}x")
    for r in rows:
        if r["p99_steady"] == r["p99_steady"] and r["p99_steady"]:
            print(
                f"{r['strategy']}: p99 during migration / steady = "
                f"{r['p99_migr'] / r['p99_steady']:.2f}x"
            )
    for r in rows:
        steps = r["p99_by_step"]
        assert isinstance(steps, dict)
        print(
            f"{r['strategy']}: p99 during migration by step: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in steps.items())
        )


if __name__ == "__main__":
    main()
