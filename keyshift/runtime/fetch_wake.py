"""Wake the consumer's fetchers for the partitions it keeps through a rebalance.

librdkafka pauses every assigned partition while the application's rebalance
callback runs and resumes them when the callback assigns or unassigns. The
resume only clears a flag: it does not wake the broker thread that fetches
those partitions. A broker thread with nothing to fetch sleeps until a socket
event or its one-second serve timeout, so after a callback that outlasted the
in-flight fetch (a revocation commits first) the partitions the worker keeps
get no records for up to a second. Sending any request to a broker wakes its
thread, which then fetches the resumed partitions: one ``ListOffsets`` (a
watermark query) per leader of the kept partitions does that.

``bench/fetch_wake.py`` measures the gap with and without the wake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition

from keyshift.retry import kafka_error

log = logging.getLogger("keyshift.kafka")

#: The most a wake may add to a rebalance callback; past it the remaining
#: leaders are left to their serve timeout (at most a second).
WAKE_BUDGET_S = 0.5


class _PartitionMetadata(Protocol):
    leader: int


class _TopicMetadata(Protocol):
    partitions: dict[int, _PartitionMetadata]


class _ClusterMetadata(Protocol):
    topics: dict[str, _TopicMetadata]


class MetadataSource(Protocol):
    """Where the partitions' leaders are read: an AdminClient. Not the consumer:
    confluent-kafka's ``list_topics`` clears the consumer's per-thread call state,
    and a rebalance callback that calls it ends the process on the client's
    assertion when the callback returns."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> _ClusterMetadata: ...


class WakeableConsumer(Protocol):
    """The part of :class:`confluent_kafka.Consumer` the wake uses."""

    def assignment(self) -> list[TopicPartition]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = ..., cached: bool = ...
    ) -> tuple[int, int] | None: ...


def kept_partitions(
    consumer: WakeableConsumer, changed: Iterable[TopicPartition]
) -> list[TopicPartition]:
    """The consumer's assigned partitions that ``changed`` does not name."""
    moved = {(tp.topic, tp.partition) for tp in changed}
    return [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in moved]


def one_per_leader(
    metadata: MetadataSource, partitions: list[TopicPartition], deadline: float
) -> list[TopicPartition]:
    """One of ``partitions`` per leader broker (all of them where the metadata
    does not name a leader); topics not looked up by ``deadline`` (monotonic)
    are left out."""
    chosen: dict[object, TopicPartition] = {}
    for topic in sorted({tp.topic for tp in partitions}):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        meta = metadata.list_topics(topic, timeout=left).topics.get(topic)
        for tp in partitions:
            if tp.topic != topic:
                continue
            part = meta.partitions.get(tp.partition) if meta is not None else None
            leader: object = part.leader if part is not None and part.leader >= 0 else tp
            chosen.setdefault(leader, tp)
    return list(chosen.values())


def wake_fetchers(
    consumer: WakeableConsumer,
    changed: Iterable[TopicPartition],
    metadata: MetadataSource,
    *,
    budget_s: float = WAKE_BUDGET_S,
) -> int:
    """Wake the broker threads that fetch the partitions ``consumer`` keeps
    besides ``changed``; returns how many brokers answered a request. Safe to
    call inside a rebalance callback (``get_watermark_offsets`` keeps the
    consumer's call state; the leaders come from ``metadata``).

    Call it after the callback's ``incremental_assign``/``incremental_unassign``.
    It never raises: a failed wake only leaves the partitions to the serve timeout,
    and a failed query does not keep the other leaders from theirs.
    """
    deadline = time.monotonic() + budget_s
    try:
        # The assignment too may fail: a consumer being closed has no handle left.
        kept = kept_partitions(consumer, changed)
        if not kept:
            return 0
        chosen = one_per_leader(metadata, kept, deadline)
    except (KafkaException, RuntimeError) as exc:
        log.debug("looking up the kept partitions' leaders failed", extra={"error": str(exc)})
        return 0
    woken = 0
    for tp in chosen:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if _query(consumer, tp, left):
            woken += 1
    return woken


def _query(consumer: WakeableConsumer, tp: TopicPartition, timeout: float) -> bool:
    """Send one watermark query for ``tp``; whether it reached the broker. A broker's
    error answer (say, a leader not yet elected for a new topic) reached it and so
    woke its thread; a local error (a timeout, an unknown partition) did not."""
    try:
        consumer.get_watermark_offsets(
            TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
        )
    except KafkaException as exc:
        error = kafka_error(exc)
        code = -1 if error is None else error.code()
        log.debug(
            "waking the fetcher of a kept partition failed",
            extra={"topic": tp.topic, "partition": tp.partition, "error": str(exc)},
        )
        return code > 0
    except RuntimeError as exc:
        log.debug("waking the fetcher of a kept partition failed", extra={"error": str(exc)})
        return False
    return True
