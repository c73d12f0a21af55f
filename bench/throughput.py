"""Throughput: raw confluent-kafka loop vs keyshift (at_least_once, exactly_once).

Loads N records (~60 bytes: a word key and a small JSON value) into a
12-partition topic, then runs one after the other, in this one process:

  (a) raw:  consume -> orjson decode -> dict count per key -> produce the count
  (b) keyshift at_least_once:  app.stream(src).count(store=...).to(out)
  (c) keyshift exactly_once:   the same with transactions

and prints records/s of each and the ratios b/a and c/a. The keyshift job is a
word count over pre-keyed words (the records' keys are the words), so the
three do the same work: decode, count per key, produce the running count.

    python bench/throughput.py --records 1000000
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
import uuid

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from keyshift import App

PARTITIONS = 12


def load(brokers: str, topic: str, n: int, vocab: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)]).values():
        f.result(30)
    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2_000_000,
            "partitioner": "murmur2_random",
        }
    )
    pad = "x" * 24
    for i in range(n):
        word = f"word{(i * 7919) % vocab:05d}"
        while True:
            try:
                p.produce(topic, orjson.dumps({"w": word, "i": i, "p": pad}), word.encode())
                break
            except BufferError:
                p.poll(0.1)
    p.flush(120)


def raw_loop(brokers: str, topic: str, n: int) -> float:
    out = f"{topic}-raw-out"
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 10,
            "enable.idempotence": True,
            "acks": "all",
            "batch.num.messages": 10000,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(out, num_partitions=PARTITIONS)])[out].result(30)
    c.subscribe([topic])
    counts: collections.Counter[bytes] = collections.Counter()
    seen = 0
    started = None
    loads = orjson.loads
    while seen < n:
        msgs = c.consume(5000, 0.5)
        if not msgs:
            continue
        if started is None:
            started = time.perf_counter()
        for m in msgs:
            if m.error():
                continue
            key = m.key()
            loads(m.value())
            counts[key] += 1
            while True:
                try:
                    p.produce(out, orjson.dumps(counts[key]), key)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        seen += len(msgs)
    p.flush(60)
    c.commit(asynchronous=False)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return n / elapsed


def keyshift_run(brokers: str, state: str, topic: str, n: int, guarantee: str) -> float:
    app_id = f"bench-{guarantee[:4]}-{uuid.uuid4().hex[:6]}"
    app = App(app_id, brokers=brokers, state=state, guarantee=guarantee)
    app.stream(topic).count(store="counts").to(f"{app_id}-out")
    worker = app.worker()
    first: list[float] = []

    done: list[float] = []

    def watch() -> None:
        while worker.metrics.records_in < n:
            if worker.metrics.records_in and not first:
                first.append(time.perf_counter())
            time.sleep(0.005)
        # Measured to the last record processed: commits run every commit
        # interval meanwhile; the final one and leaving the group are not measured.
        done.append(time.perf_counter())
        worker.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    worker.run()
    watcher.join()
    return n / (done[0] - first[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--brokers", default=os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092"))
    parser.add_argument(
        "--state",
        default=os.environ.get(
            "KEYSHIFT_STATE", os.environ.get("KEYSHIFT_REDIS", "redis://127.0.0.1:6379/0")
        ),
    )
    args = parser.parse_args()
    topic = f"bench-src-{uuid.uuid4().hex[:6]}"
    print(f"loading {args.records} records into {topic} ({PARTITIONS} partitions)...", flush=True)
    load(args.brokers, topic, args.records, args.vocab)
    a = raw_loop(args.brokers, topic, args.records)
    print(f"(a) raw confluent-kafka loop     {a:>10,.0f} records/s", flush=True)
    b = keyshift_run(args.brokers, args.state, topic, args.records, "at_least_once")
    print(f"(b) keyshift at_least_once       {b:>10,.0f} records/s", flush=True)
    c = keyshift_run(args.brokers, args.state, topic, args.records, "exactly_once")
    print(f"(c) keyshift exactly_once        {c:>10,.0f} records/s", flush=True)
    print(f"ratio b/a = {b / a:.2f}   (goal >= 0.50)")
    print(f"ratio c/a = {c / a:.2f}   (goal >= 0.35)")


if __name__ == "__main__":
    main()
