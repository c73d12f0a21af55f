"""`make demo`: word count on 1 worker, scaled out to 3 and in to 1 while data flows.

It starts from one worker, which holds every task, so that the scale-out has to
move stateful tasks.

Prints every migration (strategy, keys moved, pause, duration), the top words,
and whether the final counts are exact. Uses the sandbox from `keyshift dev up`
(one Redis per instance when three are available, so state is transferred
Redis-to-Redis; otherwise one shared Redis, so ownership is handed off).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from keyshift.runtime.kafka import read_topic

ROOT = Path(__file__).resolve().parent.parent
TEXT = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun",
    "stream processing keeps state close to the data and moves it when the cluster changes",
    "kafka partitions are the unit of parallelism and redis keeps the state of every task",
    "an elastic service adds and removes instances and its state follows the partitions",
]


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def read(brokers: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    msgs = read_topic({"bootstrap.servers": brokers}, topic, read_committed=True)
    return [(m.key(), m.value()) for m in msgs]


class Demo:
    """One run: its app, topics, supervisor and what it printed already."""

    def __init__(self, brokers: str, redis_urls: list[str]) -> None:
        self.brokers = brokers
        run_id = uuid.uuid4().hex[:6]
        self.names = {
            "WORDCOUNT_APP": f"wordcount-{run_id}",
            "WORDCOUNT_SOURCE": f"sentences-{run_id}",
            "WORDCOUNT_SINK": f"word-counts-{run_id}",
        }
        per_instance = len(redis_urls) >= 3
        self.states = redis_urls[:3] if per_instance else redis_urls[:1]
        self.env = dict(
            os.environ,
            **self.names,
            PYTHONPATH=str(ROOT),
            KEYSHIFT_HOME=os.environ.get("KEYSHIFT_HOME", str(ROOT / ".keyshift")),
        )
        self.log_path = ROOT / ".keyshift" / f"demo-{run_id}.log"
        self.shown: set[bytes] = set()
        say(
            f"app {self.names['WORDCOUNT_APP']}: "
            + ("one Redis per instance " if per_instance else "one shared Redis ")
            + ", ".join(self.states)
        )

    def start(self) -> subprocess.Popen[bytes]:
        source = self.names["WORDCOUNT_SOURCE"]
        admin = AdminClient({"bootstrap.servers": self.brokers})
        admin.create_topics([NewTopic(source, num_partitions=6)])[source].result(30)
        self.log_path.parent.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "keyshift",
            "run",
            "examples.wordcount:app",
            "--instances",
            "1",
        ]
        for url in self.states:
            cmd += ["--state", url]
        with self.log_path.open("wb") as log:
            sup = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        say(f"started `keyshift run ... --instances 1` (worker logs: {self.log_path})")
        return sup

    def produce(self, sentences: list[str]) -> None:
        producer = Producer({"bootstrap.servers": self.brokers, "linger.ms": 5})
        for i, sentence in enumerate(sentences):
            producer.produce(
                self.names["WORDCOUNT_SOURCE"], orjson.dumps(sentence), str(i).encode()
            )
            producer.poll(0)
            time.sleep(1 / 1000)
        producer.flush(30)

    def scale(self, n: int) -> None:
        say(f"keyshift scale examples.wordcount:app --instances {n}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "keyshift",
                "scale",
                "examples.wordcount:app",
                "--instances",
                str(n),
            ],
            cwd=ROOT,
            env=self.env,
            check=True,
        )

    def show_migrations(self) -> None:
        moved = 0
        for _key, value in read(self.brokers, f"{self.names['WORDCOUNT_APP']}--events"):
            if value is None or value in self.shown:
                continue
            self.shown.add(value)
            e = orjson.loads(value)
            if e["from_instance"] in (None, e["to_instance"]):
                continue
            moved += 1
            say(
                f"  migration {e['task']}: {e['from_instance']} -> {e['to_instance']} "
                f"{e['strategy']:<13} keys={e['keys']:<4} pause={e['pause_ms']} ms "
                f"duration={e['duration_ms']} ms tail={e['tail_records']}"
            )
        if not moved:
            say("  (no stateful task changed owner in this step)")

    def final_counts(self, expected: dict[str, int], timeout_s: float = 90) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        final: dict[str, int] = {}
        while time.monotonic() < deadline:
            final = {
                k.decode(): orjson.loads(v)
                for k, v in read(self.brokers, self.names["WORDCOUNT_SINK"])
                if k and v
            }
            if final == expected:
                break
            time.sleep(2)
        return final


def main() -> int:
    brokers = os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092")
    redis_urls = [u for u in os.environ.get("KEYSHIFT_REDIS_URLS", "").split(",") if u]
    if not redis_urls:
        redis_urls = [os.environ.get("KEYSHIFT_STATE", "redis://127.0.0.1:6379/0")]
    demo = Demo(brokers, redis_urls)
    sentences = [TEXT[i % len(TEXT)] for i in range(12000)]
    expected = dict(collections.Counter(w for s in sentences for w in s.split()))
    sup = demo.start()
    try:
        time.sleep(8)
        feeder = threading.Thread(target=demo.produce, args=(sentences,))
        feeder.start()
        say("producing 12000 sentences at ~1000/s")
        time.sleep(3)
        demo.scale(3)
        time.sleep(8)
        demo.show_migrations()
        demo.scale(1)
        feeder.join()
        time.sleep(6)
        demo.show_migrations()
        final = demo.final_counts(expected)
        say("top words:")
        for word, count in sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
            say(f"  {word:<12} {count}")
        exact = final == expected
        say(f"final counts exact: {'yes' if exact else 'NO'} ({len(final)} words)")
        return 0 if exact else 1
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(120)


if __name__ == "__main__":
    sys.exit(main())
