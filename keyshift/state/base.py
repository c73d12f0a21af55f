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
    """

    input_offset: int
    changelog_offset: int
    upstream: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    epoch: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "in": self.input_offset,
                "cl": self.changelog_offset,
                "up": {str(u): list(pos) for u, pos in self.upstream.items()},
                "ep": self.epoch,
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
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateError(f"corrupt state stamp {data!r}: {exc}") from exc


class StorePartition(Protocol):
    """Backend I/O for one store of one task."""

    def claim(self, owner: str) -> int:
        """Become the owner: bump and return the owner epoch (fences older owners)."""
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

    def partition(self, app_id: str, store: str, partition: int) -> StorePartition: ...

    def close(self) -> None: ...
