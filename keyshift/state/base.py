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
from typing import Any, Protocol

import orjson

from keyshift.errors import StateError

MISSING: Any = object()
"""Sentinel for "no state yet for this key" (what an aggregate starts from)."""


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
        first_offset: in a changelog marker, the offset of the first changelog
            record of the marker's commit on that partition; -1 when unknown (a
            commit with no record there, exactly-once, or a marker written
            before this field existed). See :mod:`keyshift.state.changelog`.
    """

    input_offset: int
    changelog_offset: int
    upstream: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    epoch: int = 0
    ts_ms: int = 0
    first_offset: int = -1

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "in": self.input_offset,
                "cl": self.changelog_offset,
                "up": {str(u): list(pos) for u, pos in self.upstream.items()},
                "ep": self.epoch,
                "ts": self.ts_ms,
                "fo": self.first_offset,
            }
        )

    @classmethod
    def decode(cls, data: bytes | None) -> Stamp:
        """Parse an encoded stamp; anything but the exact shape :meth:`encode`
        writes (integers, not floats or booleans) is refused.

        Raises:
            StateError: ``data`` is not a stamp.
        """
        try:
            raw = orjson.loads(data or b"")
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            up = raw.get("up", {})
            if not isinstance(up, dict):
                raise TypeError("'up' is not an object")
            upstream = {}
            for u, pos in up.items():
                if not isinstance(pos, list) or len(pos) != 2:
                    raise TypeError(f"upstream {u!r} is not [offset, index]")
                upstream[int(u)] = (_int(pos[0], "up"), _int(pos[1], "up"))
            return cls(
                input_offset=_int(raw["in"], "in"),
                changelog_offset=_int(raw["cl"], "cl"),
                upstream=upstream,
                epoch=_int(raw.get("ep", 0), "ep"),
                ts_ms=_int(raw.get("ts", 0), "ts"),
                first_offset=_int(raw.get("fo", -1), "fo"),
            )
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise StateError(f"corrupt state stamp {data!r:.200}: {exc}") from exc


def _int(value: object, name: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{name!r} is not an integer: {value!r:.50}")
    return value


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

    def get_many(self, keys: Sequence[bytes], epoch: int = 0) -> list[bytes | None]:
        """Values of ``keys`` (None where absent), in one round trip.

        With ``epoch`` (the reader's owner epoch), refuses to answer from a
        partition whose stored epoch is older: its state is gone.

        Raises:
            StateLostError: the stored owner epoch is older than ``epoch``.
        """
        ...

    def commit(self, changes: Mapping[bytes, bytes | None], stamp: Stamp, epoch: int) -> None:
        """Write ``changes`` (None = delete) and then ``stamp``, refusing unless
        ``epoch`` is the stored owner epoch.

        Raises:
            FencedError: a newer owner epoch holds the partition.
            StateLostError: the stored owner epoch is older (the state is gone).
        """
        ...

    def owner_epoch(self) -> int:
        """The current owner epoch (0 when never claimed)."""
        ...

    def copy_missing(self, items: Sequence[tuple[bytes, bytes]], epoch: int) -> int:
        """Set each key that is absent (never overwrite); checks ``epoch`` as
        :meth:`commit` does; returns keys set."""
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

    def aside_tag(self) -> str | None:
        """On an aside copy: the tag of the move that made it (None if none)."""
        ...

    def drop_keys(self, keys: Sequence[bytes]) -> None:
        """Delete keys without fencing (used on a fenced migration source)."""
        ...

    def scan(self, batch: int = 1000) -> Iterator[list[tuple[bytes, bytes]]]:
        """All key/value pairs, in batches."""
        ...

    def key_count(self) -> int: ...

    def usage(self) -> dict[str, int]:
        """``{"keys": ..., "bytes": ...}``: how much the data holds (bytes approximate)."""
        ...

    def clear(self) -> None:
        """Delete all data, the stamp and the epoch."""
        ...


class Store(Protocol):
    """A state backend: opens partitions."""

    url: str

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> StorePartition: ...

    def ping(self) -> None:
        """Check the backend answers.

        Raises:
            StateError: it does not.
        """
        ...

    def close(self) -> None: ...
