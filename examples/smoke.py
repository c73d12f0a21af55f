"""Smoke demo: one produce/consume round trip through Kafka and a Redis counter.

Temporary stand-in for the real pipeline demo (`make demo DEMO=...`). Uses
KEYSHIFT_BROKERS / KEYSHIFT_REDIS (as exported by `keyshift dev up`), else the
sandbox defaults. Exits non-zero if anything goes wrong.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from keyshift.config import DEFAULT_BROKERS, DEFAULT_STATE

COUNT = 10


def main() -> int:
    brokers = os.environ.get("KEYSHIFT_BROKERS", DEFAULT_BROKERS)
    redis_url = os.environ.get("KEYSHIFT_REDIS") or os.environ.get("KEYSHIFT_STATE", DEFAULT_STATE)
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    print(f"brokers={brokers} redis={redis_url}")

    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)
    print(f"created topic {topic} (3 partitions)")
    try:
        producer = Producer({"bootstrap.servers": brokers})
        for i in range(COUNT):
            producer.produce(topic, key=f"user-{i % 3}", value=f"event-{i}")
        if producer.flush(30):
            print("could not deliver every record", file=sys.stderr)
            return 1
        print(f"produced {COUNT} records")

        consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": f"{topic}-group",
            "auto.offset.reset": "earliest",
        })  # fmt: skip
        consumer.subscribe([topic])
        state = redis.Redis.from_url(redis_url)
        seen = 0
        deadline = time.monotonic() + 60
        try:
            while seen < COUNT and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=COUNT, timeout=1.0):
                    if msg.error():
                        print(f"consumer error: {msg.error()}", file=sys.stderr)
                        return 1
                    state.hincrby(f"{topic}:counts", msg.key().decode(), 1)
                    seen += 1
            counts = {k.decode(): int(v) for k, v in state.hgetall(f"{topic}:counts").items()}
            state.delete(f"{topic}:counts")
        finally:
            consumer.close()
            state.close()
        print(f"consumed {seen} records; per-key counts in Redis: {dict(sorted(counts.items()))}")
        if seen != COUNT or sum(counts.values()) != COUNT:
            print("smoke FAILED", file=sys.stderr)
            return 1
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
        print(f"deleted topic {topic}")
    print("smoke OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
