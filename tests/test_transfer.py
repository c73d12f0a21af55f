"""Direct state transfer (stop-and-copy, progressive) over the memory and Redis backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import orjson
import pytest

from keyshift.errors import FencedError
from keyshift.migrations import transfer
from keyshift.migrations.transfer import ProgressiveCopy, stop_and_copy
from keyshift.operators.stream import MISSING
from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.memory import MemoryPartition, MemoryStore
from keyshift.state.table import Table

N = 600  # > hash-max-listpack-entries (512): a real Redis hashtable, HSCAN pages
SMALL_BATCH = 100


@pytest.fixture
def pair(backend_store: Store) -> Iterator[tuple[StorePartition, StorePartition]]:
    """(source, target): the same task's partition in two separate "servers"."""
    run = uuid.uuid4().hex[:12]
    source = backend_store.partition(f"xfer-src-{run}", "s", 0)
    target = backend_store.partition(f"xfer-dst-{run}", "s", 0)
    try:
        yield source, target
    finally:
        source.clear()
        target.clear()


def data(n: int = N) -> dict[bytes, bytes]:
    return {f"k{i}".encode(): orjson.dumps({"n": i}) for i in range(n)}


def seed(source: StorePartition, n: int = N) -> tuple[int, Stamp]:
    """The old owner claims the source and commits ``n`` keys; returns (epoch, stamp)."""
    old = source.claim("old-owner")
    st_ = Stamp(500, 70, {1: (9, 2)}, old, 123_456)
    source.commit(data(n), st_, old)
    return old, st_


def everything(part: StorePartition) -> dict[bytes, bytes]:
    return {k: v for batch in part.scan() for k, v in batch}


def new_owner(source: StorePartition, target: StorePartition) -> int:
    """The new owner claims the target above anything the source has seen (as restore does)."""
    return target.claim("new-owner", source.owner_epoch() + 1)


# -- stop-and-copy ---------------------------------------------------------------------


def test_stop_and_copy(pair: tuple[StorePartition, StorePartition]) -> None:
    source, target = pair
    old, st_ = seed(source)
    epoch = new_owner(source, target)
    # stale leftovers in the target are replaced
    target.commit({b"stale": b"1", b"k0": b"old"}, Stamp(1, 1, {}, epoch), epoch)

    stamp, stats = stop_and_copy(source, target, epoch, "new-owner", what="s[0]")

    assert stamp == st_
    assert everything(target) == data()
    assert target.read_stamp() == replace(st_, epoch=epoch)
    assert stats.keys == N
    if isinstance(source, MemoryPartition):
        assert stats.bytes == sum(len(k) + len(v) for k, v in data().items())
    else:  # Redis moves the whole hash as one DUMP payload (compact encoding)
        assert stats.bytes > 0
    assert stats.seconds >= 0
    # the source copy is gone, its epoch stays as a fence
    assert source.key_count() == 0 and source.read_stamp() is None
    assert source.owner_epoch() >= epoch > old
    with pytest.raises(FencedError):
        source.commit({b"zombie": b"1"}, Stamp(501, 71, {}, old), old)
    assert source.key_count() == 0
    # the new owner writes the target fine
    target.commit({b"k1": b"2"}, Stamp(501, 71, {}, epoch), epoch)


def test_stop_and_copy_empty_source(pair: tuple[StorePartition, StorePartition]) -> None:
    source, target = pair
    epoch = new_owner(source, target)
    stamp, stats = stop_and_copy(source, target, epoch, "new-owner")
    assert stamp is None and stats.keys == 0
    assert target.read_stamp() is None and target.key_count() == 0
    assert source.owner_epoch() >= epoch


def test_stop_and_copy_source_epoch_above_target_still_fences(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    for _ in range(4):
        source.claim("someone")
    old, _ = seed(source)
    epoch = target.claim("new-owner")  # lower than the source's epoch
    stop_and_copy(source, target, epoch, "new-owner")
    assert source.owner_epoch() > old
    with pytest.raises(FencedError):
        source.commit({b"zombie": b"1"}, Stamp(1, 1, {}, old), old)


# -- progressive -----------------------------------------------------------------------


class Counting:
    """A StorePartition wrapper counting get_many calls (delegates everything else)."""

    def __init__(self, inner: StorePartition) -> None:
        self.inner = inner
        self.calls: list[list[bytes]] = []

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.calls.append(list(keys))
        return self.inner.get_many(keys)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def run_to_end(copy: ProgressiveCopy, limit: int = 10_000) -> int:
    steps = 0
    while not copy.step():
        steps += 1
        assert steps < limit
    return steps


def test_progressive_begin(pair: tuple[StorePartition, StorePartition]) -> None:
    source, target = pair
    old, st_ = seed(source)
    epoch = new_owner(source, target)
    target.commit({b"stale": b"1"}, Stamp(1, 1, {}, epoch), epoch)

    copy, stamp = ProgressiveCopy.begin(source, target, epoch, "new-owner", resume=False)

    assert stamp == st_
    assert target.key_count() == 0  # data is not copied up front, leftovers are cleared
    assert target.read_stamp() == replace(st_, epoch=epoch)
    assert not copy.done
    # the source is fenced but still holds the data until the copy finishes
    assert source.key_count() == N
    with pytest.raises(FencedError):
        source.commit({b"zombie": b"1"}, Stamp(1, 1, {}, old), old)
    assert copy.fetch([b"k5", b"nope", b"k7"]) == [data()[b"k5"], None, data()[b"k7"]]
    assert copy.fetched == 3
    assert copy.fetch([]) == []


def test_progressive_steps_copy_missing_only(
    pair: tuple[StorePartition, StorePartition], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    source, target = pair
    seed(source)
    epoch = new_owner(source, target)
    copy, _ = ProgressiveCopy.begin(source, target, epoch, "new-owner", resume=False)
    # the new owner processes records meanwhile: newer values and a brand-new key
    newer = {b"k0": b"100", b"k150": b"200", b"fresh": b"300"}
    target.commit(newer, Stamp(501, 71, {}, epoch), epoch)

    assert copy.step() is False
    assert 0 < target.key_count() < N + 1
    steps = 1 + run_to_end(copy)

    assert steps >= 2  # batched
    assert copy.done and copy.step() is True
    expected = {**data(), **newer}
    assert everything(target) == expected
    assert target.read_stamp() == Stamp(501, 71, {}, epoch)
    assert copy.stats.keys >= N  # keys scanned (HSCAN may repeat a few)
    # source cleared; fetch no longer goes remote
    assert source.key_count() == 0 and source.read_stamp() is None
    assert source.owner_epoch() >= epoch
    assert copy.fetch([b"k1", b"k2"]) == [None, None]


def test_progressive_memory_batch_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    store = MemoryStore()
    source, target = store.partition("a", "s", 0), store.partition("b", "s", 0)
    seed(source)
    epoch = new_owner(source, target)
    copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
    assert run_to_end(copy) == N // SMALL_BATCH
    assert copy.stats.keys == N


def test_progressive_resume_keeps_target(pair: tuple[StorePartition, StorePartition]) -> None:
    source, target = pair
    seed(source)
    first = new_owner(source, target)
    copy, _ = ProgressiveCopy.begin(source, target, first, "first", resume=False)
    target.commit({b"k3": b"newer"}, Stamp(600, 80, {}, first), first)
    copy.step()
    # interrupted; the same instance (or its successor on this Redis) resumes
    again = target.claim("again", source.owner_epoch() + 1)
    copy2, stamp = ProgressiveCopy.begin(source, target, again, "again", resume=True)
    assert stamp == Stamp(600, 80, {}, first)  # the target's own stamp
    assert target.get_many([b"k3"]) == [b"newer"]
    run_to_end(copy2)
    assert everything(target) == {**data(), b"k3": b"newer"}
    assert source.key_count() == 0


def test_progressive_empty_source(pair: tuple[StorePartition, StorePartition]) -> None:
    source, target = pair
    epoch = new_owner(source, target)
    copy, stamp = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
    assert stamp is None and target.read_stamp() is None
    assert copy.step() is True and copy.done


def test_progressive_zombie_target_is_fenced(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    seed(source)
    epoch = new_owner(source, target)
    copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
    target.claim("newest")  # someone else took the task over
    with pytest.raises(FencedError):
        copy.step()


# -- Table on a progressive copy -------------------------------------------------------


def begin_table(source: StorePartition, target: StorePartition
                ) -> tuple[Table, ProgressiveCopy, Counting]:
    counting = Counting(source)
    epoch = new_owner(source, target)
    copy, stamp = ProgressiveCopy.begin(counting, target, epoch, "o",  # type: ignore[arg-type]
                                        resume=False)
    table = Table(target)
    table.adopt(stamp, epoch)
    table.source = copy
    return table, copy, counting


def test_table_fetches_absent_keys_from_source(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    seed(source)
    table, copy, counting = begin_table(source, target)
    target.commit({b"k1": orjson.dumps({"n": "local"})}, Stamp(501, 71, {}, table.epoch),
                  table.epoch)

    assert table.get(b"k2") == {"n": 2}  # decoded source value
    assert counting.calls == [[b"k2"]]
    assert table.get(b"k1") == {"n": "local"}  # present locally: never fetched
    assert table.get(b"absent") is MISSING
    assert counting.calls == [[b"k2"], [b"absent"]]
    table.prefetch([b"k1", b"k2", b"k3", b"k4", None])
    assert [sorted(c) for c in counting.calls[2:]] == [[b"k3", b"k4"]]
    assert copy.fetched == 4

    assert table.take_changes() == {}
    fills = table.take_fills()
    assert fills == {k: data()[k] for k in (b"k2", b"k3", b"k4")}
    assert table.take_fills() == {}
    # a fill is only a change once written
    table.put(b"k2", {"n": 22})
    assert table.take_changes() == {b"k2": b'{"n":22}'}


def test_table_does_not_fetch_after_copy_done(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    seed(source, 10)
    table, copy, counting = begin_table(source, target)
    run_to_end(copy)
    calls = len(counting.calls)
    assert table.get(b"k3") == {"n": 3}  # local now
    assert table.get(b"absent") is MISSING
    assert len(counting.calls) == calls
    assert table.take_fills() == {}


def commit_table(table: Table) -> None:
    """What the worker does: fills and changes written together with the stamp."""
    changes = {**table.take_fills(), **table.take_changes()}
    assert table.stamp is not None
    stamp = replace(table.stamp, input_offset=table.stamp.input_offset + 1)
    table.write(changes, stamp)
    table.committed(stamp)


def test_delete_during_progressive_copy_stays_deleted(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    seed(source, 10)
    table, copy, _ = begin_table(source, target)
    assert table.get(b"k4") == {"n": 4}
    table.put(b"k4", None)  # the pipeline deletes the key
    commit_table(table)
    assert target.get_many([b"k4"]) == [None]
    run_to_end(copy)
    assert target.get_many([b"k4"]) == [None]  # fails: b'{"n":4}' copied back


def test_deleted_key_not_refetched_after_eviction(
    pair: tuple[StorePartition, StorePartition],
) -> None:
    source, target = pair
    seed(source, 10)
    table, _, _ = begin_table(source, target)
    table.max_entries = 0  # evict on every commit
    table.put(b"k4", None)
    commit_table(table)
    assert table.get(b"k4") is MISSING  # fails: {"n": 4} fetched from the source


@pytest.fixture
def third(backend_store: Store) -> Iterator[StorePartition]:
    """A third "server" for the same task: the target of a chained copy."""
    part = backend_store.partition(f"xfer-third-{uuid.uuid4().hex[:12]}", "s", 0)
    try:
        yield part
    finally:
        part.clear()


def half_copied(a: StorePartition, b: StorePartition) -> tuple[ProgressiveCopy, int]:
    """A holds the task's state; B took it over and copied one batch. Returns
    (A -> B copy, B's epoch)."""
    seed(a)
    b_epoch = new_owner(a, b)
    copy, _ = ProgressiveCopy.begin(a, b, b_epoch, "b", resume=False)
    copy.step()
    return copy, b_epoch


def test_chained_progressive_copy(
    pair: tuple[StorePartition, StorePartition], third: StorePartition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B is still copying from A when C takes the task: C reads B first, then A."""
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    a, b = pair
    first, b_epoch = half_copied(a, b)  # B holds part of the keys...
    b.commit({b"k0": b"newer", b"fresh": b"1"}, Stamp(700, 90, {}, b_epoch), b_epoch)
    first.forget([b"k9"])  # ...and deleted one, at A too
    b.drop_keys([b"k9"])

    c_epoch = third.claim("c", b.owner_epoch() + 1)
    copy, stamp = ProgressiveCopy.begin(b, third, c_epoch, "c", resume=False, origins=[a])
    assert stamp == Stamp(700, 90, {}, b_epoch)  # B's stamp, the newest
    with pytest.raises(FencedError):  # both earlier owners are fenced
        b.commit({b"zombie": b"1"}, Stamp(1, 1, {}, b_epoch), b_epoch)
    with pytest.raises(FencedError):
        a.commit({b"zombie": b"1"}, Stamp(1, 1, {}, b_epoch), b_epoch)

    expected = {**data(), b"k0": b"newer", b"fresh": b"1"}
    del expected[b"k9"]
    # On demand: B's value when B has the key, A's otherwise, nothing for deleted keys.
    late = f"k{N - 1}".encode()
    assert copy.fetch([b"k0", b"fresh", late, b"k9"]) == [
        b"newer", b"1", expected[late], None
    ]
    run_to_end(copy)
    assert everything(third) == expected
    assert a.key_count() == 0 and b.key_count() == 0


def test_chain_of_three_sources(
    pair: tuple[StorePartition, StorePartition], third: StorePartition, backend_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A -> B -> C, both copies unfinished, then D: newest value wins, deletes hold."""
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    a, b = pair
    c = third
    d = backend_store.partition(f"xfer-fourth-{uuid.uuid4().hex[:12]}", "s", 0)
    try:
        _, b_epoch = half_copied(a, b)
        b.commit({b"k1": b"at-b", b"k2": b"at-b"}, Stamp(700, 90, {}, b_epoch), b_epoch)
        c_epoch = c.claim("c", b.owner_epoch() + 1)
        to_c, _ = ProgressiveCopy.begin(b, c, c_epoch, "c", resume=False, origins=[a])
        c.commit({b"k2": b"at-c"}, Stamp(800, 95, {}, c_epoch), c_epoch)
        to_c.forget([b"k3"])  # deleted at C: gone from B and A too
        c.drop_keys([b"k3"])

        d_epoch = d.claim("d", c.owner_epoch() + 1)
        copy, stamp = ProgressiveCopy.begin(c, d, d_epoch, "d", resume=False, origins=[b, a])
        assert stamp == Stamp(800, 95, {}, c_epoch)
        for fenced, epoch in ((a, b_epoch), (b, b_epoch), (c, c_epoch)):
            with pytest.raises(FencedError):
                fenced.commit({b"zombie": b"1"}, Stamp(1, 1, {}, epoch), epoch)
        assert copy.fetch([b"k2", b"k1", b"k3", b"k8"]) == [
            b"at-c", b"at-b", None, data()[b"k8"]
        ]
        run_to_end(copy)
        expected = {**data(), b"k1": b"at-b", b"k2": b"at-c"}
        del expected[b"k3"]
        assert everything(d) == expected
        assert a.key_count() == b.key_count() == c.key_count() == 0
    finally:
        d.clear()


def test_copy_back_to_a_set_aside_origin(backend_store: Store,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A -> B mid-copy, then back to A: A's stale data is set aside and read last."""
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    run = uuid.uuid4().hex[:12]
    a = backend_store.partition(f"xfer-a-{run}", "s", 0)
    b = backend_store.partition(f"xfer-b-{run}", "s", 0)
    aside = backend_store.partition(f"xfer-a-{run}", "s", 0, aside=True)
    try:
        to_b, b_epoch = half_copied(a, b)
        b.commit({b"k0": b"newer", b"fresh": b"1"}, Stamp(700, 90, {}, b_epoch), b_epoch)
        to_b.forget([b"k9"])
        b.drop_keys([b"k9"])
        stale = everything(a)
        assert stale[b"k0"] != b"newer" and b"k9" not in stale

        a_epoch = a.claim("a", b.owner_epoch() + 1)
        assert a.set_aside("b@2")
        assert a.key_count() == 0 and everything(aside) == stale
        assert a.owner_epoch() == a_epoch  # the fence stays on the live partition
        copy, stamp = ProgressiveCopy.begin(b, a, a_epoch, "a", resume=False, origins=[aside])
        assert stamp == Stamp(700, 90, {}, b_epoch)
        with pytest.raises(FencedError):
            b.commit({b"zombie": b"1"}, Stamp(1, 1, {}, b_epoch), b_epoch)
        late = f"k{N - 1}".encode()
        assert copy.fetch([b"k0", late, b"k9"]) == [b"newer", stale[late], None]
        run_to_end(copy)
        expected = {**data(), b"k0": b"newer", b"fresh": b"1"}
        del expected[b"k9"]
        assert everything(a) == expected
        assert aside.key_count() == 0 and b.key_count() == 0
    finally:
        for part in (a, b, aside):
            part.clear()


@contextmanager
def live_and_aside(store: Store, prefix: str) -> Iterator[tuple[StorePartition, StorePartition]]:
    """A fresh partition and its aside copy, both cleared afterwards."""
    app = f"{prefix}-{uuid.uuid4().hex[:12]}"
    live = store.partition(app, "s", 0)
    aside = store.partition(app, "s", 0, aside=True)
    try:
        yield live, aside
    finally:
        live.clear()
        aside.clear()


def test_set_aside_replaces_an_older_aside_copy(backend_store: Store) -> None:
    with live_and_aside(backend_store, "xfer-aside") as (live, aside):
        epoch = live.claim("me")
        live.commit({b"x": b"1", b"y": b"1"}, Stamp(1, 1, {}, epoch), epoch)
        assert live.set_aside("move-1")
        live.commit({b"x": b"2"}, Stamp(2, 2, {}, epoch), epoch)
        assert live.set_aside("move-2")
        assert everything(aside) == {b"x": b"2"}
        assert live.key_count() == 0
        assert live.read_stamp() == Stamp(2, 2, {}, epoch)  # the stamp is not moved
        assert live.set_aside("move-3") is True  # nothing live: the old aside copy is
        assert aside.key_count() == 0            # emptied, not read as this move's


def test_set_aside_retried_for_the_same_move_keeps_the_aside_copy(
    backend_store: Store,
) -> None:
    """A restore that set data aside and then crashed before publishing its location
    runs again for the same move: the aside copy must survive the retry."""
    with live_and_aside(backend_store, "xfer-retry") as (live, aside):
        epoch = live.claim("me")
        live.commit(data(), Stamp(1, 1, {}, epoch), epoch)
        assert live.set_aside("other@7")
        aside.claim("me", epoch)  # the copy fences its sources, the aside copy too
        assert live.set_aside("other@7") is False
        assert everything(aside) == data() and live.key_count() == 0


def test_a_cleared_aside_copy_forgets_its_move(backend_store: Store) -> None:
    """Dropping a stale aside copy (Restorer.flush) also drops its tag, so a later
    set-aside under the same tag moves data instead of being taken for a retry."""
    with live_and_aside(backend_store, "xfer-drop") as (live, aside):
        epoch = live.claim("me")
        live.commit(data(), Stamp(1, 1, {}, epoch), epoch)
        assert live.set_aside("other@7")
        aside.clear()
        assert aside.key_count() == 0
        live.commit({b"k": b"v"}, Stamp(2, 2, {}, epoch), epoch)
        assert live.set_aside("other@7")
        assert everything(aside) == {b"k": b"v"}
