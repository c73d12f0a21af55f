"""Kept partitions after a slow revocation: with and without waking the fetchers.

librdkafka pauses every assigned partition while a rebalance callback runs and
resumes them without waking the broker threads that fetch them (see
:mod:`keyshift.runtime.fetch_wake`). This script shows what that costs and what
the wake saves, side by side in one run, with bare confluent-kafka consumers:

1. a producer writes ``--rate`` records/s, spread over ``--partitions``
   partitions, each record carrying its send time;
2. consumer A (KIP-848) owns every partition; after ``--settle`` seconds
   consumer B joins and takes half of them. A's revocation callback spends
   ``--revoke-ms`` (a worker commits there) before it unassigns;
3. the largest gap between two records of a partition A keeps, from one
   second before the revocation to three seconds after, and the largest
   latency (receive - send) in that span, are measured.

Each round runs once as librdkafka does it ("plain") and once with
:func:`keyshift.runtime.fetch_wake.wake_fetchers` after each callback
("woken"), alternately, each on a fresh topic and group. Prints every round,
the medians, and the ratio plain / woken of the median gaps.

    python bench/fetch_wake.py --rounds 3 --revoke-ms 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from keyshift.runtime.fetch_wake import wake_fetchers


class Load(threading.Thread):
    def __init__(self, brokers: str, topic: str, partitions: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.stop = threading.Event()

    def run(self) -> None:
        per_turn = self.partitions
        interval = per_turn / self.rate
        while not self.stop.is_set():
            for partition in range(self.partitions):
                self.producer.produce(self.topic, repr(time.time()).encode(), partition=partition)
            self.producer.poll(0)
            time.sleep(interval)
        self.producer.flush(10)


class Member(threading.Thread):
    """A group consumer that records (receive time, partition, latency) per record."""

    def __init__(
        self, brokers: str, topic: str, group: str, until: float, revoke_s: float, wake: bool
    ) -> None:
        super().__init__(daemon=True)
        self.config = {
            "bootstrap.servers": brokers,
            "group.id": group,
            "group.protocol": "consumer",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
        self.topic, self.until, self.revoke_s, self.wake = topic, until, revoke_s, wake
        self.records: list[tuple[float, int, float]] = []
        self.revoked: list[tuple[float, list[int]]] = []

    def run(self) -> None:
        consumer = Consumer(self.config)
        admin = AdminClient({"bootstrap.servers": self.config["bootstrap.servers"]})

        def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
            c.incremental_assign(parts)
            if self.wake:
                wake_fetchers(c, parts, admin)

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            if parts:
                self.revoked.append((time.time(), [tp.partition for tp in parts]))
                time.sleep(self.revoke_s)
            c.incremental_unassign(parts)
            if self.wake:
                wake_fetchers(c, parts, admin)

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        while time.time() < self.until:
            for msg in consumer.consume(500, 0.05):
                if msg.error() is None:
                    now = time.time()
                    self.records.append((now, msg.partition(), now - float(msg.value())))
        consumer.close()


def one_round(args: argparse.Namespace, wake: bool) -> tuple[float, float]:
    """Largest gap and largest latency (ms) on A's kept partitions around the revocation."""
    admin = AdminClient({"bootstrap.servers": args.brokers})
    topic = f"bench-wake-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(30)
    load = Load(args.brokers, topic, args.partitions, args.rate)
    load.start()
    group = f"{topic}-g"
    end = time.time() + args.settle + 6
    first = Member(args.brokers, topic, group, end, args.revoke_ms / 1000, wake)
    first.start()
    time.sleep(args.settle)
    second = Member(args.brokers, topic, group, end, args.revoke_ms / 1000, wake)
    second.start()
    first.join()
    second.join()
    load.stop.set()
    load.join()
    admin.delete_topics([topic])
    if not first.revoked:
        raise SystemExit("the first consumer was never asked to give partitions away")
    at, moved = first.revoked[0]
    kept = set(range(args.partitions)) - set(moved)
    span = [(t, p, lat) for t, p, lat in first.records if at - 1 < t < at + 3 and p in kept]
    gaps = []
    for partition in kept:
        times = [t for t, p, _ in span if p == partition]
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
    return max(gaps, default=0.0) * 1000, max((lat for *_, lat in span), default=0.0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092"))
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rate", type=int, default=1000, help="records/s")
    parser.add_argument("--revoke-ms", type=int, default=200, help="time spent in on_revoke")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds before B joins")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "woken": []}
    for n in range(args.rounds):
        for name in ("plain", "woken"):
            gap, latency = one_round(args, wake=name == "woken")
            results[name].append((gap, latency))
            print(f"round {n + 1} {name:5}  max gap {gap:6.0f} ms   max latency {latency:6.0f} ms")
    print()
    print("| run | median max gap ms | median max latency ms |")
    print("|---|---:|---:|")
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(g for g, _ in rows)
        latency = statistics.median(lat for _, lat in rows)
        print(f"| {name} | {medians[name]:.0f} | {latency:.0f} |")
    print(
        f"\nratio plain / woken of the median max gap: {medians['plain'] / medians['woken']:.1f}x"
    )


if __name__ == "__main__":
    main()
