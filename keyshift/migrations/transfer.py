"""Direct Redis-to-Redis state transfer: stop-and-copy and progressive.

Both start by *fencing* the source: claiming it bumps the owner epoch stored
next to the data there, so a zombie old owner's next write fails. The source
copy is deleted (data and stamp; the epoch stays as a fence) once the target
holds everything.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from keyshift.errors import FencedError, StateError, StateLostError
from keyshift.progress import Ticker
from keyshift.state.base import Stamp, StorePartition

log = logging.getLogger("keyshift.migrations.transfer")

BATCH = 1000


@dataclass
class TransferStats:
    keys: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _size(items: Sequence[tuple[bytes, bytes]]) -> int:
    return sum(len(k) + len(v) for k, v in items)


def stop_and_copy(
    source: StorePartition, target: StorePartition, epoch: int, owner: str, *, what: str = ""
) -> tuple[Stamp | None, TransferStats]:
    """Copy every key of ``source`` to ``target``; returns the copied stamp."""
    started = time.monotonic()
    source.claim(owner, epoch)
    stamp = source.read_stamp()
    target.clear_data()
    stats = TransferStats()
    if _copy_whole(source, target, epoch, stats):
        return _finish(source, target, stamp, epoch, stats, started)
    ticker = Ticker()
    for batch in source.scan(BATCH):
        target.copy_missing(batch, epoch)
        stats.keys += len(batch)
        stats.bytes += _size(batch)
        if ticker.due():
            log.info("copying state", extra={"task": what, "keys": stats.keys})
    return _finish(source, target, stamp, epoch, stats, started)


def _finish(
    source: StorePartition,
    target: StorePartition,
    stamp: Stamp | None,
    epoch: int,
    stats: TransferStats,
    started: float,
) -> tuple[Stamp | None, TransferStats]:
    if stamp is not None:
        target.commit({}, replace(stamp, epoch=epoch), epoch)
    source.clear_data()
    stats.seconds = time.monotonic() - started
    return stamp, stats


def _copy_whole(
    source: StorePartition, target: StorePartition, epoch: int, stats: TransferStats
) -> bool:
    """Move the whole hash as one DUMP/RESTORE when both ends are Redis."""
    dump = getattr(source, "dump_data", None)
    restore = getattr(target, "restore_data", None)
    if dump is None or restore is None:
        return False
    payload = dump()
    if payload is None:
        return True  # nothing to copy
    try:
        stats.keys = restore(payload, epoch)
    except FencedError:
        raise
    except StateError as exc:
        log.info("DUMP/RESTORE refused; copying key by key", extra={"error": str(exc)})
        return False
    stats.bytes = len(payload)
    return True


class ProgressiveCopy:
    """Resume processing at once; fetch keys on demand; copy the rest in steps."""

    def __init__(
        self,
        source: StorePartition,
        target: StorePartition,
        epoch: int,
        *,
        what: str = "",
        origins: Sequence[StorePartition] = (),
    ) -> None:
        self.target = target
        self.epoch = epoch
        self.what = what
        self.stats = TransferStats()
        self.fetched = 0
        self.done = False
        # Newest first: HSETNX keeps a newer source's value over an older one's.
        self._sources = [source, *origins]
        #: Each source's owner epoch as this copy's claim left it (see ``begin``).
        self._claimed: list[int] = []
        self._batches = itertools.chain.from_iterable(s.scan(BATCH) for s in self._sources)
        self._started = time.monotonic()
        self._last_log = self._started

    @classmethod
    def begin(
        cls,
        source: StorePartition,
        target: StorePartition,
        epoch: int,
        owner: str,
        *,
        resume: bool,
        what: str = "",
        origins: Sequence[StorePartition] = (),
    ) -> tuple[ProgressiveCopy, Stamp | None]:
        """Fence the source and give the target the source's stamp (not its data).

        When ``resume`` is set the target already holds newer values from an
        interrupted copy; they are kept (the copy never overwrites). ``origins``:
        the source's own sources, newest first, while the source is still
        mid-copy (chained copy); keys missing at the source are read there.
        """
        copy = cls(source, target, epoch, what=what, origins=origins)
        copy._claimed = [each.claim(owner, epoch) for each in copy._sources]
        if resume:
            return copy, target.read_stamp()
        stamp = source.read_stamp()
        target.clear_data()
        if stamp is not None:
            target.commit({}, replace(stamp, epoch=epoch), epoch)
        return copy, stamp

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of keys not yet local: one round trip to the source, and one more to
        each older source of a chain for the keys still missing.

        Raises:
            StateLostError: a source's Redis lost the state (restarted empty):
                its answer "absent" would count the key again from zero.
        """
        if self.done or not keys:
            return [None] * len(keys)
        self.fetched += len(keys)
        values: list[bytes | None] = [None] * len(keys)
        missing = list(range(len(keys)))
        for source in self._sources:
            found = source.get_many([keys[i] for i in missing], self.epoch)
            for i, value in zip(missing, found, strict=True):
                values[i] = value
            missing = [i for i in missing if values[i] is None]
            if not missing:
                break
        return values

    def forget(self, keys: Sequence[bytes]) -> None:
        """Keys deleted at the target: delete them at the sources so they stay deleted."""
        for source in self._sources:
            source.drop_keys(keys)

    def step(self) -> bool:
        """Copy one batch; returns True once everything is local.

        Raises:
            StateLostError: a source lost the state during the copy (its scan
                ended early on an emptied Redis).
            FencedError: another instance claimed a source since.
        """
        if self.done:
            return True
        batch = next(self._batches, None)
        if batch is None:
            self._check_sources()
            for source in self._sources:
                source.clear_data()
            self.done = True
            self.stats.seconds = time.monotonic() - self._started
            return True
        self.target.copy_missing(batch, self.epoch)
        self.stats.keys += len(batch)
        self.stats.bytes += _size(batch)
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.info("background state copy", extra={"task": self.what, "keys": self.stats.keys})
        return False

    def _check_sources(self) -> None:
        """Every source still holds the epoch this copy's claim gave it: an emptied
        Redis ends a scan early as if all had been copied."""
        for source, claimed in zip(self._sources, self._claimed, strict=True):
            held = source.owner_epoch()
            if held < claimed:
                raise StateLostError(
                    self.what, f"a copy source's owner epoch fell from {claimed} to {held}"
                )
            if held > claimed:
                raise FencedError(
                    f"{self.what}: a copy source was claimed again (epoch {held} > {claimed})"
                )
