"""One contract suite for every state backend (memory and Redis), plus Stamp encoding."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from keyshift.errors import FencedError, StateError
from keyshift.state import open_store
from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.memory import MemoryStore
from keyshift.state.redis import RedisStore
from keyshift.state.redis.store import CHUNK, partition_keys
from keyshift.urls import redact


@pytest.fixture
def open_partition(backend_store: Store) -> Iterator[Callable[..., StorePartition]]:
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


def stamp(n: int, epoch: int = 1, **up: tuple[int, int]) -> Stamp:
    return Stamp(n, n * 10, {int(k[1:]): v for k, v in up.items()}, epoch)


# -- contract ----------------------------------------------------------------------


def test_claim_increments_epoch(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    assert part.claim("a") == 1
    assert part.claim("b") == 2
    assert part.claim("a") == 3


def test_partitions_are_independent(open_partition: Callable[..., StorePartition]) -> None:
    p0, p1, other = open_partition("s", 0), open_partition("s", 1), open_partition("t", 0)
    e = p0.claim("x")
    p0.commit({b"k": b"1"}, stamp(5, e), e)
    assert p1.read_stamp() is None and other.read_stamp() is None
    assert p1.get_many([b"k"]) == [None] and other.get_many([b"k"]) == [None]
    assert p1.claim("y") == 1


def test_same_coordinates_same_partition(
    backend_store: Store, open_partition: Callable[..., StorePartition]
) -> None:
    part = open_partition("s", 3)
    e = part.claim("x")
    part.commit({b"k": b"v"}, stamp(1, e), e)
    again = open_partition("s", 3)
    assert again.get_many([b"k"]) == [b"v"]
    assert again.read_stamp() == stamp(1, e)


def test_fresh_partition(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    assert part.read_stamp() is None
    assert part.key_count() == 0
    assert part.get_many([b"a", b"b"]) == [None, None]
    assert list(part.scan()) == []


def test_commit_writes_data_and_stamp(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    epoch = part.claim("me")
    st_ = Stamp(42, 7, {0: (10, 2), 3: (5, 0)}, epoch)
    part.commit({b"a": b"1", b"b": b'{"x":2}', b"\x00\xff": b"bin"}, st_, epoch)
    assert part.read_stamp() == st_
    assert part.get_many([b"a", b"zz", b"b", b"\x00\xff"]) == [b"1", None, b'{"x":2}', b"bin"]
    assert part.key_count() == 3


def test_get_many_empty(open_partition: Callable[..., StorePartition]) -> None:
    assert open_partition().get_many([]) == []


def test_commit_without_changes_writes_stamp(
    open_partition: Callable[..., StorePartition],
) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({}, stamp(3, epoch), epoch)
    assert part.read_stamp() == stamp(3, epoch)
    assert part.key_count() == 0


def test_overwrite_and_delete(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({b"a": b"1", b"b": b"2", b"c": b"3"}, stamp(1, epoch), epoch)
    part.commit({b"a": b"10", b"b": None, b"never": None}, stamp(2, epoch), epoch)
    assert part.get_many([b"a", b"b", b"c", b"never"]) == [b"10", None, b"3", None]
    assert part.key_count() == 2
    assert part.read_stamp() == stamp(2, epoch)


def test_commit_with_older_epoch_is_fenced(open_partition: Callable[..., StorePartition]) -> None:
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


@pytest.mark.unit
def test_fenced_error_is_state_error() -> None:
    assert issubclass(FencedError, StateError)


def test_commit_with_newer_or_equal_epoch_ok(
    open_partition: Callable[..., StorePartition],
) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({b"a": b"1"}, stamp(1, epoch), epoch)
    part.commit({b"a": b"2"}, stamp(2, epoch + 5), epoch + 5)
    assert part.get_many([b"a"]) == [b"2"]


def test_large_commit_complete(open_partition: Callable[..., StorePartition]) -> None:
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


def test_scan_returns_everything_in_batches(
    open_partition: Callable[..., StorePartition],
) -> None:
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


def test_clear(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.claim("me")
    part.commit({b"a": b"1"}, stamp(1, epoch + 1), epoch + 1)
    part.clear()
    assert part.read_stamp() is None
    assert part.key_count() == 0
    assert part.get_many([b"a"]) == [None]
    assert part.claim("again") == 1  # the epoch is reset too


def test_open_store_factory(backend_store: Store) -> None:
    reopened = open_store(backend_store.url)
    try:
        assert type(reopened) is type(backend_store)
        assert reopened.url == backend_store.url
    finally:
        reopened.close()


# -- Stamp -----------------------------------------------------------------------------

offsets = st.integers(min_value=-1, max_value=2**62)
stamps = st.builds(
    Stamp,
    input_offset=offsets,
    changelog_offset=offsets,
    upstream=st.dictionaries(
        st.integers(min_value=0, max_value=2**31 - 1),
        st.tuples(offsets, st.integers(min_value=0, max_value=2**31 - 1)),
        max_size=8,
    ),
    epoch=st.integers(min_value=0, max_value=2**40),
)


@pytest.mark.unit
@given(stamps)
def test_stamp_round_trip(value: Stamp) -> None:
    assert Stamp.decode(value.encode()) == value


@pytest.mark.unit
def test_stamp_decode_defaults() -> None:
    assert Stamp.decode(b'{"in":5,"cl":6}') == Stamp(5, 6, {}, 0)


@pytest.mark.unit
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"{}",
        b'{"in":1}',
        b'{"cl":1}',
        b"[1,2]",
        b"null",
        b"42",
        b'"text"',
        b'{"in":"x","cl":1}',
        b'{"in":null,"cl":1}',
        b'{"in":1,"cl":1,"up":{"x":[1,2]}}',
        b'{"in":1,"cl":1,"up":{"0":[1]}}',
        b'{"in":1,"cl":1,"up":{"0":5}}',
        b'{"in":1,"cl":1,"ep":"e"}',
        b'{"in":1e400,"cl":1}',
        b"\xff\xfe",
        # "up" of the wrong JSON type
        b'{"in":1,"cl":1,"up":[1]}',
        b'{"in":1,"cl":1,"up":null}',
        b'{"in":1,"cl":1,"up":"s"}',
    ],
)
def test_corrupt_stamp_raises_state_error(data: bytes) -> None:
    with pytest.raises(StateError, match="corrupt state stamp"):
        Stamp.decode(data)


@pytest.mark.unit
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_stamp_decode_never_raises_other_errors(data: bytes) -> None:
    try:
        Stamp.decode(data)
    except StateError:
        pass


# -- Redis specifics ---------------------------------------------------------------------


@pytest.mark.unit
def test_partition_keys_hash_tag() -> None:
    data, meta = partition_keys("app", "counts", 7)
    assert data == "ks:{app:counts:7}:d"
    assert meta == "ks:{app:counts:7}:m"
    assert "{app:counts:7}" in data and "{app:counts:7}" in meta


@pytest.mark.integration
def test_redis_layout(redis_url: str) -> None:
    app_id = f"layout-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url)
    client = redis.Redis.from_url(redis_url)
    part = store.partition(app_id, "st", 2)
    try:
        epoch = part.claim("owner-1")
        part.commit({b"k": b"v"}, stamp(9, epoch), epoch)
        data_key, meta_key = partition_keys(app_id, "st", 2)
        assert client.hgetall(data_key) == {b"k": b"v"}
        meta: dict[Any, Any] = client.hgetall(meta_key)
        assert meta[b"epoch"] == b"1"
        assert meta[b"owner"] == b"owner-1"
        assert Stamp.decode(meta[b"stamp"]) == stamp(9, epoch)
        # both keys hash to the same cluster slot
        tag = f"{{{app_id}:st:2}}"
        assert tag in data_key and tag in meta_key
    finally:
        part.clear()
        client.close()
        store.close()
    assert client.exists(data_key, meta_key) == 0


@pytest.mark.integration
def test_redis_ping(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        store.ping()
    finally:
        store.close()


@pytest.mark.unit
def test_redis_ping_unreachable_redacts_password() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    try:
        with pytest.raises(StateError) as info:
            store.ping()
    finally:
        store.close()
    assert "s3cret" not in str(info.value)
    assert "user:***@127.0.0.1:1" in str(info.value)


@pytest.mark.unit
def test_bad_redis_url() -> None:
    with pytest.raises(StateError):
        RedisStore("redis://host:notaport/0")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("rediss://default:p@ss@h:6380/1", "rediss://default:***@h:6380/1"),
        ("redis://user@h:6379", "redis://user:***@h:6379"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "pw" not in redact(url) and "p@ss" not in redact(url)


@pytest.mark.unit
def test_redact_query_password() -> None:
    assert "secret" not in redact("redis://h:6379/0?password=secret")


@pytest.mark.unit
def test_open_store_schemes() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    r = open_store("redis://127.0.0.1:1/0")
    assert isinstance(r, RedisStore)
    r.close()


# -- contract: ownership, copy_missing, clear_data ----------------------------------------


def test_claim_with_minimum(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    assert part.owner_epoch() == 0
    assert part.claim("a", 5) == 5  # max(0 + 1, 5)
    assert part.owner_epoch() == 5
    assert part.claim("b", 3) == 6  # max(5 + 1, 3)
    assert part.claim("c", 6) == 7  # max(6 + 1, 6)
    assert part.claim("d", 0) == 8
    assert part.claim("e", 100) == 100
    assert part.owner_epoch() == 100


def test_owner_epoch_is_not_the_stamp_epoch(
    open_partition: Callable[..., StorePartition],
) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({b"a": b"1"}, stamp(1, epoch + 10), epoch + 10)
    assert part.owner_epoch() == epoch  # only claim() raises it


def test_copy_missing_sets_only_absent_keys(
    open_partition: Callable[..., StorePartition],
) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({b"a": b"local", b"b": b"local"}, stamp(1, epoch), epoch)
    added = part.copy_missing([(b"a", b"remote"), (b"c", b"remote"), (b"d", b"remote")], epoch)
    assert added == 2
    assert part.get_many([b"a", b"b", b"c", b"d"]) == [b"local", b"local", b"remote", b"remote"]
    assert part.read_stamp() == stamp(1, epoch)  # the stamp is untouched
    assert part.copy_missing([(b"c", b"again")], epoch + 1) == 0  # newer epoch ok
    assert part.get_many([b"c"]) == [b"remote"]
    assert part.copy_missing([], epoch) == 0


def test_copy_missing_large(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    epoch = part.claim("me")
    part.commit({b"k0": b"local"}, stamp(1, epoch), epoch)
    items = [(f"k{i}".encode(), b"r") for i in range(2 * CHUNK + 7)]
    assert part.copy_missing(items, epoch) == 2 * CHUNK + 6
    assert part.key_count() == 2 * CHUNK + 7
    assert part.get_many([b"k0", b"k1"]) == [b"local", b"r"]


def test_copy_missing_is_fenced(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    old = part.claim("old")
    part.commit({b"a": b"1"}, stamp(1, old), old)
    part.claim("new")
    with pytest.raises(FencedError):
        part.copy_missing([(b"b", b"zombie"), (b"c", b"zombie")], old)
    assert part.get_many([b"b", b"c"]) == [None, None]
    assert part.key_count() == 1


def test_clear_data_keeps_epoch(open_partition: Callable[..., StorePartition]) -> None:
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


def test_clear_data_on_fresh_partition(open_partition: Callable[..., StorePartition]) -> None:
    part = open_partition()
    part.clear_data()
    assert part.read_stamp() is None and part.owner_epoch() == 0
