"""`make demo`: word count on 1 worker, scaled out to 3 and in to 1 while data flows.

It starts from one worker so that the scale-out has to move stateful tasks: from
two workers, each holding three source and three repartition partitions, the
sticky assignor gave the third worker only source (stateless) partitions.

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


def main() -> int:
    brokers = os.environ.get("KEYSHIFT_BROKERS", "127.0.0.1:9092")
    redis_urls = [u for u in os.environ.get("KEYSHIFT_REDIS_URLS", "").split(",") if u]
    if not redis_urls:
        redis_urls = [os.environ.get("KEYSHIFT_STATE", "redis://127.0.0.1:6379/0")]
    run_id = uuid.uuid4().hex[:6]
    names = {"WORDCOUNT_APP": f"wordcount-{run_id}", "WORDCOUNT_SOURCE": f"sentences-{run_id}",
             "WORDCOUNT_SINK": f"word-counts-{run_id}"}
    env = dict(os.environ, **names, PYTHONPATH=str(ROOT),
               KEYSHIFT_HOME=os.environ.get("KEYSHIFT_HOME", str(ROOT / ".keyshift")))
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(names["WORDCOUNT_SOURCE"], num_partitions=6)])[
        names["WORDCOUNT_SOURCE"]].result(30)

    per_instance = len(redis_urls) >= 3
    states = redis_urls[:3] if per_instance else redis_urls[:1]
    say(f"app {names['WORDCOUNT_APP']}: "
        + ("one Redis per instance " if per_instance else "one shared Redis ") + ", ".join(states))
    log_path = ROOT / ".keyshift" / f"demo-{run_id}.log"
    log_path.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "keyshift", "run", "examples.wordcount:app", "--instances", "1"]
    for url in states:
        cmd += ["--state", url]
    with log_path.open("wb") as log:
        sup = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    say(f"started `keyshift run ... --instances 1` (worker logs: {log_path})")

    sentences = [TEXT[i % len(TEXT)] for i in range(12000)]
    expected = collections.Counter(w for s in sentences for w in s.split())

    def produce() -> None:
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        for i, sentence in enumerate(sentences):
            producer.produce(names["WORDCOUNT_SOURCE"], orjson.dumps(sentence), str(i).encode())
            producer.poll(0)
            time.sleep(1 / 1000)
        producer.flush(30)

    def scale(n: int) -> None:
        say(f"keyshift scale examples.wordcount:app --instances {n}")
        subprocess.run([sys.executable, "-m", "keyshift", "scale", "examples.wordcount:app",
                        "--instances", str(n)], cwd=ROOT, env=env, check=True)

    shown: set[bytes] = set()

    def show_migrations() -> None:
        moved = 0
        for _key, value in read(brokers, f"{names['WORDCOUNT_APP']}--events"):
            if value is None or value in shown:
                continue
            shown.add(value)
            e = orjson.loads(value)
            if e["from_instance"] in (None, e["to_instance"]):
                continue
            moved += 1
            say(f"  migration {e['task']}: {e['from_instance']} -> {e['to_instance']} "
                f"{e['strategy']:<13} keys={e['keys']:<4} pause={e['pause_ms']} ms "
                f"duration={e['duration_ms']} ms tail={e['tail_records']}")
        if not moved:
            say("  (no stateful task changed owner in this step)")

    try:
        time.sleep(8)
        feeder = threading.Thread(target=produce)
        feeder.start()
        say("producing 12000 sentences at ~1000/s")
        time.sleep(3)
        scale(3)
        time.sleep(8)
        show_migrations()
        scale(1)
        feeder.join()
        time.sleep(6)
        show_migrations()
        deadline = time.monotonic() + 90
        final: dict[str, int] = {}
        while time.monotonic() < deadline:
            final = {k.decode(): orjson.loads(v)
                     for k, v in read(brokers, names["WORDCOUNT_SINK"]) if k and v}
            if final == dict(expected):
                break
            time.sleep(2)
        say("top words:")
        for word, count in sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
            say(f"  {word:<12} {count}")
        exact = final == dict(expected)
        say(f"final counts exact: {'yes' if exact else 'NO'} ({len(final)} words)")
        return 0 if exact else 1
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(120)


if __name__ == "__main__":
    sys.exit(main())
