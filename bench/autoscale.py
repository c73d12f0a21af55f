"""Autoscaling policies side by side: DS2 against KEDA's lag rule, on one load trace.

For each policy a fresh app runs under ``keyshift run`` (the local supervisor),
starting with one instance, while a load generator plays the trace (records per
second, each step held ``--step-seconds``). Every record costs a worker
``--cost-ms`` of busy time, spent sleeping: one instance then saturates at
about ``1000 / cost`` records/s however many cores the machine has, so the
trace can need more instances than this machine has CPUs. The autoscaler
(``keyshift autoscale``'s loop, in this process) drives the supervisor with one
policy; the other policy gets the same trace afterwards.

Printed per policy: the instance counts each step's decisions chose, decisions
to settle per step, overshoot (instances above a step's final count, chosen
during it), oscillations (direction changes within a step: the load did not
change), instance-seconds (cost), the largest lag, the largest end-to-end
latency (output receive time - input record time) and whether every key's
final count is exact.

    python bench/autoscale.py                                  # both policies
    python bench/autoscale.py --trace 200,1500,600,2500,200 --step-seconds 60
    python bench/autoscale.py --policies ds2 --keep
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from migration import LatencyProbe, read_all  # noqa: E402 - a sibling script

from keyshift.orchestration.autoscale import Bounds, Decision, DS2Policy, LagPolicy, Policy
from keyshift.orchestration.autoscaler import Autoscaler, JobProbe

APP = """
import time
from keyshift import App

def costly(value):
    time.sleep({cost_s!r})
    return value

# Small batches: a batch of costly records holds the loop (commits, rate
# reports) for as long as it takes.
app = App({app_id!r}, commit_interval_ms=500, batch_size=100)
app.stream({source!r}).map(costly).count(store="counts").to({sink!r})
"""


class TraceLoad:
    """Produces keyed records at the trace's current rate; counts them per key."""

    def __init__(self, brokers: str, topic: str, keys: int) -> None:
        self.topic, self.keys, self.rate = topic, keys, 0.0
        self.expected: dict[bytes, int] = {}
        self.producer = Producer(
            {"bootstrap.servers": brokers, "linger.ms": 10, "partitioner": "murmur2_random"}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        due = 0.0
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            due += self.rate * (now - last)
            last = now
            while due >= 1:
                key = f"key-{rng.randrange(self.keys):06d}".encode()
                try:
                    self.producer.produce(self.topic, orjson.dumps(1), key)
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                self.expected[key] = self.expected.get(key, 0) + 1
                due -= 1
            self.producer.poll(0)
            time.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.flush(60)


class Sampler(threading.Thread):
    """Samples the group's size and lag every second."""

    def __init__(self, probe: JobProbe) -> None:
        super().__init__(daemon=True)
        self.probe = probe
        self.sizes: list[tuple[float, int]] = []
        self.lags: list[int] = []
        self.stop_flag = False

    def run(self) -> None:
        while not self.stop_flag:
            try:
                self.sizes.append((time.monotonic(), len(self.probe.members())))
                self.lags.append(self.probe.backlog())
            except Exception:  # noqa: BLE001 - a sample missed, the next one counts
                pass
            time.sleep(1.0)


@dataclass
class Outcome:
    policy: str
    steps: list[list[int]]  # per step: the count at its start, then each change
    instance_seconds: float
    max_lag: int
    max_latency_ms: float
    exact: bool
    decisions: list[Decision]

    def overshoot(self) -> int:
        return sum(max([0, *(c - s[-1] for c in s[1:])]) for s in self.steps)

    def oscillations(self) -> int:
        total = 0
        for counts in self.steps:
            moves = [b - a for a, b in zip(counts, counts[1:], strict=False) if b != a]
            total += sum(1 for a, b in zip(moves, moves[1:], strict=False) if (a > 0) != (b > 0))
        return total


def start_supervisor(ref: str, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "keyshift", "run", ref, "--instances", "1"]
    with (workdir / "run.log").open("ab") as log:
        return subprocess.Popen(
            [*cmd, "--log-level", "WARNING"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def run_policy(name: str, args: argparse.Namespace, workdir: Path) -> Outcome:
    rid = uuid.uuid4().hex[:6]
    app_id, source, sink = f"as-{rid}", f"as-src-{rid}", f"as-out-{rid}"
    admin = AdminClient({"bootstrap.servers": args.brokers})
    admin.create_topics([NewTopic(source, num_partitions=args.partitions)])[source].result(30)
    module = f"asapp_{rid}"
    (workdir / f"{module}.py").write_text(
        APP.format(cost_s=args.cost_ms / 1000, app_id=app_id, source=source, sink=sink)
    )
    home = workdir / f"home-{rid}"
    env = dict(os.environ, PYTHONPATH=str(workdir), KEYSHIFT_HOME=str(home))
    env["KEYSHIFT_BROKERS"] = args.brokers
    os.environ["KEYSHIFT_HOME"] = str(home)  # where the autoscaler finds the supervisor
    sys.path.insert(0, str(workdir))
    job = importlib.import_module(module).app
    bounds = Bounds(1, args.max)
    policy: Policy = (
        DS2Policy(bounds, target_utilization=args.target_utilization)
        if name == "ds2"
        else LagPolicy(bounds, lag_threshold=args.lag_threshold)
    )
    probe = JobProbe(job.settings, job.topology)
    scaler = Autoscaler(probe, policy, backend="local", window_s=args.window)
    load = TraceLoad(args.brokers, source, args.keys)
    latency = LatencyProbe(args.brokers, sink)
    sampler = Sampler(JobProbe(job.settings, job.topology))
    stop = threading.Event()
    sup = start_supervisor(f"{module}:app", workdir, env)
    boundaries: list[int] = []

    def drive() -> None:
        while not stop.is_set():
            scaler.step()

    driver = threading.Thread(target=drive, daemon=True)
    try:
        deadline = time.monotonic() + 60
        while len(probe.members()) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        latency.start()
        sampler.start()
        load.start()
        driver.start()
        for rate in args.trace:
            boundaries.append(len(scaler.decisions))
            load.rate = rate
            log(f"[{name}] {rate} records/s for {args.step_seconds}s")
            time.sleep(args.step_seconds)
        boundaries.append(len(scaler.decisions))
        load.stop()
        stop.set()
        total = sum(load.expected.values())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sampler.lags and sampler.lags[-1] > 0:
            time.sleep(2)
        time.sleep(5)
        driver.join(args.window * 4 + 180)
    finally:
        sampler.stop_flag = True
        latency.stop_flag = True
        sup.terminate()
        sup.wait(120)
        probe.close()
    final: dict[bytes, int] = {}
    for key, value, _ in read_all(args.brokers, sink):
        if key is not None and value is not None:
            final[key] = max(final.get(key, 0), orjson.loads(value))
    exact = final == load.expected
    log(f"[{name}] {total} records; exact={exact}")
    steps, current = [], 1
    for lo, hi in zip(boundaries, boundaries[1:], strict=False):
        counts = [current]
        for decision in scaler.decisions[lo:hi]:
            if decision.changes:
                counts.append(decision.instances)
        current = counts[-1]
        steps.append(counts)
    sizes = sampler.sizes
    instance_seconds = sum(
        n * (t2 - t1) for (t1, n), (t2, _) in zip(sizes, sizes[1:], strict=False)
    )
    return Outcome(
        name,
        steps,
        instance_seconds,
        max(sampler.lags, default=0),
        max((ms for _, ms in latency.samples), default=float("nan")),
        exact,
        scaler.decisions,
    )


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} autoscale: {message}", file=sys.stderr, flush=True)


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    steps = " → ".join(str(r) for r in args.trace)
    lines = [
        f"Trace {steps} records/s, {args.step_seconds} s each; {args.cost_ms} ms busy time "
        f"per record; {args.partitions} partitions; window {args.window} s.",
        "",
        "| policy | counts chosen per step | decisions | max per step | overshoot | "
        "oscillations | instance-seconds | max lag | max latency s | exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        chosen = " / ".join("→".join(map(str, s)) for s in o.steps)
        changes = [len(s) - 1 for s in o.steps]
        lines.append(
            f"| {o.policy} | {chosen} | {sum(changes)} | {max(changes)} | {o.overshoot()} | "
            f"{o.oscillations()} | {o.instance_seconds:,.0f} | {o.max_lag:,} | "
            f"{o.max_latency_ms / 1000:.1f} | {'yes' if o.exact else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092"))
    parser.add_argument(
        "--trace",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[250.0, 2000.0, 750.0, 3000.0, 250.0],
        help="records/s per step, comma-separated",
    )
    parser.add_argument("--step-seconds", type=float, default=90.0)
    parser.add_argument("--cost-ms", type=float, default=2.0)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--max", type=int, default=12)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--target-utilization", type=float, default=0.7)
    parser.add_argument("--lag-threshold", type=int, default=1000)
    parser.add_argument("--policies", default="ds2,lag")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keyshift-autoscale-"))
    outcomes = [run_policy(p, args, workdir) for p in args.policies.split(",")]
    print(table(outcomes, args))
    for o in outcomes:
        print(f"\n{o.policy} decisions:")
        for d in o.decisions:
            print(f"- {d.instances} ({'change' if d.changes else 'keep'}): {d.reason}")
    log(f"work directory: {workdir}" if args.keep else "done")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if all(o.exact for o in outcomes) else 1)


if __name__ == "__main__":
    main()
