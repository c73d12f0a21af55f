"""The consumer group's rebalance callbacks, and the worker's readiness for a
rebalance it was told is coming.

:class:`RebalanceListener` receives librdkafka's callbacks and delegates:
assigned partitions get their state restored (by the migration tracker) and
a task each; revoked ones are committed and dropped; lost ones (exactly-once)
abort the open transaction. Both revocation callbacks unassign themselves,
even when they fail: the client library's fallback asks librdkafka for the
rebalance protocol from inside the callback, which can hang while the consumer
closes (confluentinc/librdkafka#4041). After each callback the fetchers of the
partitions the worker keeps are woken (:mod:`keyshift.runtime.fetch_wake`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from confluent_kafka import OFFSET_STORED, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from keyshift.errors import KeyshiftError
from keyshift.migrations.events import now_ms
from keyshift.migrations.locations import LocationsView
from keyshift.migrations.tracker import MigrationTracker
from keyshift.operators.topology import SubTopology, Topology
from keyshift.runtime.committer import Committer
from keyshift.runtime.fetch_wake import wake_fetchers
from keyshift.runtime.kafka import end_offsets, stable_end_offsets
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.tasks import TaskManager

log = logging.getLogger("keyshift.worker")

#: After committing ahead of a planned rebalance, a worker takes small batches
#: (at most ``SMALL_BATCH`` records), so that a rebalance callback waits for one
#: small batch at most, and defers regular commits and background copies; until
#: ``GRACE_S`` after its first rebalance callback, or ``PREPARED_S`` after it
#: committed.
SMALL_BATCH = 200
PREPARED_S = 3.0
GRACE_S = 0.15


class Readiness:
    """Whether a rebalance is expected now (see the constants above).

    While one is expected the heap is frozen (``gc.freeze()``): with many cached
    container values a full collection takes hundreds of milliseconds, and one
    that falls into a moved partition's pause adds all of it; frozen, a
    collection scans only what was allocated since. Frozen objects are still
    freed when their last reference goes; cycles among them wait for the thaw.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0
        self.frozen = False

    def prepare(self) -> None:
        """Committed ahead of a rebalance: be ready for it."""
        gc.freeze()
        self.frozen = True
        self._until = self._clock() + PREPARED_S

    def rebalanced(self) -> None:
        """A callback of the expected rebalance came; more may follow shortly."""
        self._until = min(self._until, self._clock() + GRACE_S)

    @property
    def expected(self) -> bool:
        return self._clock() < self._until

    def thaw(self) -> None:
        """The rebalance is over: the collector sees every object again."""
        if self.frozen:
            gc.unfreeze()
            self.frozen = False


@dataclass
class Closing:
    """Set while the worker closes its consumer (timings for the revocation's log)."""

    since: float
    commit_s: float


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{t.topic}[{t.partition}]" for t in partitions)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RebalanceListener:
    """The worker's ``on_assign``, ``on_revoke`` and ``on_lost`` (module docstring).

    ``closing()`` says whether the worker is closing or failed: assignments are
    then passed on untouched, and a failed worker commits nothing more.
    """

    def __init__(
        self,
        *,
        instance: str,
        topology: Topology,
        exactly_once: bool,
        admin: AdminClient,
        locations: LocationsView,
        migrations: MigrationTracker,
        tasks: TaskManager,
        committer: Committer,
        metrics: Metrics,
        readiness: Readiness,
        closing: Callable[[], Closing | None],
        failed: Callable[[], bool],
        last_batch: Callable[[], float],
        open_transaction_wait_s: float = 0.0,
    ) -> None:
        self.instance = instance
        self.topology = topology
        self.subs: dict[str, SubTopology] = topology.by_topic()
        self.exactly_once = exactly_once
        self.admin = admin
        self.locations = locations
        self.migrations = migrations
        self.tasks = tasks
        self.committer = committer
        self.metrics = metrics
        self.readiness = readiness
        self._closing = closing
        self._failed = failed
        self._last_batch = last_batch
        self.open_transaction_wait_s = open_transaction_wait_s
        #: Callbacks entered so far (the lost-revocation check's evidence that the
        #: consumer heard from the group between two of its looks).
        self.callbacks = 0

    # -- assignment --------------------------------------------------------------------
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.callbacks += 1
        if self._closing() is not None or self._failed():
            # Given partitions while leaving (another member left a moment
            # earlier): pass them on untouched. Restoring them would claim and
            # fence their state, and send their next owner to copy it from here.
            consumer.incremental_assign(partitions)
            log.info(
                "partitions assigned while closing; passing them on",
                extra={"instance": self.instance, "partitions": _names(partitions)},
            )
            return
        started = time.monotonic()
        self.metrics.rebalances += 1
        if partitions:
            self.readiness.rebalanced()
        self.metrics.restoring = True
        try:
            assigned, laps = self._restore_all(consumer, partitions, started)
        except KeyshiftError:
            log.exception("restoring assigned tasks failed")
            raise
        finally:
            self.metrics.restoring = False
        if not assigned:
            consumer.incremental_assign([])  # an empty assignment is answered too
        woken = wake_fetchers(consumer, partitions, self.admin)
        log.info(
            "partitions assigned",
            extra={
                "instance": self.instance,
                "partitions": ",".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in assigned),
                "seconds": round(time.monotonic() - started, 3),
                "woken_brokers": woken,
                **laps,
            },
        )

    def _restore_all(
        self, consumer: Consumer, partitions: list[TopicPartition], started: float
    ) -> tuple[list[TopicPartition], dict[str, float]]:
        """Restore every assigned task, assigning each partition as soon as its own
        restore is done (its first fetch overlaps the others' restores)."""
        self.tasks.check_assigned(partitions)
        assigned_ms = now_ms()
        ends: dict[tuple[str, int], int] = {}
        changelog = self.topology.changelog_topic
        wanted = [
            (store, tp.partition) for tp in partitions for store in self.subs[tp.topic].stores()
        ]
        if partitions:
            # One offsets request for the locations topic and every changelog
            # (under exactly-once, one more to find transactions still open).
            locations = (self.topology.locations_topic, 0)
            topics = [locations, *((changelog(s), p) for s, p in wanted)]
            if self.exactly_once:
                ends = stable_end_offsets(self.admin, topics, wait_s=self.open_transaction_wait_s)
            else:
                ends = end_offsets(self.admin, topics)
            self.locations.catch_up(ends[locations])
        looked_up = time.monotonic()
        assigned: list[TopicPartition] = []
        restoring = self.migrations.restore(
            [(s, p, ends.get((changelog(s), p))) for s, p in wanted], assigned_ms=assigned_ms
        )
        with closing(restoring) as ready:
            for tp in partitions:
                restored = [next(ready) for _ in self.subs[tp.topic].stores()]
                self.migrations.started((tp.topic, tp.partition), restored)
                self.metrics.restores += len(restored)
                self.metrics.restored_records += sum(r.event.tail_records for r in restored)
                task = self.tasks.open(
                    tp.topic, tp.partition, {r.event.store: r.table for r in restored}
                )
                start = task.start_offset()
                assigned.append(
                    TopicPartition(
                        tp.topic, tp.partition, OFFSET_STORED if start is None else start
                    )
                )
                consumer.incremental_assign(assigned[-1:])
        restored_at = time.monotonic()
        if partitions:
            self.migrations.publish()
        return assigned, {
            "locations_s": round(looked_up - started, 3),
            "restore_s": round(restored_at - looked_up, 3),
            "publish_s": round(time.monotonic() - restored_at, 3),
        }

    # -- revocation ----------------------------------------------------------------------
    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.callbacks += 1
        entered = time.monotonic()
        committed = entered
        if partitions:
            self.readiness.rebalanced()
        try:
            if not self._failed():
                # The revoked tasks' pause runs until the unassignment: commit
                # them, and leave the others' progress to the next regular commit.
                self.committer.commit(
                    leaving={(tp.topic, tp.partition) for tp in partitions}, only_leaving=True
                )
            committed = time.monotonic()
        finally:
            self._release(consumer, partitions)
            closing_info = self._closing()
            log.info(
                "partitions revoked",
                extra={
                    "instance": self.instance,
                    "partitions": _names(partitions),
                    # where the revoked tasks' pause went on this side
                    "since_batch_ms": _ms(entered - self._last_batch()),
                    **(
                        {
                            "close_commit_ms": _ms(closing_info.commit_s),
                            "consumer_close_ms": _ms(entered - closing_info.since),
                        }
                        if closing_info is not None
                        else {}
                    ),
                    "commit_ms": _ms(committed - entered),
                    "unassign_ms": _ms(time.monotonic() - committed),
                },
            )

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.callbacks += 1
        log.warning(
            "partitions lost", extra={"instance": self.instance, "partitions": _names(partitions)}
        )
        try:
            if self.exactly_once and not self._failed():
                # The open transaction covers the lost tasks: it must not commit.
                # Abort it and rewind the tasks this instance keeps.
                self.committer.abort(
                    "partitions lost", leaving={(tp.topic, tp.partition) for tp in partitions}
                )
        finally:
            self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the tasks and unassign their partitions. Their caches are freed from
        the loop, a slice per turn (see :mod:`keyshift.runtime.reaper`)."""
        paused = self.tasks.unassigned(partitions)
        if paused:
            consumer.resume(paused)
        consumer.incremental_unassign(partitions)
        if self._closing() is None:  # a closing consumer fetches nothing more
            wake_fetchers(consumer, partitions, self.admin)
