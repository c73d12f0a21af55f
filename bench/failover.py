"""Failover: how long a crashed (kill -9) worker's partitions stand still.

Two independent ``keyshift worker`` processes (each with its own Redis, both
peers) run a keyed count under a steady load; one is killed with SIGKILL. A
crashed member sends no leave: its partitions move when the group's session
timeout expires, then their state is restored (from the dead worker's Redis,
which is still up, progressively). Prints, per group protocol, the session
timeout, the longest and median pause of the moved partitions (last record
processed by the dead worker -> first record processed by the survivor), and
whether the final counts are exact.

    python bench/failover.py                      # both protocols
    python bench/failover.py --protocols consumer --keys 20000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from migration import (  # noqa: E402 - a sibling script, not a package
    APP,
    Independent,
    Load,
    pct,
    read_all,
    start_redis,
    wait_for_outputs,
)


def run(
    protocol: str, args: argparse.Namespace, urls: list[str], workdir: Path
) -> dict[str, object]:
    brokers = args.brokers
    rid = uuid.uuid4().hex[:6]
    app_id, source, sink = f"fo-{rid}", f"fo-src-{rid}", f"fo-out-{rid}"
    admin = AdminClient({"bootstrap.servers": brokers})  # alive until the topic exists
    admin.create_topics([NewTopic(source, num_partitions=args.partitions)])[source].result(30)
    module = f"foapp_{rid}"
    (workdir / f"{module}.py").write_text(APP.format(app_id=app_id, source=source, sink=sink))
    env = dict(
        os.environ,
        PYTHONPATH=str(workdir),
        KEYSHIFT_BROKERS=brokers,
        KEYSHIFT_GROUP_PROTOCOL=protocol,
        KEYSHIFT_PEERS=",".join(urls),
    )
    load = Load(brokers, source, args.keys, args.rate)
    with (workdir / f"{app_id}.log").open("wb") as log:
        fleet = Independent(f"{module}:app", urls, env, workdir, log, quiet=True, instances=2)
        try:
            load.build()
            wait_for_outputs(brokers, sink, args.keys, 600)
            load.start()
            time.sleep(args.seconds)  # steady phase before the crash
            victim = fleet.procs[1]
            killed_ms = time.time() * 1000
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            fleet.procs.pop(1)
            time.sleep(args.seconds + 12)  # beyond the session timeout, then steady again
            load.stop()
            wait_for_outputs(brokers, sink, sum(load.expected.values()), 300)
        finally:
            fleet.stop()
    final = {k.decode(): orjson.loads(v) for k, v, _ in read_all(brokers, sink) if k and v}
    events = [orjson.loads(v) for _, v, _ in read_all(brokers, f"{app_id}--events") if v]
    moved = [
        e
        for e in events
        if e["from_instance"] == "w1"
        and e["to_instance"] == "w0"
        and e["assigned_ms"] > killed_ms
        and e["pause_ms"] is not None
    ]
    pauses = [float(e["pause_ms"]) for e in moved]
    return {
        "protocol": protocol,
        "moves": len(moved),
        "max_pause_ms": max(pauses, default=float("nan")),
        "p50_pause_ms": pct(pauses, 0.5),
        "max_after_kill_ms": max(
            (e["assigned_ms"] + (e["resume_ms"] or 0) - killed_ms for e in moved),
            default=float("nan"),
        ),
        "strategies": sorted({e["strategy"] for e in moved}),
        "exact": final == load.expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--protocols", default="consumer,classic")
    parser.add_argument("--brokers", default=os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092"))
    args = parser.parse_args()
    procs, urls = start_redis(2)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for protocol in args.protocols.split(","):
                print(f"running {protocol}...", file=sys.stderr, flush=True)
                rows.append(run(protocol, args, urls, Path(tmp)))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print(
        "| protocol | moves | max pause ms | median pause ms | kill -> first record ms "
        "| strategies | exact |"
    )
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['protocol']} | {r['moves']} | {r['max_pause_ms']:.0f} | "
            f"{r['p50_pause_ms']:.0f} | {r['max_after_kill_ms']:.0f} | "
            f"{','.join(r['strategies'])} | {'yes' if r['exact'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
