"""Contracts every state backend meets, run on each backend by a subclass.

Not a test module: :class:`StoreContract` (the :class:`~keyshift.state.base.Store`
and :class:`~keyshift.state.base.StorePartition` contract) and
:class:`TransferContract` (stop-and-copy and progressive copies between two
partitions of one backend) hold the tests; each backend's test module subclasses
them and provides the ``backend_store`` fixture: the memory backend in
``tests/unit/`` (no services), Redis in ``tests/integration/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import orjson
import pytest

from keyshift.errors import FencedError, StateLostError
from keyshift.migrations import transfer
from keyshift.migrations.transfer import ProgressiveCopy, stop_and_copy
from keyshift.operators.stream import MISSING
from keyshift.state import open_store
from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.memory import MemoryPartition
from keyshift.state.redis.store import CHUNK
from keyshift.state.table import Table

#: ``open_partition(store="s", partition=0)``: a partition on a unique app id.
Opener = Callable[..., StorePartition]
#: (source, target): the same task's partition in two separate "servers".
Pair = tuple[StorePartition, StorePartition]


def stamp(n: int, epoch: int = 1, **up: tuple[int, int]) -> Stamp:
    return Stamp(n, n * 10, {int(k[1:]): v for k, v in up.items()}, epoch)


# -- the store contract --------------------------------------------------------------


class StoreContract:
    """The contract of a state backend (needs a ``backend_store`` fixture)."""

    @pytest.fixture
    def open_partition(self, backend_store: Store) -> Iterator[Opener]:
        """``open_partition(store="s", partition=0)`` on a unique app id; cleared afterwards."""
        app_id = f"contract-{uuid.uuid4().hex[:12]}"
        opened: list[StorePartition] = []

        def make(store: str = "s", partition: int = 0) -> StorePartition:
            part = backend_store.partition(app_id, store, partition)
            opened.append(part)
            return part

        try:
            yield make
        finally:
            for part in opened:
                part.clear()

    def test_claim_increments_epoch(self, open_partition: Opener) -> None:
        part = open_partition()
        assert part.claim("a") == 1
        assert part.claim("b") == 2
        assert part.claim("a") == 3

    def test_partitions_are_independent(self, open_partition: Opener) -> None:
        p0, p1, other = open_partition("s", 0), open_partition("s", 1), open_partition("t", 0)
        e = p0.claim("x")
        p0.commit({b"k": b"1"}, stamp(5, e), e)
        assert p1.read_stamp() is None and other.read_stamp() is None
        assert p1.get_many([b"k"]) == [None] and other.get_many([b"k"]) == [None]
        assert p1.claim("y") == 1

    def test_same_coordinates_same_partition(
        self, backend_store: Store, open_partition: Opener
    ) -> None:
        part = open_partition("s", 3)
        e = part.claim("x")
        part.commit({b"k": b"v"}, stamp(1, e), e)
        again = open_partition("s", 3)
        assert again.get_many([b"k"]) == [b"v"]
        assert again.read_stamp() == stamp(1, e)

    def test_fresh_partition(self, open_partition: Opener) -> None:
        part = open_partition()
        assert part.read_stamp() is None
        assert part.key_count() == 0
        assert part.get_many([b"a", b"b"]) == [None, None]
        assert list(part.scan()) == []

    def test_commit_writes_data_and_stamp(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        st_ = Stamp(42, 7, {0: (10, 2), 3: (5, 0)}, epoch)
        part.commit({b"a": b"1", b"b": b'{"x":2}', b"\x00\xff": b"bin"}, st_, epoch)
        assert part.read_stamp() == st_
        assert part.get_many([b"a", b"zz", b"b", b"\x00\xff"]) == [b"1", None, b'{"x":2}', b"bin"]
        assert part.key_count() == 3

    def test_get_many_empty(self, open_partition: Opener) -> None:
        assert open_partition().get_many([]) == []

    def test_commit_without_changes_writes_stamp(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({}, stamp(3, epoch), epoch)
        assert part.read_stamp() == stamp(3, epoch)
        assert part.key_count() == 0

    def test_overwrite_and_delete(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"a": b"1", b"b": b"2", b"c": b"3"}, stamp(1, epoch), epoch)
        part.commit({b"a": b"10", b"b": None, b"never": None}, stamp(2, epoch), epoch)
        assert part.get_many([b"a", b"b", b"c", b"never"]) == [b"10", None, b"3", None]
        assert part.key_count() == 2
        assert part.read_stamp() == stamp(2, epoch)

    def test_commit_with_older_epoch_is_fenced(self, open_partition: Opener) -> None:
        part = open_partition()
        old = part.claim("old")
        part.commit({b"a": b"1", b"b": b"2"}, stamp(1, old), old)
        new = part.claim("new")
        assert new > old
        changes: dict[bytes, bytes | None] = {b"a": b"zombie", b"b": None, b"c": b"3"}
        changes.update({f"bulk{i}".encode(): b"x" for i in range(CHUNK + 5)})
        changes.update({f"gone{i}".encode(): None for i in range(CHUNK + 5)})
        with pytest.raises(FencedError):
            part.commit(changes, stamp(2, old), old)
        # nothing changed
        assert part.get_many([b"a", b"b", b"c", b"bulk0"]) == [b"1", b"2", None, None]
        assert part.key_count() == 2
        assert part.read_stamp() == stamp(1, old)
        # the new owner commits fine
        part.commit({b"a": b"new"}, stamp(3, new), new)
        assert part.get_many([b"a"]) == [b"new"]

    def test_an_epoch_newer_than_the_stored_one_means_the_state_is_lost(
        self, open_partition: Opener
    ) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"a": b"1"}, stamp(1, epoch), epoch)
        with pytest.raises(StateLostError, match="replays its changelog"):
            part.commit({b"a": b"2"}, stamp(2, epoch + 5), epoch + 5)
        with pytest.raises(StateLostError):
            part.copy_missing([(b"b", b"2")], epoch + 5)
        with pytest.raises(StateLostError):
            part.get_many([b"a"], epoch + 5)
        assert part.get_many([b"a", b"b"], epoch) == [b"1", None]
        assert part.read_stamp() == stamp(1, epoch)

    def test_an_owner_whose_state_vanished_can_neither_read_nor_write(
        self, open_partition: Opener
    ) -> None:
        """A server restarted empty under its owner: the owner must not carry on
        from nothing (its counts would start again at zero)."""
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"a": b"1"}, stamp(1, epoch), epoch)
        part.clear()  # what an empty restart leaves
        with pytest.raises(StateLostError):
            part.get_many([b"a"], epoch)
        with pytest.raises(StateLostError):
            part.commit({b"a": b"2"}, stamp(2, epoch), epoch)
        assert part.get_many([b"a"]) == [None] and part.read_stamp() is None
        again = part.claim("next")  # the next owner claims and replays
        part.commit({b"a": b"1"}, stamp(1, again), again)
        assert part.get_many([b"a"], again) == [b"1"]

    def test_large_commit_complete(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        n_sets, n_deletes = 5000, 1500
        assert n_sets > CHUNK and n_deletes > CHUNK
        first = {f"k{i}".encode(): f"v{i}".encode() for i in range(n_sets)}
        part.commit(first, stamp(1, epoch), epoch)
        assert part.key_count() == n_sets

        second: dict[bytes, bytes | None] = {f"k{i}".encode(): None for i in range(n_deletes)}
        second.update({f"new{i}".encode(): b"n" for i in range(2 * CHUNK + 1)})
        second[b"k4999"] = b"changed"
        part.commit(second, stamp(2, epoch), epoch)

        assert part.key_count() == n_sets - n_deletes + 2 * CHUNK + 1
        keys = [f"k{i}".encode() for i in range(n_sets)]
        got = part.get_many(keys)
        assert got[:n_deletes] == [None] * n_deletes
        assert got[n_deletes:-1] == [f"v{i}".encode() for i in range(n_deletes, n_sets - 1)]
        assert got[-1] == b"changed"
        assert part.read_stamp() == stamp(2, epoch)

    def test_scan_returns_everything_in_batches(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        data = {f"key-{i}".encode(): str(i).encode() for i in range(2500)}
        part.commit(data, stamp(1, epoch), epoch)
        batches = list(part.scan(batch=500))
        assert len(batches) >= 2
        assert all(batches)
        seen: dict[bytes, bytes] = {}
        for batch in batches:
            for key, value in batch:
                seen[key] = value
        assert seen == data

    def test_clear(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.claim("me")
        part.commit({b"a": b"1"}, stamp(1, epoch + 1), epoch + 1)
        part.clear()
        assert part.read_stamp() is None
        assert part.key_count() == 0
        assert part.get_many([b"a"]) == [None]
        assert part.claim("again") == 1  # the epoch is reset too

    def test_open_store_factory(self, backend_store: Store) -> None:
        reopened = open_store(backend_store.url)
        try:
            assert type(reopened) is type(backend_store)
            assert reopened.url == backend_store.url
        finally:
            reopened.close()

    def test_claim_with_minimum(self, open_partition: Opener) -> None:
        part = open_partition()
        assert part.owner_epoch() == 0
        assert part.claim("a", 5) == 5  # max(0 + 1, 5)
        assert part.owner_epoch() == 5
        assert part.claim("b", 3) == 6  # max(5 + 1, 3)
        assert part.claim("c", 6) == 7  # max(6 + 1, 6)
        assert part.claim("d", 0) == 8
        assert part.claim("e", 100) == 100
        assert part.owner_epoch() == 100

    def test_owner_epoch_is_not_the_stamp_epoch(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"a": b"1"}, stamp(1, epoch + 10), epoch)
        assert part.owner_epoch() == epoch  # only claim() raises it
        assert part.read_stamp() == stamp(1, epoch + 10)

    def test_copy_missing_sets_only_absent_keys(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"a": b"local", b"b": b"local"}, stamp(1, epoch), epoch)
        added = part.copy_missing([(b"a", b"remote"), (b"c", b"remote"), (b"d", b"remote")], epoch)
        assert added == 2
        assert part.get_many([b"a", b"b", b"c", b"d"]) == [b"local", b"local", b"remote", b"remote"]
        assert part.read_stamp() == stamp(1, epoch)  # the stamp is untouched
        assert part.copy_missing([(b"c", b"again")], epoch) == 0
        assert part.get_many([b"c"]) == [b"remote"]
        assert part.copy_missing([], epoch) == 0

    def test_copy_missing_large(self, open_partition: Opener) -> None:
        part = open_partition()
        epoch = part.claim("me")
        part.commit({b"k0": b"local"}, stamp(1, epoch), epoch)
        items = [(f"k{i}".encode(), b"r") for i in range(2 * CHUNK + 7)]
        assert part.copy_missing(items, epoch) == 2 * CHUNK + 6
        assert part.key_count() == 2 * CHUNK + 7
        assert part.get_many([b"k0", b"k1"]) == [b"local", b"r"]

    def test_copy_missing_is_fenced(self, open_partition: Opener) -> None:
        part = open_partition()
        old = part.claim("old")
        part.commit({b"a": b"1"}, stamp(1, old), old)
        part.claim("new")
        with pytest.raises(FencedError):
            part.copy_missing([(b"b", b"zombie"), (b"c", b"zombie")], old)
        assert part.get_many([b"b", b"c"]) == [None, None]
        assert part.key_count() == 1

    def test_clear_data_keeps_epoch(self, open_partition: Opener) -> None:
        part = open_partition()
        part.claim("a")
        epoch = part.claim("b")
        part.commit({b"a": b"1", b"b": b"2"}, stamp(4, epoch), epoch)
        part.clear_data()
        assert part.read_stamp() is None
        assert part.key_count() == 0
        assert part.get_many([b"a", b"b"]) == [None, None]
        assert list(part.scan()) == []
        assert part.owner_epoch() == epoch  # the fence stays
        with pytest.raises(FencedError):
            part.commit({b"z": b"1"}, stamp(5, epoch - 1), epoch - 1)
        assert part.claim("c") == epoch + 1
        part.commit({b"z": b"1"}, stamp(5, epoch + 1), epoch + 1)
        assert part.get_many([b"z"]) == [b"1"]

    def test_clear_data_on_fresh_partition(self, open_partition: Opener) -> None:
        part = open_partition()
        part.clear_data()
        assert part.read_stamp() is None and part.owner_epoch() == 0


# -- the transfer contract -----------------------------------------------------------

N = 600  # > hash-max-listpack-entries (512): a real Redis hashtable, HSCAN pages
SMALL_BATCH = 100


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


class Counting:
    """A StorePartition wrapper counting get_many calls (delegates everything else)."""

    def __init__(self, inner: StorePartition) -> None:
        self.inner = inner
        self.calls: list[list[bytes]] = []

    def get_many(self, keys: Sequence[bytes], epoch: int = 0) -> list[bytes | None]:
        self.calls.append(list(keys))
        return self.inner.get_many(keys, epoch)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def run_to_end(copy: ProgressiveCopy, limit: int = 10_000) -> int:
    steps = 0
    while not copy.step():
        steps += 1
        assert steps < limit
    return steps


def begin_table(
    source: StorePartition, target: StorePartition
) -> tuple[Table, ProgressiveCopy, Counting]:
    counting = Counting(source)
    epoch = new_owner(source, target)
    copy, stamp = ProgressiveCopy.begin(
        counting,
        target,
        epoch,
        "o",  # type: ignore[arg-type]
        resume=False,
    )
    table = Table(target)
    table.adopt(stamp, epoch)
    table.source = copy
    return table, copy, counting


def commit_table(table: Table) -> None:
    """What the worker does: fills and changes written together with the stamp."""
    changes = {**table.take_fills(), **table.take_changes()}
    assert table.stamp is not None
    stamp = replace(table.stamp, input_offset=table.stamp.input_offset + 1)
    table.write(changes, stamp)
    table.committed(stamp)


def half_copied(a: StorePartition, b: StorePartition) -> tuple[ProgressiveCopy, int]:
    """A holds the task's state; B took it over and copied one batch. Returns
    (A -> B copy, B's epoch)."""
    seed(a)
    b_epoch = new_owner(a, b)
    copy, _ = ProgressiveCopy.begin(a, b, b_epoch, "b", resume=False)
    copy.step()
    return copy, b_epoch


@contextmanager
def live_and_aside(store: Store, prefix: str) -> Iterator[Pair]:
    """A fresh partition and its aside copy, both cleared afterwards."""
    app = f"{prefix}-{uuid.uuid4().hex[:12]}"
    live = store.partition(app, "s", 0)
    aside = store.partition(app, "s", 0, aside=True)
    try:
        yield live, aside
    finally:
        live.clear()
        aside.clear()


class TransferContract:
    """Direct state transfer between partitions of one backend (needs a
    ``backend_store`` fixture)."""

    @pytest.fixture
    def pair(self, backend_store: Store) -> Iterator[Pair]:
        """(source, target): the same task's partition in two separate "servers"."""
        run = uuid.uuid4().hex[:12]
        source = backend_store.partition(f"xfer-src-{run}", "s", 0)
        target = backend_store.partition(f"xfer-dst-{run}", "s", 0)
        try:
            yield source, target
        finally:
            source.clear()
            target.clear()

    @pytest.fixture
    def third(self, backend_store: Store) -> Iterator[StorePartition]:
        """A third "server" for the same task: the target of a chained copy."""
        part = backend_store.partition(f"xfer-third-{uuid.uuid4().hex[:12]}", "s", 0)
        try:
            yield part
        finally:
            part.clear()

    def test_stop_and_copy(self, pair: Pair) -> None:
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

    def test_stop_and_copy_empty_source(self, pair: Pair) -> None:
        source, target = pair
        epoch = new_owner(source, target)
        stamp, stats = stop_and_copy(source, target, epoch, "new-owner")
        assert stamp is None and stats.keys == 0
        assert target.read_stamp() is None and target.key_count() == 0
        assert source.owner_epoch() >= epoch

    def test_stop_and_copy_source_epoch_above_target_still_fences(self, pair: Pair) -> None:
        source, target = pair
        for _ in range(4):
            source.claim("someone")
        old, _ = seed(source)
        epoch = target.claim("new-owner")  # lower than the source's epoch
        stop_and_copy(source, target, epoch, "new-owner")
        assert source.owner_epoch() > old
        with pytest.raises(FencedError):
            source.commit({b"zombie": b"1"}, Stamp(1, 1, {}, old), old)

    def test_progressive_begin(self, pair: Pair) -> None:
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
        self, pair: Pair, monkeypatch: pytest.MonkeyPatch
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

    def test_progressive_resume_keeps_target(self, pair: Pair) -> None:
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

    def test_progressive_empty_source(self, pair: Pair) -> None:
        source, target = pair
        epoch = new_owner(source, target)
        copy, stamp = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
        assert stamp is None and target.read_stamp() is None
        assert copy.step() is True and copy.done

    def test_progressive_source_that_restarted_empty_is_lost_not_absent(self, pair: Pair) -> None:
        """A source whose Redis came back empty would answer "absent" for every
        key still to copy: the fetch and the end of the scan refuse instead."""
        source, target = pair
        seed(source)
        epoch = new_owner(source, target)
        copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
        source.clear()  # its server restarted empty
        with pytest.raises(StateLostError):
            copy.fetch([b"k0"])
        with pytest.raises(StateLostError):
            run_to_end(copy)
        assert not copy.done and target.key_count() == 0

    def test_progressive_source_claimed_again_mid_copy_is_fenced(self, pair: Pair) -> None:
        """The source's server restarted empty and its own worker claimed it again
        (a higher epoch): the copy stops rather than finish from the empty scan."""
        source, target = pair
        seed(source)
        epoch = new_owner(source, target)
        copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
        source.clear()
        source.claim("back-on-empty", epoch + 5)
        with pytest.raises(FencedError):
            run_to_end(copy)
        assert not copy.done

    def test_progressive_zombie_target_is_fenced(self, pair: Pair) -> None:
        source, target = pair
        seed(source)
        epoch = new_owner(source, target)
        copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
        target.claim("newest")  # someone else took the task over
        with pytest.raises(FencedError):
            copy.step()

    def test_table_fetches_absent_keys_from_source(self, pair: Pair) -> None:
        source, target = pair
        seed(source)
        table, copy, counting = begin_table(source, target)
        target.commit(
            {b"k1": orjson.dumps({"n": "local"})}, Stamp(501, 71, {}, table.epoch), table.epoch
        )

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

    def test_table_does_not_fetch_after_copy_done(self, pair: Pair) -> None:
        source, target = pair
        seed(source, 10)
        table, copy, counting = begin_table(source, target)
        run_to_end(copy)
        calls = len(counting.calls)
        assert table.get(b"k3") == {"n": 3}  # local now
        assert table.get(b"absent") is MISSING
        assert len(counting.calls) == calls
        assert table.take_fills() == {}

    def test_delete_during_progressive_copy_stays_deleted(self, pair: Pair) -> None:
        source, target = pair
        seed(source, 10)
        table, copy, _ = begin_table(source, target)
        assert table.get(b"k4") == {"n": 4}
        table.put(b"k4", None)  # the pipeline deletes the key
        commit_table(table)
        assert target.get_many([b"k4"]) == [None]
        run_to_end(copy)
        assert target.get_many([b"k4"]) == [None]  # fails: b'{"n":4}' copied back

    def test_deleted_key_not_refetched_after_eviction(self, pair: Pair) -> None:
        source, target = pair
        seed(source, 10)
        table, _, _ = begin_table(source, target)
        table.max_entries = 0  # evict on every commit
        table.put(b"k4", None)
        commit_table(table)
        assert table.get(b"k4") is MISSING  # fails: {"n": 4} fetched from the source

    def test_chained_progressive_copy(
        self,
        pair: Pair,
        third: StorePartition,
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
        assert copy.fetch([b"k0", b"fresh", late, b"k9"]) == [b"newer", b"1", expected[late], None]
        run_to_end(copy)
        assert everything(third) == expected
        assert a.key_count() == 0 and b.key_count() == 0

    def test_chain_of_three_sources(
        self,
        pair: Pair,
        third: StorePartition,
        backend_store: Store,
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
                b"at-c",
                b"at-b",
                None,
                data()[b"k8"],
            ]
            run_to_end(copy)
            expected = {**data(), b"k1": b"at-b", b"k2": b"at-c"}
            del expected[b"k3"]
            assert everything(d) == expected
            assert a.key_count() == b.key_count() == c.key_count() == 0
        finally:
            d.clear()

    def test_copy_back_to_a_set_aside_origin(
        self, backend_store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
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

    def test_set_aside_replaces_an_older_aside_copy(self, backend_store: Store) -> None:
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
            assert aside.key_count() == 0  # emptied, not read as this move's

    def test_set_aside_retried_for_the_same_move_keeps_the_aside_copy(
        self,
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

    def test_a_cleared_aside_copy_forgets_its_move(self, backend_store: Store) -> None:
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
