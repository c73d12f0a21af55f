"""The commit protocol: make a worker's progress durable, in an order that survives a
crash at any point.

``at_least_once``, per commit interval and before partitions are revoked:

1. Every changed key of every task's stores goes to its changelog partition.
2. The producer is flushed: outputs, dead letters and changelog records are
   delivered. An output its topic refuses for its own sake (too large) goes to
   the dead-letter topic with the reason; any other failure fails the commit
   before anything below happens.
3. Tasks another instance has claimed meanwhile are dropped (fenced).
4. One *marker* per changelog partition, carrying the task's stamp and the
   offset of this commit's first record there; flushed.
5. The store gets the changes and the stamp atomically (fenced by the owner epoch).
6. Input offsets are committed (a hint: the stamps hold the positions).

No marker is written before every output of the records it covers is
delivered, so a restore that resumes input after the last marker never skips
an output. A crash before a marker leaves changelog records no marker covers:
a replay never applies them (see :mod:`keyshift.state.changelog`), and the
next owner writes those keys again. State is never double-counted.

``exactly_once``: outputs, changelog records, markers and input offsets are one
Kafka transaction; the store is written only after it commits. A transaction
the group rejects (or that covers a fenced task) is aborted, and every task is
rewound to its last commit and processed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import partial

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from keyshift.config import Settings
from keyshift.errors import BrokerError, FencedError, TransactionAbortable
from keyshift.operators.topology import Topology
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.producer import (
    PURGED,
    RecordProducer,
    client_errors,
    producer_fenced,
    requires_abort,
)
from keyshift.runtime.task import Task
from keyshift.runtime.tasks import TaskManager
from keyshift.runtime.watchdog import WATCHDOG, Watchdog
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_HEADERS, MARKER_KEY
from keyshift.state.table import Table, write_tables

log = logging.getLogger("keyshift.commit")

TIMEOUT_S = 30.0
#: Aborted transactions in a row (no commit between) before the worker gives up.
MAX_ABORTS_IN_ROW = 5

TaskKey = tuple[str, int]


@dataclass
class _Pending:
    """One table's share of a commit."""

    task: Task
    store: str
    table: Table
    topic: str
    changes: dict[bytes, bytes | None]


class Committer:
    """Commits a worker's tasks (see the module docstring for the order)."""

    def __init__(
        self,
        *,
        producer: Producer,
        records: RecordProducer,
        consumer: Consumer,
        tasks: TaskManager,
        topology: Topology,
        settings: Settings,
        metrics: Metrics,
        watchdog: Watchdog = WATCHDOG,
    ) -> None:
        self.producer = producer
        self.records = records
        self.watchdog = watchdog
        self.consumer = consumer
        self.tasks = tasks
        self.topology = topology
        self.exactly_once = settings.exactly_once
        self.metrics = metrics
        self._changelogs = {topology.changelog_topic(s) for s in topology.store_names()}
        self._aborts_in_row = 0
        #: Tasks rewound by an abort since the loop last fetched a batch.
        self.rewound: list[Task] = []
        self._marker_offsets: dict[TaskKey, int] = {}
        self._first_offsets: dict[TaskKey, int] = {}
        self._marker_errors: list[str] = []

    # -- commit ------------------------------------------------------------------------
    def commit(self, *, leaving: Collection[TaskKey] = (), only_leaving: bool = False) -> None:
        """Make all progress durable.

        ``leaving``: tasks being revoked; if the transaction has to be aborted,
        they are not rewound (they are dropped right after). ``only_leaving``:
        commit just those (at-least-once only: a transaction commits everything).

        Raises:
            BrokerError: a record was not delivered; nothing was written to the
                store and no offset committed (the records are processed again).
        """
        only = only_leaving and not self.exactly_once
        tasks = [
            t for key, t in self.tasks.items() if t.has_progress() and (not only or key in leaving)
        ]
        fenced = self.tasks.drop_fenced(tasks)
        if fenced and self.exactly_once:
            # The transaction holds their outputs: it must not commit.
            self.abort("a task was fenced", leaving=leaving)
            return
        tasks = [t for t in tasks if t not in fenced]
        if not tasks:
            return
        started = time.monotonic()
        try:
            pending = self._produce_changes(tasks)
            phase = self._phase_clock(started)
            if self.exactly_once:
                self._produce_markers(pending)
                if not self._commit_transaction(tasks, leaving):
                    return
                phase("flush")
            else:
                self.records.settle(TIMEOUT_S, infrastructure=self._changelogs.__contains__)
                phase("flush")
                fenced = self.tasks.drop_fenced(tasks)
                pending = [p for p in pending if p.task not in fenced]
                self._produce_markers(pending)
                self._flush_markers()
                phase("markers")
        except TransactionAbortable as exc:
            self.abort(str(exc), leaving=leaving)
            return
        self._write_store(pending)
        phase("write")
        if not self.exactly_once:
            self._commit_offsets(tasks)
            phase("offsets")
        for task in tasks:
            task.mark_committed()
        took = time.monotonic() - started
        self.metrics.commits += 1
        self.metrics.commit_seconds += took
        self.metrics.commit_max_seconds = max(self.metrics.commit_max_seconds, took)
        self.metrics.commit_durations.observe(took)
        self.tasks.update_lag(self._high_watermark)

    def _produce_changes(self, tasks: list[Task]) -> list[_Pending]:
        """Step 1: every store's changes to its changelog partition."""
        pending = []
        changelog = self.topology.changelog_topic
        on_first = None if self.exactly_once else self._on_first
        for task in tasks:
            for store, table in task.tables.items():
                topic = changelog(store)
                changes = table.take_changes()
                fills = table.take_fills()
                if changes:
                    first = None if on_first is None else partial(on_first, (topic, task.partition))
                    self.records.send_changes(topic, task.partition, changes, first)
                pending.append(
                    _Pending(task, store, table, topic, {**fills, **changes} if fills else changes)
                )
        return pending

    def _on_first(self, key: TaskKey, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._first_offsets[key] = msg.offset()
        else:
            self.records.on_delivery(err, msg)  # settle() fails the commit

    def _produce_markers(self, pending: list[_Pending]) -> None:
        """One marker per changelog partition: the task's stamp, bounded by the
        commit's first record there."""
        for item in pending:
            key = (item.topic, item.task.partition)
            first = self._first_offsets.pop(key, -1)
            stamp = replace(item.task.stamp(item.table.epoch), first_offset=first)
            self.records.send(
                item.topic,
                stamp.encode(),
                MARKER_KEY,
                partition=key[1],
                headers=MARKER_HEADERS,
                on_delivery=partial(self._on_marker, key),
            )

    def _on_marker(self, key: TaskKey, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._marker_offsets[key] = msg.offset()
        elif err.code() not in PURGED:  # purged: its transaction was aborted
            self._marker_errors.append(f"{key[0]}[{key[1]}]: {err.str()}")

    def _flush_markers(self) -> None:
        try:
            with client_errors():
                left = self.producer.flush(TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"producer failed: {exc}") from exc
        if left:
            raise BrokerError(f"{left} records not delivered within {TIMEOUT_S:.0f}s")
        self._raise_marker_errors()

    def _raise_marker_errors(self) -> None:
        if self._marker_errors:
            failed, self._marker_errors = self._marker_errors[:5], []
            raise BrokerError("changelog marker delivery failed: " + "; ".join(failed))

    def _commit_transaction(self, tasks: list[Task], leaving: Collection[TaskKey]) -> bool:
        """Exactly-once: input offsets join the transaction, which commits. False if
        the transaction had to be aborted (the tasks are rewound)."""
        offsets = [TopicPartition(t.topic, t.partition, t.position) for t in tasks]
        # Serve the delivery reports first (commit_transaction would wait for the
        # same acknowledgements): a report served inside a transactional call that
        # fails (fenced) breaks the client's error reporting.
        watch = self.watchdog.watch
        try:
            with client_errors():
                self.producer.flush(TIMEOUT_S)
                with watch("send_offsets_to_transaction", TIMEOUT_S):
                    self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), TIMEOUT_S
                    )
                with watch("commit_transaction", TIMEOUT_S):
                    self.producer.commit_transaction(TIMEOUT_S)
        except KafkaException as exc:
            if producer_fenced(exc):
                raise self._fenced(exc) from exc
            if not requires_abort(exc):
                raise BrokerError(f"transaction commit failed: {exc}") from exc
            # Typically the group moved to a new generation while this transaction
            # was open (a rebalance): nothing of it is lost, it is processed again.
            self.abort(f"transaction commit failed: {exc}", leaving=leaving)
            return False
        self._raise_marker_errors()
        self._begin_transaction()
        self._aborts_in_row = 0
        return True

    def _begin_transaction(self) -> None:
        self.producer.begin_transaction()
        self.records.transaction_began()

    def _fenced(self, exc: KafkaException) -> Exception:
        return self.records.fenced(exc)

    def _write_store(self, pending: list[_Pending]) -> None:
        """Every table's changes and stamp, in one round trip per Redis server."""
        writes: list[tuple[_Pending, Stamp]] = []
        for item in pending:
            if (item.task.topic, item.task.partition) not in self.tasks.tasks:
                continue
            offset = self._marker_offsets.pop((item.topic, item.task.partition))
            stamp = replace(item.task.stamp(item.table.epoch), changelog_offset=offset + 1)
            writes.append((item, stamp))
        errors = write_tables([(item.table, item.changes, stamp) for item, stamp in writes])
        for (item, stamp), error in zip(writes, errors, strict=True):
            if isinstance(error, FencedError):
                self.tasks.fence(item.task, str(error))
                continue
            if error is not None:
                raise error
            if (item.task.topic, item.task.partition) in self.tasks.tasks:
                item.table.committed(stamp)
                self.metrics.flushed_keys += len(item.changes)

    def _commit_offsets(self, tasks: list[Task]) -> None:
        live = [
            TopicPartition(t.topic, t.partition, t.position)
            for t in tasks
            if (t.topic, t.partition) in self.tasks.tasks
        ]
        if not live:
            return
        try:
            self.consumer.commit(offsets=live, asynchronous=False)
        except KafkaException as exc:
            # The stamps already hold the positions; the group offset is a hint.
            log.warning("offset commit failed", extra={"error": str(exc)})

    def _phase_clock(self, started: float) -> Callable[[str], None]:
        """A clock that adds the time since its last reading to a commit phase;
        the time up to its creation counts as "produce"."""
        last = time.monotonic()
        self.metrics.add_phase("produce", last - started)

        def phase(name: str) -> None:
            nonlocal last
            now = time.monotonic()
            self.metrics.add_phase(name, now - last)
            last = now

        return phase

    def _high_watermark(self, topic: str, partition: int) -> int | None:
        try:
            return int(
                self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[
                    1
                ]
            )
        except KafkaException:
            return None

    # -- abort (exactly-once) -----------------------------------------------------------
    def abort(self, reason: str, *, leaving: Collection[TaskKey] = ()) -> None:
        """Abort the open transaction and rewind every task to its last commit.

        Exactly-once only. Outputs, changelog records and input offsets of the
        transaction are discarded by the broker; each task forgets its uncommitted
        state (the store holds only committed state) and its input is sought back
        to the last committed position, so the records are processed again.
        Messages of the batch being fetched when this runs (in a rebalance
        callback) may predate the seek; the tasks skip them. Tasks in
        ``leaving`` are not sought (they are being taken away). Like Kafka Streams'
        TaskMigratedException handling, but without closing the other tasks.

        Raises:
            BrokerError: too many aborts in a row, or the abort itself failed.
        """
        self._aborts_in_row += 1
        if self._aborts_in_row > MAX_ABORTS_IN_ROW:
            raise BrokerError(
                f"{MAX_ABORTS_IN_ROW} transactions in a row were aborted; last: {reason}"
            )
        try:
            with client_errors():
                with self.watchdog.watch("abort_transaction", TIMEOUT_S):
                    self.producer.abort_transaction(TIMEOUT_S)
                self._begin_transaction()
                # Delivery reports of the aborted transaction's records (purged or
                # not) must not leak into the next commit.
                self.producer.poll(0)
        except KafkaException as exc:
            if producer_fenced(exc):
                raise self._fenced(exc) from exc
            raise BrokerError(f"cannot abort the transaction ({reason}): {exc}") from exc
        self._marker_offsets.clear()
        self._first_offsets.clear()
        self._marker_errors.clear()
        self.records.forget_failures()
        rewound = []
        for key, task in self.tasks.items():
            if not (task.has_progress() or task.mid_batch):
                continue
            offset = task.rollback()
            if key not in leaving:
                rewound.append(TopicPartition(key[0], key[1], offset))
                self.rewound.append(task)
        for tp in rewound:
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                raise BrokerError(
                    f"cannot rewind {tp.topic}[{tp.partition}] to {tp.offset}: {exc}"
                ) from exc
        self.metrics.aborted_transactions += 1
        log.warning(
            "transaction aborted; tasks rewound to their last commit",
            extra={
                "reason": reason,
                "rewound": ",".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in rewound),
            },
        )
