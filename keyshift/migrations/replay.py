"""Rebuild a store partition from its changelog, from the backend's stamp to the end.

Only records followed by a marker are applied; the backend is written in
chunks at marker boundaries, each chunk with the marker's stamp, so an
interrupted replay resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from confluent_kafka import Consumer, KafkaError, TopicPartition

from keyshift.errors import BrokerError
from keyshift.polling import consume_available
from keyshift.retry import DEFAULT_RETRY, Retry
from keyshift.state.base import Stamp, StorePartition
from keyshift.state.changelog import MARKER_KEY

log = logging.getLogger("keyshift.migrations.replay")

WRITE_EVERY = 50_000
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    stamp: Stamp | None
    records: int
    keys_written: int
    seconds: float


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
    pending: dict[bytes, bytes | None] = {}
    applied: dict[bytes, bytes | None] = {}
    records = written = 0
    top_epoch = 0 if stamp is None else stamp.epoch
    last_log = time.monotonic()
    deadline = started + timeout_s
    try:
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"changelog replay of {topic}[{partition}] did not reach the end "
                    f"within {timeout_s:.0f}s (at {records} records)"
                )
            for msg in consume_available(consumer, 10_000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise BrokerError(f"changelog replay of {topic}[{partition}]: {err}")
                records += 1
                key = msg.key()
                if key == MARKER_KEY:
                    marker = Stamp.decode(msg.value())
                    if marker.epoch < top_epoch:
                        # A fenced zombie's commit, written after a newer owner took over.
                        pending.clear()
                        continue
                    top_epoch = marker.epoch
                    applied.update(pending)
                    pending.clear()
                    stamp = replace(marker, changelog_offset=msg.offset() + 1)
                    if len(applied) >= WRITE_EVERY:
                        backend.commit(applied, replace(stamp, epoch=epoch), epoch)
                        written += len(applied)
                        applied.clear()
                else:
                    pending[key] = msg.value()
            now = time.monotonic()
            if now - last_log >= PROGRESS_EVERY_S:
                last_log = now
                log.info(
                    "replaying changelog",
                    extra={"topic": topic, "partition": partition, "records": records,
                           "end": high, "start": start},
                )
        if stamp is not None and (applied or records):
            backend.commit(applied, replace(stamp, epoch=epoch), epoch)
            written += len(applied)
    finally:
        consumer.unassign()
    seconds = time.monotonic() - started
    log.info(
        "changelog replayed",
        extra={"topic": topic, "partition": partition, "records": records,
               "keys_written": written, "seconds": round(seconds, 3)},
    )
    return ReplayResult(stamp, records, written, seconds)
