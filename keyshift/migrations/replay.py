"""Rebuild a store partition from its changelog, from the backend's stamp to the end.

Only records followed by a marker are applied (see :mod:`keyshift.state.changelog`
for what a marker is and which records it covers); the backend is written in
chunks at marker boundaries, each chunk with the marker's stamp, so an
interrupted replay resumes where it stopped.

A replay also reports the keys of *orphaned* records: records of a commit whose
marker never landed. They sit in the changelog after the last marker, and a
later commit's marker would cover them; the new owner re-commits those keys
with their restored values (:meth:`~keyshift.state.table.Table.recommit`), so
the latest changelog record of every key is right again, also after compaction
removed the markers in between.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from keyshift.errors import BrokerError, StateError
from keyshift.polling import consume_available
from keyshift.progress import Ticker
from keyshift.retry import DEFAULT_RETRY, Retry
from keyshift.state.base import Stamp, StorePartition
from keyshift.state.changelog import MARKER_KEY, has_marker_header

log = logging.getLogger("keyshift.migrations.replay")

WRITE_EVERY = 50_000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay applied.

    Attributes:
        stamp: the stamp the backend holds now (None: no marker was ever seen).
        records: changelog records read.
        keys_written: keys written to the backend.
        seconds: how long it took.
        orphans: keys of records no marker covers (a commit cut short); the
            caller re-commits them (see the module docstring).
        deleted: keys the applied records deleted (a progressive copy must
            delete them at its sources too, or they come back).
    """

    stamp: Stamp | None
    records: int
    keys_written: int
    seconds: float
    orphans: frozenset[bytes] = frozenset()
    deleted: frozenset[bytes] = frozenset()


@dataclass
class ChangelogApplier:
    """Applies changelog records, in offset order, to a backend.

    ``feed`` takes records one by one; ``finish`` writes what is left. Kept
    apart from the Kafka loop so the rules can be tested record by record.
    """

    backend: StorePartition
    stamp: Stamp | None
    epoch: int
    where: str = ""
    write_every: int = WRITE_EVERY
    records: int = 0
    written: int = 0
    skipped_markers: int = 0
    _pending: list[Message] = field(default_factory=list)
    _applied: dict[bytes, bytes | None] = field(default_factory=dict)
    _orphans: set[bytes] = field(default_factory=set)
    _deleted: set[bytes] = field(default_factory=set)
    # A marker with the header was seen: header-less ones are forged from here on.
    _headers_seen: bool = False
    # A marker was seen in this replay: records after it are known to follow a marker.
    _marker_seen: bool = False

    def __post_init__(self) -> None:
        self._top_epoch = 0 if self.stamp is None else self.stamp.epoch

    def feed(self, msg: Message) -> None:
        self.records += 1
        if msg.key() == MARKER_KEY:
            # The reserved key is never data (check_state_key): a record with it
            # that is not a marker to trust is skipped.
            marker = self._marker(msg)
            if marker is not None:
                self._on_marker(msg, marker)
            return
        self._pending.append(msg)

    def _marker(self, msg: Message) -> Stamp | None:
        """The record's stamp if it is a marker to trust, else None."""
        headered = has_marker_header(msg.headers())
        if not headered and self._headers_seen:
            self._skip(msg, "a marker without the marker header after one with it")
            return None
        try:
            marker = Stamp.decode(msg.value())
        except StateError as exc:
            self._skip(msg, str(exc))
            return None
        if headered:
            self._headers_seen = True
        return marker

    def _skip(self, msg: Message, why: str) -> None:
        self.skipped_markers += 1
        log.warning(
            "skipping a changelog record with the marker key",
            extra={"where": self.where, "offset": msg.offset(), "reason": why},
        )

    def _on_marker(self, msg: Message, marker: Stamp) -> None:
        pending, self._pending = self._pending, []
        if marker.epoch < self._top_epoch:
            # A fenced zombie's commit, written after a newer owner took over.
            self._orphans.update(m.key() for m in pending)
            return
        self._top_epoch = marker.epoch
        bound = marker.first_offset
        applied = self._applied
        for m in pending:
            if self._marker_seen and m.offset() < bound:
                # Between the last marker and this commit's first record: a commit
                # that never got its marker. (Before the first marker seen the
                # earlier markers may have been compacted away: apply.)
                self._orphans.add(m.key())
            else:
                applied[m.key()] = m.value()
        self._marker_seen = True
        self.stamp = replace(marker, changelog_offset=msg.offset() + 1)
        if len(applied) >= self.write_every:
            self._write()

    def _write(self) -> None:
        assert self.stamp is not None
        applied = self._applied
        self.backend.commit(
            applied, replace(self.stamp, epoch=self.epoch, first_offset=-1), self.epoch
        )
        self.written += len(applied)
        self._deleted.update(k for k, v in applied.items() if v is None)
        self._deleted.difference_update(k for k, v in applied.items() if v is not None)
        self._applied = {}

    def finish(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Write what the last marker covers; returns ``(orphans, deleted)``."""
        if self.stamp is not None and (self._applied or self.records):
            self._write()
        self._orphans.update(m.key() for m in self._pending)
        self._pending = []
        return frozenset(self._orphans), frozenset(self._deleted)


def replay_changelog(
    consumer: Consumer,
    topic: str,
    partition: int,
    backend: StorePartition,
    stamp: Stamp | None,
    epoch: int,
    *,
    end: int | None = None,
    read_committed: bool = False,
    timeout_s: float = 120.0,
    retry: Retry = DEFAULT_RETRY,
) -> ReplayResult:
    """Apply the changelog tail beyond ``stamp`` to ``backend``; return the new stamp.

    ``end``: the partition's end offset when the caller already knows it (with
    ``read_committed``, its last stable offset); otherwise it is queried here.
    """
    started = time.monotonic()
    start = 0 if stamp is None else stamp.changelog_offset
    stable = read_committed and end is not None
    if end is None:
        tp = TopicPartition(topic, partition)
        try:
            low, end = retry.call(
                lambda: consumer.get_watermark_offsets(tp, timeout=10), f"offsets of {topic}"
            )
        except Exception as exc:
            raise BrokerError(f"cannot read offsets of {topic}[{partition}]: {exc}") from exc
        start = max(start, low)
    high = end
    # Under read_committed a single offset left before the stable end can only be
    # a transaction's control record (data is always followed by its commit
    # marker), so there is nothing to apply and no fetch is needed.
    if start >= high or (stable and high - start == 1):
        return ReplayResult(stamp, 0, 0, time.monotonic() - started)

    consumer.assign([TopicPartition(topic, partition, start)])
    applier = ChangelogApplier(backend, stamp, epoch, where=f"{topic}[{partition}]")
    ticker = Ticker()
    deadline = started + timeout_s
    try:
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"changelog replay of {topic}[{partition}] did not reach the end "
                    f"within {timeout_s:.0f}s (at {applier.records} records)"
                )
            for msg in consume_available(consumer, 10_000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise BrokerError(f"changelog replay of {topic}[{partition}]: {err}")
                applier.feed(msg)
            if ticker.due():
                log.info(
                    "replaying changelog",
                    extra={
                        "topic": topic,
                        "partition": partition,
                        "records": applier.records,
                        "end": high,
                        "start": start,
                    },
                )
        orphans, deleted = applier.finish()
    finally:
        consumer.unassign()
    seconds = time.monotonic() - started
    log.info(
        "changelog replayed",
        extra={
            "topic": topic,
            "partition": partition,
            "records": applier.records,
            "keys_written": applier.written,
            "orphans": len(orphans),
            "seconds": round(seconds, 3),
        },
    )
    return ReplayResult(applier.stamp, applier.records, applier.written, seconds, orphans, deleted)
