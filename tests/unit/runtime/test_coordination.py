"""Planned joins and leaves, coordinated over the control topic by the workers
themselves (in-memory cluster; whole workers)."""

from __future__ import annotations

import orjson
import pytest

from fakes import FakeCluster, WorkerThread, wait_for
from keyshift import App
from keyshift.runtime import coordinator
from keyshift.runtime.control import ControlChannel, ControlMessage
from keyshift.runtime.worker import WorkerState

pytestmark = pytest.mark.unit

CONTROL = "wc--control"


def make_app(instance: str, **settings: object) -> App:
    settings.setdefault("commit_interval_ms", 3_600_000)  # commits only when asked
    app = App(
        "wc", brokers="fake:1", state=f"memory://{instance}", instance_id=instance, **settings
    )
    app.stream("words").count(store="counts").to("totals")
    return app


def feed(cluster: FakeCluster, words: list[str]) -> None:
    producer = cluster.clients().producer({})
    for i, word in enumerate(words):
        producer.produce(
            "words", orjson.dumps(word), word.encode(), partition=i % cluster.partitions("words")
        )
    producer.flush()


def messages(cluster: FakeCluster) -> list[ControlMessage]:
    if CONTROL not in cluster.logs:
        return []
    out = [ControlMessage.decode(m.value()) for m in cluster.records(CONTROL)]
    return [m for m in out if m is not None]


def said(cluster: FakeCluster, kind: str, instance: str) -> bool:
    return any(m.kind == kind and m.instance == instance for m in messages(cluster))


def outsider(cluster: FakeCluster, instance: str) -> ControlChannel:
    """A process that speaks on the control topic without running a worker."""
    clients = cluster.clients()
    channel = ControlChannel(
        CONTROL,
        clients.consumer({"group.id": "x"}),
        clients.producer({}),
        instance=instance,
        incarnation=instance,
    )
    channel.start()
    return channel


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    monkeypatch.setattr(coordinator, "HELLO_EXPIRES_S", 30.0)
    made = FakeCluster()
    made.create_topic("words", 4)
    return made


def test_a_worker_waits_to_join_until_the_others_starting_with_it_are_ready(
    cluster: FakeCluster,
) -> None:
    first = make_app("a").worker(clients=cluster.clients())
    with WorkerThread(first):
        assert wait_for(lambda: first.state is WorkerState.RUNNING)
        slow = outsider(cluster, "slow")
        slow.publish("hello")
        second = make_app("b").worker(clients=cluster.clients())
        with WorkerThread(second):
            assert wait_for(lambda: said(cluster, "join", "b"))
            assert second.state is WorkerState.JOINING  # waits for "slow"
            slow.publish("join")
            assert wait_for(lambda: second.state is WorkerState.RUNNING)


def test_running_workers_commit_before_a_new_one_joins(cluster: FakeCluster) -> None:
    first = make_app("a").worker(clients=cluster.clients())
    with WorkerThread(first):
        feed(cluster, ["x"] * 8)
        assert wait_for(lambda: first.metrics.records_in == 8)
        assert not any(k[0] == "wc" for k in cluster.offsets)  # nothing committed yet
        second = make_app("b").worker(clients=cluster.clients())
        with WorkerThread(second):
            assert wait_for(lambda: second.state is WorkerState.RUNNING)
            # "a" committed and acked before "b" subscribed.
            assert said(cluster, "ack", "a")
            assert sum(o for (g, _, _), o in cluster.offsets.items() if g == "wc") == 8


def test_workers_stopped_together_leave_together(cluster: FakeCluster) -> None:
    stay = make_app("stay").worker(clients=cluster.clients())
    one = make_app("one").worker(clients=cluster.clients())
    two = make_app("two").worker(clients=cluster.clients())
    with WorkerThread(stay), WorkerThread(one) as first, WorkerThread(two) as second:
        assert wait_for(lambda: all(w.state is WorkerState.RUNNING for w in (stay, one, two)))
        feed(cluster, [f"w{i}" for i in range(40)])
        assert wait_for(lambda: sum(w.metrics.records_in for w in (stay, one, two)) == 40)
        one.stop()
        two.stop()
        assert wait_for(lambda: first.done and second.done)
        assert wait_for(lambda: len(stay.tasks) == 4)
        feed(cluster, ["late"])
        assert wait_for(lambda: len(cluster.records("totals")) == 41)
    kinds = [(m.kind, m.instance) for m in messages(cluster)]
    # Each leaver made its last commit before either left the group.
    lasts = [kinds.index(("last", name)) for name in ("one", "two")]
    byes = [kinds.index(("bye", name)) for name in ("one", "two")]
    assert max(lasts) < min(byes)
    # The staying worker committed ahead of the leave and said so.
    assert ("ack", "stay") in kinds
    assert sorted(m.key() for m in cluster.records("totals")) == sorted(
        [f"w{i}".encode() for i in range(40)] + [b"late"]
    )


def test_a_lone_worker_stops_without_waiting_for_anyone(cluster: FakeCluster) -> None:
    worker = make_app("a").worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        worker.stop()
        assert wait_for(lambda: running.done, 3)
    assert worker.state is WorkerState.STOPPED
    assert [m.kind for m in messages(cluster)][-3:] == ["leave", "last", "bye"]


def test_malformed_control_records_are_skipped(cluster: FakeCluster) -> None:
    worker = make_app("a").worker(clients=cluster.clients())
    with WorkerThread(worker):
        assert wait_for(lambda: worker.state is WorkerState.RUNNING)
        producer = cluster.clients().producer({})
        for junk in (b"junk", b"[]", b'{"kind": "join"}', b'{"kind":"ack","instance":1}'):
            producer.produce(CONTROL, junk, b"x", partition=0)
        producer.flush()
        feed(cluster, ["x"])
        assert wait_for(lambda: worker.metrics.records_in == 1)
    assert worker.state is WorkerState.STOPPED
