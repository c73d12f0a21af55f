"""The write-back Table over a store partition: its cache, changes, commits, and
the time it waits for reads."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from keyshift.operators.stream import MISSING
from keyshift.state.base import Stamp
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table, decode_value, encode_value

pytestmark = pytest.mark.unit


class CountingPartition(MemoryPartition):
    """A memory partition recording every get_many call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []

    def get_many(self, keys: Sequence[bytes], epoch: int = 0) -> list[bytes | None]:
        self.calls.append(list(keys))
        return super().get_many(keys, epoch)


@pytest.fixture
def backend() -> CountingPartition:
    part = CountingPartition()
    part.claim("w")  # owner epoch 1, the epoch the tests commit with
    part.data.update({b"a": b"1", b"b": b'{"x":[1,2]}', b"n": b"null"})
    return part


def test_prefetch_batches_reads(backend: CountingPartition) -> None:
    table = Table(backend)
    table.prefetch([b"a", b"b", b"a", None, b"missing", b"b"])
    assert len(backend.calls) == 1
    assert sorted(backend.calls[0]) == [b"a", b"b", b"missing"]
    assert table.get(b"a") == 1
    assert table.get(b"b") == {"x": [1, 2]}
    assert table.get(b"missing") is MISSING
    assert len(backend.calls) == 1  # all served from the cache


def test_prefetch_skips_cached_keys(backend: CountingPartition) -> None:
    table = Table(backend)
    table.prefetch([b"a"])
    table.put(b"new", 5)
    table.prefetch([b"a", b"new", b"b"])
    assert backend.calls == [[b"a"], [b"b"]]
    table.prefetch([b"a", b"b", None])
    assert len(backend.calls) == 2


def test_prefetch_nothing_makes_no_call(backend: CountingPartition) -> None:
    table = Table(backend)
    table.prefetch([])
    table.prefetch([None, None])
    assert backend.calls == []


def test_get_unknown_key_is_missing_and_cached(backend: CountingPartition) -> None:
    table = Table(backend)
    assert table.get(b"zz") is MISSING
    assert table.get(b"zz") is MISSING
    assert backend.calls == [[b"zz"]]


def test_get_none_key_is_missing(backend: CountingPartition) -> None:
    table = Table(backend)
    assert table.get(None) is MISSING
    assert backend.calls == []


def test_get_loads_existing_value_once(backend: CountingPartition) -> None:
    table = Table(backend)
    assert table.get(b"a") == 1
    assert table.get(b"a") == 1
    assert backend.calls == [[b"a"]]


def test_put_marks_dirty(backend: CountingPartition) -> None:
    table = Table(backend)
    assert not table.dirty
    table.put(b"a", 2)
    assert table.dirty
    assert table.get(b"a") == 2
    assert backend.calls == []  # a put never reads
    assert backend.data[b"a"] == b"1"  # and never writes through


def test_put_none_key_ignored(backend: CountingPartition) -> None:
    table = Table(backend)
    table.put(None, 1)
    assert not table.dirty
    assert len(table) == 0


def test_take_changes_encodes_latest(backend: CountingPartition) -> None:
    table = Table(backend)
    table.put(b"a", 2)
    table.put(b"a", 3)
    table.put(b"c", {"k": ["v"]})
    table.put(b"b", None)
    table.put(b"d", MISSING)
    assert table.take_changes() == {b"a": b"3", b"c": b'{"k":["v"]}', b"b": None, b"d": None}
    assert table.get(b"b") is MISSING
    assert table.get(b"d") is MISSING
    # take_changes does not clear: the changes stay until committed
    assert table.dirty
    assert table.take_changes()[b"a"] == b"3"


def test_take_changes_reflects_in_place_mutation(backend: CountingPartition) -> None:
    table = Table(backend)
    value = table.get(b"b")
    value["x"].append(3)
    table.put(b"b", value)
    assert table.take_changes() == {b"b": b'{"x":[1,2,3]}'}


def test_committed_clears_dirty_keeps_cache(backend: CountingPartition) -> None:
    table = Table(backend)
    table.put(b"a", 5)
    changes = table.take_changes()
    s = Stamp(10, 0, {}, 1)
    backend.commit(changes, s, 1)
    table.committed(s)
    assert not table.dirty
    assert table.take_changes() == {}
    assert table.stamp == s
    assert len(table) == 1
    assert table.get(b"a") == 5
    assert backend.calls == []


def test_committed_evicts_when_over_max_entries(backend: CountingPartition) -> None:
    table = Table(backend, max_entries=2)
    for i in range(3):
        table.put(f"k{i}".encode(), i)
    backend.commit(table.take_changes(), Stamp(1, 0), 1)
    table.committed(Stamp(1, 0))
    assert len(table) == 0
    assert not table.dirty
    # values come back from the backend
    assert table.get(b"k2") == 2
    assert backend.calls == [[b"k2"]]


def test_committed_no_eviction_at_limit(backend: CountingPartition) -> None:
    table = Table(backend, max_entries=2)
    table.put(b"x", 1)
    table.put(b"y", 2)
    table.committed(Stamp(1, 0))
    assert len(table) == 2


def test_rollback_forgets_uncommitted_changes(backend: CountingPartition) -> None:
    table = Table(backend)
    table.adopt(Stamp(7, 3, {}, 1), epoch=1)
    table.put(b"a", 5)
    table.put(b"new", 1)
    table.take_changes()
    table.resume_offset = 99
    table.rollback()
    assert not table.dirty and len(table) == 0
    assert table.get(b"a") == 1 and table.get(b"new") is MISSING  # the backend's values
    assert table.resume_offset == 7  # from the last committed stamp


def test_adopt(backend: CountingPartition) -> None:
    table = Table(backend)
    assert table.resume_offset == -1
    s = Stamp(input_offset=77, changelog_offset=5, upstream={}, epoch=2)
    table.adopt(s, epoch=3)
    assert table.resume_offset == 77
    assert table.stamp == s
    assert table.epoch == 3
    table.adopt(None, epoch=4)
    assert table.resume_offset == -1
    assert table.stamp is None
    assert table.epoch == 4


def test_load_applies_committed_changes(backend: CountingPartition) -> None:
    table = Table(backend)
    table.load({b"a": b"9", b"b": None})
    assert table.get(b"a") == 9
    assert table.get(b"b") is MISSING
    assert not table.dirty
    assert backend.calls == []


def test_encode_decode_value() -> None:
    assert encode_value(None) is None
    assert encode_value(MISSING) is None
    assert encode_value({"a": 1}) == b'{"a":1}'
    assert decode_value(None) is MISSING
    assert decode_value(b"[1]") == [1]
    assert decode_value(b"null") is None


class _SlowSource:
    """A migration source that takes 20 ms per read and has every key."""

    done = False

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]:
        time.sleep(0.02)  # the read's latency, not a wait for anything
        return [b"1" for _ in keys]

    def forget(self, keys: Sequence[bytes]) -> None:
        pass


def test_a_table_counts_the_time_it_waits_for_reads() -> None:
    backend = MemoryPartition()
    table = Table(backend)
    table.adopt(None, backend.claim("me"))
    table.prefetch([b"a"])
    assert table.read_seconds > 0 and table.remote_seconds == 0
    table.source = _SlowSource()
    table.prefetch([b"b", b"c"])
    assert table.remote_seconds >= 0.02
    assert table.get(b"b") == 1
