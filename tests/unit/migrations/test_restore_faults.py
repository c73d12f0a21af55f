"""Restores after faults, on the in-memory cluster with named memory stores as
each instance's state: deletions in the changelog tail, a set-aside cut short
by a crash, records no marker covers."""

from __future__ import annotations

import orjson
import pytest

from fakes import FakeCluster, Life, WorkerThread, wait_for
from keyshift import App
from keyshift.migrations.replay import ChangelogApplier
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_HEADERS, MARKER_KEY
from keyshift.state.memory.store import MemoryPartition

pytestmark = pytest.mark.unit


def feed(cluster: FakeCluster, topic: str, items: list[tuple[str, str]]) -> None:
    producer = cluster.clients().producer({})
    for key, value in items:
        producer.produce(topic, orjson.dumps(value), key.encode(), partition=0)
    producer.flush()


def caught_up(cluster: FakeCluster, group: str, topic: str = "in") -> bool:
    return cluster.offsets.get((group, topic, 0), 0) >= cluster.high(topic, 0)


def outputs(cluster: FakeCluster, topic: str = "out") -> list[tuple[str, object]]:
    return [
        (m.key().decode(), None if m.value() is None else orjson.loads(m.value()))
        for m in cluster.records(topic)
    ]


def concat_app(url: str, instance: str, **settings: object) -> App:
    """Concatenates values per key; the value "del" deletes the key."""
    app = App(
        "r", brokers="fake:1", state=url, instance_id=instance, commit_interval_ms=10, **settings
    )
    app.stream("in").reduce(lambda acc, v: None if v == "del" else acc + v, store="latest").to(
        "out"
    )
    return app


def test_a_key_deleted_in_the_changelog_tail_stays_deleted_after_a_progressive_copy() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    feed(cluster, "in", [("k", "old"), ("other", "x")])
    with WorkerThread(concat_app("memory://A", "a").worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "r"))
    # The old owner deleted k and wrote the changelog, then died before its
    # store write: the deletion is only in the changelog tail.
    source = cluster.store("memory://A").partition("r", "latest", 0)
    stamp = source.read_stamp()
    assert stamp is not None and source.data[b"k"] == b'"old"'
    writer = cluster.clients().producer({})
    writer.produce("r--latest-changelog", None, b"k", partition=0)
    writer.produce(
        "r--latest-changelog", stamp.encode(), MARKER_KEY, partition=0, headers=MARKER_HEADERS
    )
    writer.flush()
    feed(cluster, "in", [("k", "new")])
    app = concat_app("memory://B", "b", peers="memory://A", migration="progressive")
    with WorkerThread(app.worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "r"))
        assert wait_for(
            lambda: cluster.store("memory://A").partition("r", "latest", 0).data == {}
        )  # the background copy finished
    assert outputs(cluster)[-1] == ("k", "new")  # not "oldnew"
    local = cluster.store("memory://B").partition("r", "latest", 0).data
    assert local == {b"k": b'"new"', b"other": b'"x"'}


def count_app(url: str, instance: str, **settings: object) -> App:
    app = App(
        "m", brokers="fake:1", state=url, instance_id=instance, commit_interval_ms=10, **settings
    )
    app.stream("in").count(store="counts").to("out")
    return app


def published(cluster: FakeCluster, instance: str) -> bool:
    topic = "m--state-locations"
    return topic in cluster.logs and any(
        orjson.loads(m.value())["instance"] == instance for m in cluster.records(topic)
    )


def copy_interrupted() -> FakeCluster:
    """X counted 50 keys (k0 twice); Z took the task and began a progressive copy
    from X, then died before copying anything (copies wait for the moved task's
    first record)."""
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    keys = [f"k{i}" for i in range(50)]
    feed(cluster, "in", [(k, "v") for k in keys] + [("k0", "v")])
    with WorkerThread(count_app("memory://X", "x").worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "m"))
    life = Life()
    z = count_app("memory://Z", "z", peers="memory://X", migration="progressive")
    with WorkerThread(z.worker(clients=cluster.clients(life))):
        assert wait_for(lambda: published(cluster, "z"))
        cluster.kill(life)
    return cluster


def test_a_set_aside_whose_location_was_never_published_is_still_found() -> None:
    cluster = copy_interrupted()
    # X gets the task back mid-copy: it sets its own (older) data aside, and
    # dies before the location naming the aside copy is published.
    cluster.crash_at = {
        "produce:m--state-locations": cluster.events["produce:m--state-locations"] + 1
    }
    x2 = count_app("memory://X", "x2", peers="memory://Z", migration="progressive")
    with WorkerThread(x2.worker(clients=cluster.clients())) as running:
        assert wait_for(lambda: running.crashed)
    cluster.crash_at = {}
    assert cluster.store("memory://X").partition("m", "counts", 0).data == {}  # set aside
    # Y plans from Z's location, whose chain names X's live data.
    y = count_app("memory://Y", "y", peers="memory://X,memory://Z", migration="progressive")
    target = cluster.store("memory://Y").partition("m", "counts", 0)
    with WorkerThread(y.worker(clients=cluster.clients())):
        assert wait_for(lambda: len(target.data) == 50, 15)
    assert target.data[b"k0"] == b"2" and target.data[b"k9"] == b"1"


def test_records_no_marker_covers_are_written_again_by_the_next_owner() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in", 1)
    feed(cluster, "in", [("a", "v"), ("a", "v"), ("b", "v")])
    with WorkerThread(count_app("memory://X", "x").worker(clients=cluster.clients())):
        assert wait_for(lambda: caught_up(cluster, "m"))
    # A commit cut short: its records reached the changelog, its marker did not.
    writer = cluster.clients().producer({})
    writer.produce("m--counts-changelog", b"3", b"a", partition=0)
    writer.produce("m--counts-changelog", b"7", b"ghost", partition=0)
    writer.flush()
    with WorkerThread(count_app("memory://X", "x").worker(clients=cluster.clients())):
        assert wait_for(
            lambda: (
                sum(1 for m in cluster.records("m--counts-changelog") if m.key() == MARKER_KEY) == 2
            )
        )
    # The next owner committed a and ghost again with their restored values
    # (ghost: deleted), so a replay from scratch gives the exact state.
    backend = MemoryPartition()
    applier = ChangelogApplier(backend, None, backend.claim("check"))
    for msg in cluster.records("m--counts-changelog"):
        applier.feed(msg)
    applier.finish()
    assert backend.data == {b"a": b"2", b"b": b"1"}
    stamp = applier.stamp
    assert isinstance(stamp, Stamp) and stamp.input_offset == 3


def test_an_interrupted_copy_whose_source_restarted_empty_is_replayed_not_resumed() -> None:
    cluster = copy_interrupted()
    # X's server restarts empty: it answers, but holds nothing of the task.
    cluster.store("memory://X").partition("m", "counts", 0).clear()
    feed(cluster, "in", [("k0", "v"), ("k9", "v")])
    z2 = count_app("memory://Z", "z", peers="memory://X", migration="progressive")
    target = cluster.store("memory://Z").partition("m", "counts", 0)
    with WorkerThread(z2.worker(clients=cluster.clients())) as running:
        assert wait_for(lambda: caught_up(cluster, "m"))
    assert running.error is None
    # Rebuilt from the changelog: no count started again from zero.
    assert target.data[b"k0"] == b"3" and target.data[b"k9"] == b"2"
    assert len(target.data) == 50 and outputs(cluster)[-2:] == [("k0", 3), ("k9", 2)]


def test_an_interrupted_copy_whose_source_restarted_empty_and_was_claimed_again_is_replayed() -> (
    None
):
    cluster = copy_interrupted()
    # X's server restarts empty and X's worker, back first, claims the task there:
    # the source has an owner epoch again, but not the one Z's copy gave it.
    source = cluster.store("memory://X").partition("m", "counts", 0)
    source.clear()
    source.claim("x", 99)
    feed(cluster, "in", [("k0", "v"), ("k9", "v")])
    z2 = count_app("memory://Z", "z", peers="memory://X", migration="progressive")
    target = cluster.store("memory://Z").partition("m", "counts", 0)
    with WorkerThread(z2.worker(clients=cluster.clients())) as running:
        assert wait_for(lambda: caught_up(cluster, "m"))
    assert running.error is None
    assert target.data[b"k0"] == b"3" and target.data[b"k9"] == b"2"
    assert len(target.data) == 50 and outputs(cluster)[-2:] == [("k0", 3), ("k9", 2)]


def test_the_old_owner_back_on_an_emptied_server_replays_instead_of_setting_nothing_aside() -> None:
    cluster = copy_interrupted()
    # X's server restarts empty; X's worker gets the task back while Z's copy
    # from X is unfinished. Its chain would read X's keys from X's aside copy,
    # which would now hold nothing.
    cluster.store("memory://X").partition("m", "counts", 0).clear()
    feed(cluster, "in", [("k0", "v"), ("k9", "v")])
    x2 = count_app("memory://X", "x2", peers="memory://Z", migration="progressive")
    target = cluster.store("memory://X").partition("m", "counts", 0)
    with WorkerThread(x2.worker(clients=cluster.clients())) as running:
        assert wait_for(lambda: caught_up(cluster, "m"))
    assert running.error is None
    assert target.data[b"k0"] == b"3" and target.data[b"k9"] == b"2"
    assert len(target.data) == 50 and outputs(cluster)[-2:] == [("k0", 3), ("k9", 2)]
