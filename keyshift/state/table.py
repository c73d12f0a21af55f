"""A task's write-back view of one store partition.

Reads hit a local cache (missing keys are fetched in batches with
:meth:`Table.prefetch`); writes stay in the cache and are marked dirty until
the runtime commits them with :meth:`Table.take_changes` / :meth:`Table.committed`.
Values are held decoded; they cross the wire as orjson bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson

from keyshift.errors import SerializationError, StateError
from keyshift.state.base import MISSING, Stamp, StorePartition
from keyshift.state.changelog import check_state_key

_NOT_LOADED: Any = object()

#: Largest changelog record (key + value) a table accepts by default: librdkafka's
#: default ``message.max.bytes`` (1,000,000) less room for the record's overhead.
DEFAULT_MAX_RECORD_BYTES = 1_000_000 - 128
# orjson encodes integers in [-2**63, 2**64); others raise.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class RemoteSource(Protocol):
    """Where keys not yet local come from during a progressive migration."""

    done: bool

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def forget(self, keys: Sequence[bytes]) -> None: ...


def encode_value(value: Any) -> bytes | None:
    return None if value is MISSING or value is None else orjson.dumps(value)


def decode_value(data: bytes | None) -> Any:
    return MISSING if data is None else orjson.loads(data)


class Table:
    """Cached, dirty-tracking access to one store partition."""

    def __init__(
        self,
        backend: StorePartition,
        *,
        max_entries: int = 200_000,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.backend = backend
        self.max_entries = max_entries
        self.max_record_bytes = max_record_bytes
        self.epoch = 0
        self.stamp: Stamp | None = None
        self.resume_offset = -1
        self._cache: dict[bytes, Any] = {}
        self._dirty: set[bytes] = set()
        # Encoded values of dirty keys, made by put() (see there).
        self._encoded: dict[bytes, bytes] = {}
        self.source: RemoteSource | None = None
        self._fills: dict[bytes, bytes] = {}
        self.read_seconds = 0.0  # waiting for the backend's reads
        self.remote_seconds = 0.0  # waiting for a migration source's reads

    def adopt(self, stamp: Stamp | None, epoch: int) -> None:
        """Start from the restored ``stamp``; skip input the stamp already covers."""
        self.stamp = stamp
        self.epoch = epoch
        self.resume_offset = -1 if stamp is None else stamp.input_offset

    def prefetch(self, keys: Iterable[bytes | None]) -> None:
        missing = list({k for k in keys if k is not None and k not in self._cache})
        if missing:
            self._load(missing)

    def _load(self, keys: list[bytes]) -> None:
        """Read keys locally, then (mid-migration) the still-absent ones remotely."""
        cache = self._cache
        began = time.perf_counter()
        values = self.backend.get_many(keys, self.epoch)
        self.read_seconds += time.perf_counter() - began
        source = self.source
        if source is not None and not source.done:
            absent = [k for k, v in zip(keys, values, strict=True) if v is None]
            if absent:
                began = time.perf_counter()
                fetched = source.fetch(absent)
                self.remote_seconds += time.perf_counter() - began
                for key, raw in zip(absent, fetched, strict=True):
                    if raw is not None:
                        self._fills[key] = raw
                        cache[key] = orjson.loads(raw)
                    else:
                        cache[key] = MISSING
                for key, raw in zip(keys, values, strict=True):
                    if raw is not None:
                        cache[key] = orjson.loads(raw)
                return
        for key, raw in zip(keys, values, strict=True):
            cache[key] = decode_value(raw)

    def get(self, key: bytes | None) -> Any:
        if key is None:
            return MISSING
        value = self._cache.get(key, _NOT_LOADED)
        if value is _NOT_LOADED:
            self._load([key])
            value = self._cache[key]
        return value

    def put(self, key: bytes | None, value: Any) -> None:
        """Set ``key``'s value (None or MISSING deletes it).

        A value that cannot reach the changelog is refused here, before the
        state changes, so the record that produced it goes to the dead-letter
        topic instead of failing every later commit: the reserved marker key,
        a value orjson cannot encode (too deep, an integer beyond 64 bits, a
        lone surrogate, an unknown type) and a key plus value larger than
        ``max_record_bytes``. Values other than numbers are encoded here once,
        and the commit reuses that encoding: a value must not be changed in
        place after it was put.

        Raises:
            SerializationError: the key or value cannot be committed.
        """
        if key is None:
            return
        if len(key) > self.max_record_bytes:
            raise SerializationError(
                f"state key of {len(key)} bytes is larger than the "
                f"largest changelog record ({self.max_record_bytes})"
            )
        check_state_key(key)
        cls = value.__class__
        if cls is int:
            if not _INT_MIN <= value <= _INT_MAX:
                raise SerializationError(f"state value {value} does not fit in 64 bits")
            self._encoded.pop(key, None)
        elif value is None or value is MISSING or cls is float or cls is bool:
            self._encoded.pop(key, None)
        else:
            self._encoded[key] = self._encode(key, value)
        self._cache[key] = MISSING if value is None else value
        self._dirty.add(key)

    def _encode(self, key: bytes, value: Any) -> bytes:
        try:
            raw = orjson.dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise SerializationError(f"state value cannot be encoded: {exc}") from exc
        if len(raw) + len(key) > self.max_record_bytes:
            raise SerializationError(
                f"state value of {len(raw)} bytes (key {len(key)} bytes) is larger than the "
                f"largest changelog record ({self.max_record_bytes} bytes)"
            )
        return raw

    def recommit(self, keys: Iterable[bytes]) -> None:
        """Mark ``keys`` changed with their current values, so the next commit
        writes them to the changelog again (a restore found orphaned changelog
        records of theirs; see :mod:`keyshift.migrations.replay`)."""
        wanted = list(keys)
        self.prefetch(wanted)
        self._dirty.update(wanted)

    def load(self, changes: dict[bytes, bytes | None]) -> None:
        """Apply already-committed changes (changelog replay) to the cache."""
        for key, raw in changes.items():
            self._cache[key] = decode_value(raw)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The encoded latest value of every key changed since the last commit."""
        cache, encoded = self._cache, self._encoded
        return {k: encoded[k] if k in encoded else encode_value(cache[k]) for k in self._dirty}

    def take_fills(self) -> dict[bytes, bytes]:
        """Keys fetched from a migration source: written locally, not to the changelog."""
        fills, self._fills = self._fills, {}
        return fills

    def write(self, changes: dict[bytes, bytes | None], stamp: Stamp) -> None:
        """Commit ``changes`` and ``stamp`` to the backend (fenced by this table's epoch).

        Mid-migration, keys deleted here are first deleted at the source too, so
        neither the background copy nor an on-demand fetch brings them back.
        """
        error = write_tables([(self, changes, stamp)])[0]
        if error is not None:
            raise error

    def _forget_at_source(self, changes: dict[bytes, bytes | None]) -> None:
        source = self.source
        if source is not None and not source.done:
            deleted = [k for k, v in changes.items() if v is None]
            if deleted:
                source.forget(deleted)

    def committed(self, stamp: Stamp) -> None:
        """The changes taken are durable; evict the cache if it grew too large."""
        self._dirty.clear()
        self._encoded.clear()
        self.stamp = stamp
        if len(self._cache) > self.max_entries:
            self._cache.clear()

    def rollback(self) -> None:
        """Forget every change since the last commit (its transaction was aborted).

        The backend holds exactly the committed state, so the cache is dropped
        whole and refilled on demand; keys fetched from a migration source are
        fetched again (the source keeps them until its copy is complete, and the
        background copy brings the rest).
        """
        self._drop_cache()
        self.adopt(self.stamp, self.epoch)  # skip again what the committed stamp covers

    def release(self) -> dict[bytes, Any]:
        """The task left this worker: detach the cache and return it, for the
        caller to free when it suits it (the worker frees a slice per loop
        turn). The table keeps none of it: a dropped task can sit in reference
        cycles until a full garbage collection."""
        cache, self._cache = self._cache, {}
        self._drop_cache()
        self.source = None
        return cache

    def _drop_cache(self) -> None:
        self._cache.clear()
        self._dirty.clear()
        self._encoded.clear()
        self._fills.clear()

    def __len__(self) -> int:
        return len(self._cache)


def write_tables(
    writes: Sequence[tuple[Table, dict[bytes, bytes | None], Stamp]],
) -> list[StateError | None]:
    """Commit several tables (see :meth:`Table.write`), batched where the backend
    can: one round trip per Redis server instead of one per table.

    Each table is fenced on its own. Returns one error (or None) per write;
    nothing is raised, so one fenced table does not hide the others' results.
    """
    for table, changes, _ in writes:
        table._forget_at_source(changes)
    results: list[StateError | None] = [None] * len(writes)
    batches: dict[Any, list[int]] = {}
    for i, (table, _, _) in enumerate(writes):
        batches.setdefault(getattr(type(table.backend), "commit_many", None), []).append(i)
    for commit_many, indexes in batches.items():
        if commit_many is None:
            for i in indexes:
                table, changes, stamp = writes[i]
                try:
                    table.backend.commit(changes, stamp, table.epoch)
                except StateError as exc:
                    results[i] = exc
            continue
        errors = commit_many(
            [
                (writes[i][0].backend, writes[i][1], writes[i][2], writes[i][0].epoch)
                for i in indexes
            ]
        )
        for i, error in zip(indexes, errors, strict=True):
            results[i] = error
    return results


def read_owner_epochs(tables: Sequence[Table]) -> list[int]:
    """The current owner epoch of each table's partition, batched where the backend
    can (one round trip per Redis server)."""
    results = [0] * len(tables)
    batches: dict[Any, list[int]] = {}
    for i, table in enumerate(tables):
        batches.setdefault(getattr(type(table.backend), "owner_epoch_many", None), []).append(i)
    for many, indexes in batches.items():
        if many is None:
            for i in indexes:
                results[i] = tables[i].backend.owner_epoch()
            continue
        for i, epoch in zip(indexes, many([tables[i].backend for i in indexes]), strict=True):
            results[i] = epoch
    return results
