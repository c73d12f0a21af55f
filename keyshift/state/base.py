"""The state backend interface.

A :class:`Store` backend (Redis, memory) opens one :class:`StorePartition` per
(application, store, task partition). A partition does the I/O: batched reads,
atomic fenced commits of changed keys together with the :class:`Stamp` that
says which input and changelog offsets the data reflects, and the owner epoch
used to fence a zombie owner. Buffering and caching live in
:mod:`keyshift.state.table`, not in the backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from keyshift.errors import StateError


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a store partition's data reflects.

    Attributes:
        input_offset: next offset of the task's input partition not yet applied.
        changelog_offset: next changelog offset not yet reflected in the data.
        upstream: for tasks reading a repartition topic, the last applied origin
            ``(offset, index)`` per upstream partition (for duplicate suppression).
        epoch: owner epoch of the instance that wrote the stamp.
        ts_ms: wall-clock time the last record it reflects was processed (the
            start of a migration's pause).
    """

    input_offset: int
    changelog_offset: int
    upstream: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    epoch: int = 0
    ts_ms: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "in": self.input_offset,
                "cl": self.changelog_offset,
                "up": {str(u): list(pos) for u, pos in self.upstream.items()},
                "ep": self.epoch,
                "ts": self.ts_ms,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Stamp:
        try:
            raw = orjson.loads(data)
            return cls(
                input_offset=int(raw["in"]),
                changelog_offset=int(raw["cl"]),
                upstream={int(u): (int(p[0]), int(p[1])) for u, p in raw.get("up", {}).items()},
                epoch=int(raw.get("ep", 0)),
                ts_ms=int(raw.get("ts", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise StateError(f"corrupt state stamp {data!r}: {exc}") from exc


class StorePartition(Protocol):
    """Backend I/O for one store of one task."""

    def claim(self, owner: str, minimum: int = 0) -> int:
        """Become the owner: raise the owner epoch to ``max(epoch + 1, minimum)``.

        Returns the new epoch; every commit made with an older epoch is refused
        from now on (fences older owners). ``minimum`` keeps epochs monotonic per
        task across different Redis servers.
        """
        ...

    def read_stamp(self) -> Stamp | None:
        """The committed stamp, or None when the partition holds no state."""
        ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``keys`` (None where absent), in one round trip."""
        ...

    def commit(self, changes: Mapping[bytes, bytes | None], stamp: Stamp, epoch: int) -> None:
        """Write ``changes`` (None = delete) and then ``stamp``, refusing if fenced.

        Raises:
            FencedError: a newer owner epoch holds the partition.
        """
        ...

    def owner_epoch(self) -> int:
        """The current owner epoch (0 when never claimed)."""
        ...

    def copy_missing(self, items: Sequence[tuple[bytes, bytes]], epoch: int) -> int:
        """Set each key that is absent (never overwrite); fenced; returns keys set."""
        ...

    def clear_data(self) -> None:
        """Delete the data and the stamp, keeping the owner epoch."""
        ...

    def set_aside(self, tag: str) -> bool:
        """Move the data (not the stamp or epoch) to this partition's *aside copy*.

        The aside copy replaces any earlier one and is opened with
        ``Store.partition(..., aside=True)``; a chained copy reads it as one of
        its older sources. Constant time on Redis (RENAME). ``tag`` names the
        move: when the aside copy was already made under the same tag (a
        restore interrupted before its location was published, retried), it is
        kept and nothing moves; returns whether data moved.
        """
        ...

    def drop_keys(self, keys: Sequence[bytes]) -> None:
        """Delete keys without fencing (used on a fenced migration source)."""
        ...

    def scan(self, batch: int = 1000) -> Iterator[list[tuple[bytes, bytes]]]:
        """All key/value pairs, in batches."""
        ...

    def key_count(self) -> int: ...

    def clear(self) -> None:
        """Delete all data, the stamp and the epoch."""
        ...


class Store(Protocol):
    """A state backend: opens partitions."""

    url: str

    def partition(self, app_id: str, store: str, partition: int, *,
                  aside: bool = False) -> StorePartition: ...

    def close(self) -> None: ...
