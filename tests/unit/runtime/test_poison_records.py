"""No record blocks a partition: what cannot be processed goes to the dead-letter
topic (cut down to fit if needed), and what is not the record's fault is never
blamed on it."""

from __future__ import annotations

import orjson
import pytest

from fakes import FakeCluster, WorkerThread, wait_for
from keyshift import App
from keyshift.errors import StateError

pytestmark = pytest.mark.unit


def caught_up(cluster: FakeCluster, app: str, topic: str = "in") -> bool:
    return all(
        cluster.offsets.get((app, topic, p), 0) >= cluster.high(topic, p)
        for p in range(cluster.partitions(topic))
    )


def feed(
    cluster: FakeCluster,
    records: list[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
    topic: str = "in",
) -> None:
    producer = cluster.clients().producer({"message.max.bytes": 10_000_000})
    for key, value in records:
        producer.produce(topic, value, key, partition=0, headers=headers)
    producer.flush()


def dead_letters(cluster: FakeCluster, app: str) -> list[dict[str, bytes]]:
    return [dict(m.headers() or []) for m in cluster.records(f"{app}--dlq")]


def counting(app_id: str = "p", **kwargs: object) -> App:
    app = App(app_id, brokers="fake:1", state="memory://p", commit_interval_ms=10)
    app.stream("in", **kwargs).count(store="counts").to("out")  # type: ignore[arg-type]
    return app


def test_a_record_too_large_for_the_dead_letter_topic_is_cut_down_not_fatal() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    huge = b"{" * 999_950  # not JSON, and with headers over the producer's 1 MB
    feed(cluster, [(b"k", huge), (b"k", b'"fine"')])
    worker = counting().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: caught_up(cluster, "p"))
    assert running.error is None
    (letter,) = cluster.records("p--dlq")
    headers = dict(letter.headers() or [])
    assert headers["ks.stage"] == b"deserialize"
    assert headers["ks.truncated"] == f"key=1 value={len(huge)}".encode()
    assert 0 < len(letter.value() or b"") < len(huge)
    assert [orjson.loads(m.value()) for m in cluster.records("out")] == [1]


class Exploding:
    """A custom serde that fails with something other than SerializationError."""

    def serialize(self, obj: object) -> bytes | None:
        return orjson.dumps(obj)

    def deserialize(self, data: bytes | None) -> object:
        if data == b'"boom"':
            raise ValueError("cannot read this")
        return None if data is None else orjson.loads(data)


def test_any_error_of_a_custom_serde_dead_letters_the_record() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    feed(cluster, [(b"a", b'"boom"'), (b"a", b'"ok"')])
    with WorkerThread(counting(value_serde=Exploding()).worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "p"))
    (letter,) = dead_letters(cluster, "p")
    assert letter["ks.stage"] == b"deserialize" and b"ValueError" in letter["ks.error"]
    assert [orjson.loads(m.value()) for m in cluster.records("out")] == [1]


def test_a_malformed_origin_header_on_a_repartition_topic_is_dead_lettered() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    app = App("r", brokers="fake:1", state="memory://r", commit_interval_ms=10)
    app.stream("in").key_by(lambda v: v, name="by").count(store="counts").to("out")
    with WorkerThread(app.worker(clients=cluster.clients())):
        assert wait_for(lambda: "r--by-repartition" in cluster.logs)
        feed(cluster, [(b"x", b'"x"')], headers=[("ks.o", b"\x01\x02")], topic="r--by-repartition")
        feed(cluster, [(None, b'"y"')])
        assert wait_for(
            lambda: (
                caught_up(cluster, "r", "r--by-repartition") and len(cluster.records("out")) == 1
            )
        )
    (letter,) = dead_letters(cluster, "r")
    assert letter["ks.stage"] == b"header" and letter["ks.topic"] == b"r--by-repartition"


def test_headers_a_source_record_carries_are_not_taken_for_keyshifts() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    forged = [("ks.o", b"\x00" * 16), ("ks.marker", b"2")]
    feed(cluster, [(b"a", b'"v"'), (b"a", b'"v"')], headers=forged)
    with WorkerThread(counting().worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "p"))
    assert [orjson.loads(m.value()) for m in cluster.records("out")] == [1, 2]
    assert cluster.records("p--dlq") == []


def test_the_reserved_marker_key_is_dead_lettered_and_the_changelog_stays_sound() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    feed(cluster, [(b"\x00keyshift.stamp", b'"x"'), (b"a", b'"x"')])
    with WorkerThread(counting().worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "p"))
    (letter,) = dead_letters(cluster, "p")
    assert letter["ks.stage"] == b"process" and b"reserved" in letter["ks.error"]
    keys = [m.key() for m in cluster.records("p--counts-changelog")]
    assert keys.count(b"\x00keyshift.stamp") == 1  # the one marker, with its header
    assert all(
        m.headers()
        for m in cluster.records("p--counts-changelog")
        if m.key() == b"\x00keyshift.stamp"
    )


def test_a_state_backend_failure_stops_the_worker_and_dead_letters_nothing() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    worker = counting().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: "p--counts-changelog" in cluster.logs)
        cluster.store_down = True
        feed(cluster, [(b"a", b'"v"')])
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, StateError)
    assert cluster.records("p--dlq") == [] and worker.metrics.dead_letters == 0
    assert cluster.offsets.get(("p", "in", 0)) is None
