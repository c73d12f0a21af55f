"""The worker: one consumer, one producer, the tasks the group assigns, a commit loop.

Commit protocol (per commit interval, and before partitions are revoked):

1. For every task that made progress, every store's dirty keys go to the
   store's changelog partition, then a marker record with the task's stamp.
2. ``at_least_once``: the producer is flushed (outputs and changelog durable).
   ``exactly_once``: input offsets join the transaction, which commits.
3. The store backend gets the changes and the stamp atomically (fenced by the
   owner epoch); a fenced task is dropped.
4. ``at_least_once``: input offsets are committed.

A crash at any point leaves the changelog ahead of (or equal to) the backend;
restore replays the changelog tail up to its last marker and resumes input at
the marker's offset, so state is never double-counted.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import closing
from dataclasses import replace
from functools import partial
from typing import Any

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from keyshift.app.group_gate import LEAVE_TIMEOUT_S, POLL_S, CheckpointWatch, GroupGate
from keyshift.app.kafka import (
    TopicManager,
    apply_group_configs,
    consumer_config,
    consumer_group_configs,
    control_consumer_config,
    control_producer_config,
    end_offsets,
    group_timeouts,
    producer_config,
    restore_consumer_config,
)
from keyshift.app.metrics import GcClock, Metrics
from keyshift.app.reaper import Reaper
from keyshift.app.task import Task
from keyshift.config import Settings
from keyshift.errors import BrokerError, FencedError, KeyshiftError, TransactionAbortable
from keyshift.migrations.events import EventLog, now_ms
from keyshift.migrations.locations import LocationsView
from keyshift.migrations.restore import Restored, Restorer
from keyshift.operators.topology import Topology
from keyshift.polling import consume_available
from keyshift.state.base import Stamp, Store
from keyshift.state.changelog import MARKER_KEY
from keyshift.state.factory import open_store
from keyshift.state.table import Table, write_tables

log = logging.getLogger("keyshift.worker")

TIMEOUT_S = 30.0
# Aborted transactions in a row (no commit between) before the worker gives up.
MAX_ABORTS_IN_ROW = 5
# One task's share of a batch taking longer than this is logged with where it went.
SLOW_GROUP_S = 0.2
# Longest stretch a background copy works before processing gets its turn.
COPY_TURN_S = 0.02
# Leaving the group normally takes well under a second; a close that hangs
# (librdkafka mid-rebalance) must not keep a failed worker from exiting.
CLOSE_TIMEOUT_S = 30.0
#: Most records a worker waiting to leave takes per batch.
LEAVING_BATCH = 200
#: After committing ahead of a rebalance, a worker takes small batches (at most
#: ``LEAVING_BATCH`` records), so that a rebalance callback waits for one small
#: batch at most, and defers regular commits and background copies; until
#: ``PREPARED_GRACE_S`` after its first rebalance callback, or ``PREPARED_S``
#: after the request.
PREPARED_S = 3.0
PREPARED_GRACE_S = 0.15
#: Background copies wait until every newly assigned task has processed its first
#: record (the end of its pause), or this long after its assignment.
RESUME_FIRST_S = 1.0


class Worker:
    """Runs an app's topology as one instance of its consumer group."""

    def __init__(
        self, topology: Topology, settings: Settings, *, group_gate: GroupGate | None = None
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.group_gate = group_gate
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self._gc_clock = GcClock(self.metrics)
        self.tasks: dict[tuple[str, int], Task] = {}
        self._running = False
        self._stop_asked = False
        self._gate_passed = False  # the leave gate (see loop())
        self._closing = False  # the consumer is closing: assignments are passed on
        self._closing_since = 0.0  # when close() began closing the consumer
        self._close_commit_s = 0.0  # how long close()'s own commit took
        self._batch_done = 0.0  # when the last batch was processed
        self._prepared_until = 0.0  # ready for a rebalance until then (see loop())
        self._heap_frozen = False  # see _freeze_heap()
        self._reaper = Reaper()  # frees the caches of tasks that left
        self._failed = False
        self._aborts_in_row = 0
        self._rewound: list[Task] = []  # rewound since the last batch was fetched
        self._marker_offsets: dict[tuple[str, int], int] = {}
        self._delivery_errors: list[str] = []
        self._restore: Consumer | None = None
        self._restorer: Restorer | None = None
        self._locations: LocationsView | None = None
        self._events: EventLog | None = None
        self._restored: dict[tuple[str, int], list[Restored]] = {}
        self._copying = False
        self._copy_turn = 0.0  # monotonic time the next background-copy turn may start
        self._store: Store | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None

    # -- lifecycle ---------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit, leave the group and return.

        With a group gate, the loop commits, then goes on processing until the
        others stopped in the same step have committed too; close() commits the
        rest and leaves once they have made their last commits as well."""
        self._stop_asked = True
        self._running = False

    def run(self) -> None:
        self.start()
        try:
            self.loop()
        except BaseException:
            self._failed = True
            raise
        finally:
            self.close()

    def start(self) -> None:
        settings, topology = self.settings, self.topology
        topology.validate()
        self._gc_clock.start()
        topics = TopicManager(settings)
        existing = topics.partition_counts()
        _, specs = topics.plan(topology, existing)
        topics.ensure(specs, existing)
        self._admin = topics.admin
        self._subs = topology.by_topic()
        self._store = open_store(settings.state)
        ping = getattr(self._store, "ping", None)
        if ping is not None:
            ping()
        txn_id = None
        if settings.exactly_once:
            txn_id = f"{settings.app_id}-{settings.instance_id or uuid.uuid4().hex[:12]}"
        pconf = producer_config(settings, txn_id)
        if not settings.exactly_once:
            pconf["on_delivery"] = self._on_delivery
        self._producer = Producer(pconf)
        if settings.exactly_once:
            try:
                self._producer.init_transactions(TIMEOUT_S)
            except KafkaException as exc:
                raise BrokerError(f"cannot initialise transactions: {exc}") from exc
            self._producer.begin_transaction()
        self._locations = LocationsView(
            topology.locations_topic,
            control_consumer_config(settings),
            control_producer_config(settings),
        )
        self._events = EventLog(topology.events_topic, control_producer_config(settings))
        self._restorer = Restorer(
            settings, self._store, self._locations, self._restore_consumer, self.instance,
            topology.changelog_topic,
        )
        if settings.group_protocol == "consumer":
            self._apply_group_configs()
        # A pause this long (process stopped, long GC, VM freeze) may have cost the
        # group session: verify task ownership before touching state again.
        self._stall_s = group_timeouts(settings)[0] / 2000
        self._consumer = Consumer(consumer_config(settings))
        if self.group_gate is not None:
            self._join_at_gate(self.group_gate)
        self._consumer.subscribe(
            list(self._subs),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._running = not self._stop_asked
        log.info(
            "worker started",
            extra={"app": settings.app_id, "instance": self.instance,
                   "guarantee": settings.guarantee, "topics": ",".join(self._subs)},
        )

    def _leave_at_gate(self, gate: GroupGate) -> None:
        """Committed: leave the group together with the others stopped in this step
        (when the loop did not wait for them already)."""
        since = time.monotonic()
        self._passed_leave_gate(gate.wait_to_leave(self.instance), since)

    def _passed_leave_gate(self, allowed: bool, since: float) -> None:
        """Log how leaving went (``since``: when the worker reported it was ready)."""
        self._gate_passed = True
        extra = {"instance": self.instance, "waited_ms": _ms(time.monotonic() - since)}
        if allowed:
            log.info("leaving the group with the others stopped with it", extra=extra)
        else:
            log.warning("leave gate did not open in time; leaving alone", extra=extra)

    def _leave_together(self, gate: GroupGate) -> None:
        """Last commit made: wait for the others stopped in this step to make
        theirs, so that all leave the group at the same moment."""
        if not gate.may_leave(self.instance):
            return  # leaving alone (the gate did not open in time)
        since = time.monotonic()
        together = gate.leave_together(self.instance)
        extra = {"instance": self.instance, "waited_ms": _ms(time.monotonic() - since)}
        if together:
            log.info("last commits made; leaving together", extra=extra)
        else:
            log.warning("the others' last commits took too long; leaving alone", extra=extra)

    def _checkpoint(self, request: int) -> None:
        """Commit now: the supervisor is about to let workers join or leave (see
        :class:`~keyshift.app.group_gate.Checkpoints`)."""
        assert self.group_gate is not None
        started = time.monotonic()
        if not self._failed:
            self.commit()
        if self._restorer is not None:
            # Partitions may come from instances whose Redis this one never read.
            self._restorer.warm_up()
        self._freeze_heap()
        self.group_gate.checkpoints.done(request, self.instance)
        self._prepared_until = time.monotonic() + PREPARED_S
        log.info("committed ahead of a rebalance", extra={
            "instance": self.instance, "request": request,
            "seconds": round(time.monotonic() - started, 3)})

    def _join_at_gate(self, gate: GroupGate) -> None:
        """Get the first assignment's reads warm, then join with the others of this step."""
        assert self._consumer is not None and self._locations is not None
        try:
            self._consumer.list_topics(timeout=TIMEOUT_S)  # broker connection and metadata
        except KafkaException as exc:  # only a warm-up: subscribing reports real trouble
            log.warning("metadata warm-up failed", extra={"error": str(exc)})
        self._locations.catch_up()
        if self._restorer is not None:
            self._restorer.warm_up()
        waited = time.monotonic()
        opened = gate.wait(self.instance, stopped=lambda: self._stop_asked)
        extra = {"instance": self.instance,
                 "waited_ms": _ms(time.monotonic() - waited)}
        if opened:
            log.info("join gate opened", extra=extra)
        elif not self._stop_asked:
            log.warning("join gate did not open in time; joining alone", extra=extra)

    def _apply_group_configs(self) -> None:
        assert self._admin is not None
        configs = consumer_group_configs(self.settings)
        refused = apply_group_configs(self._admin, self.settings.app_id, configs)
        for key, reason in refused.items():
            log.warning(
                "group config refused by the broker; its own value applies",
                extra={"group": self.settings.app_id, "config": key,
                       "value": configs[key], "error": reason},
            )
        applied = {k: v for k, v in configs.items() if k not in refused}
        if applied:
            log.info("group configs set",
                     extra={"group": self.settings.app_id,
                            "configs": ",".join(f"{k}={v}" for k, v in applied.items())})

    def loop(self) -> None:
        assert self._consumer is not None and self._producer is not None
        consumer, producer = self._consumer, self._producer
        interval = self.settings.commit_interval_ms / 1000
        next_commit = time.monotonic() + interval
        batch = self.settings.batch_size
        last = time.monotonic()
        gate = self.group_gate
        watch = None if gate is None else CheckpointWatch(gate.checkpoints, self.instance)
        leaving_since: float | None = None  # while waiting at the leave gate
        if not self._running:
            return  # stopped while starting: close() commits and leaves
        while True:
            if not self._running:
                if gate is None or self._gate_passed:
                    break
                if leaving_since is None:
                    # Commit, report, and go on processing until the others
                    # stopped in this step have committed too.
                    self.commit()
                    self._freeze_heap()
                    leaving_since = time.monotonic()
                    if not gate.report_leaving(self.instance):
                        self._passed_leave_gate(False, leaving_since)
                        break
                    # No more commits until close(): one under way when the
                    # others stopped in this step leave would hold this worker
                    # back, and it would be given some of their partitions,
                    # which it must pass on (they move twice).
                elif ((allowed := gate.may_leave(self.instance))
                      or time.monotonic() >= leaving_since + LEAVE_TIMEOUT_S):
                    self._passed_leave_gate(allowed, leaving_since)
                    break
            elif watch is not None and (request := watch.new_request()) is not None:
                self._checkpoint(request)
                next_commit = time.monotonic() + interval
            prepared = leaving_since is not None or time.monotonic() < self._prepared_until
            # No background copy while a rebalance is expected (with small batches,
            # copy turns would take most of the loop's time) or while a new task
            # waits for its first record (its pause).
            may_copy = not prepared and not self._resuming()
            if self._heap_frozen and may_copy:
                self._thaw_heap()
            if self._rewound:
                # Rewinds seen by the last batch are behind us: the client drops
                # messages fetched before a seek, so no stale message can follow.
                for task in self._rewound:
                    task.fresh_input()
                self._rewound.clear()
            # While a background copy runs, idle in consume only until its next turn.
            wait = POLL_S if prepared else 0.1
            if self._copying and may_copy:
                wait = min(wait, max(0.0, self._copy_turn - time.monotonic()))
            # Small batches while waiting to leave (the worker sees at once that it
            # may leave) and while a rebalance is expected (its callbacks are
            # served after one small batch at most).
            msgs = consume_available(consumer, LEAVING_BATCH if prepared else batch, wait)
            after = time.monotonic()
            if after - last > self._stall_s:
                self._verify_ownership(after - last)
            last = after
            if msgs:
                started = time.monotonic()
                try:
                    self._process(msgs)
                except TransactionAbortable as exc:
                    self._abort(str(exc))
                self._batch_done = time.monotonic()
                self.metrics.processing_seconds += self._batch_done - started
            if self._restored:
                self._migration_tick(copy=may_copy and time.monotonic() >= self._copy_turn)
            else:
                self._copying = False
            producer.poll(0)
            if self._reaper:
                self._reaper.reap()
            now = time.monotonic()
            if leaving_since is None and now >= next_commit and now >= self._prepared_until:
                self.commit()
                next_commit = time.monotonic() + interval

    def close(self) -> None:
        """Commit (unless failed), leave the group, release clients.

        Under exactly-once a final transaction the group rejects (it is
        rebalancing) is aborted and nothing is lost: Redis holds only committed
        state, so the next owner resumes from the last commit.
        """
        stuck = False
        error: BaseException | None = None
        try:
            if not self._failed and self._consumer is not None:
                began = time.monotonic()
                self.commit()
                self._close_commit_s = time.monotonic() - began
                if self.group_gate is not None and self._stop_asked:
                    if not self._gate_passed:
                        self._leave_at_gate(self.group_gate)
                    self._leave_together(self.group_gate)
        except BaseException:
            self._failed = True  # the revocation callback must not commit again
            raise
        finally:
            if self._consumer is not None:
                self._closing = True
                self._closing_since = time.monotonic()
                stuck, error = _close_within(self._consumer, CLOSE_TIMEOUT_S)
                if stuck or error is not None:
                    self._failed = True
                if stuck:
                    log.error("the consumer did not close in time; leaving without it "
                              "(the group evicts this member after its session timeout)",
                              extra={"instance": self.instance, "timeout_s": CLOSE_TIMEOUT_S})
            if self._producer is not None:
                if self._failed and self.settings.exactly_once:
                    try:
                        self._producer.abort_transaction(5)
                    except KafkaException:
                        pass
                self._producer.flush(10)
            if self._restore is not None:
                self._restore.close()
            if self._restorer is not None:
                self._restorer.close()
            if self._locations is not None:
                self._locations.close()
            if self._events is not None:
                self._events.close()
            if self._store is not None:
                self._store.close()
            self._gc_clock.stop()
            log.info("worker stopped", extra={"instance": self.instance,
                                              **self.metrics.snapshot()})
        if error is not None:
            raise error
        if stuck:
            raise BrokerError(f"the consumer did not close within {CLOSE_TIMEOUT_S:.0f}s")

    # -- processing --------------------------------------------------------------
    def _process(self, msgs: list[Message]) -> None:
        groups: dict[tuple[str, int], list[Message]] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise BrokerError(f"fatal consumer error: {err}")
                log.warning("consumer error", extra={"error": str(err)})
                continue
            key = (msg.topic(), msg.partition())
            group = groups.get(key)
            if group is None:
                groups[key] = [msg]
            else:
                group.append(msg)
        received_ms = now_ms()
        for key in groups:
            for restored in self._restored.get(key, ()):
                restored.event.record_received(received_ms)
        # Newly assigned tasks first: their first record ends a migration's pause.
        for key in sorted(groups, key=lambda k: k not in self._restored):
            group = groups[key]
            task = self.tasks.get(key)
            if task is not None:
                before = task.duplicates
                began, gc_before = time.monotonic(), self.metrics.gc_seconds
                reads_before = task.read_seconds()
                task.process(group)
                took = time.monotonic() - began
                if took > SLOW_GROUP_S:
                    local, remote = (a - b for a, b in zip(task.read_seconds(), reads_before,
                                                           strict=True))
                    log.warning("slow batch", extra={
                        "task": f"{key[0]}[{key[1]}]", "records": len(group),
                        "seconds": round(took, 3),
                        "gc_seconds": round(self.metrics.gc_seconds - gc_before, 3),
                        "state_read_seconds": round(local, 3),
                        "source_read_seconds": round(remote, 3)})
                if key in self._restored:
                    stamp_ms = now_ms()
                    for restored in self._restored[key]:
                        restored.event.record_first(stamp_ms)
                self.metrics.records_in += len(group)
                self.metrics.duplicates_dropped += task.duplicates - before

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        assert self._producer is not None
        kwargs: dict[str, Any] = {"timestamp": timestamp}
        if headers:
            kwargs["headers"] = headers
        self._send(topic, value, key, **kwargs)
        self.metrics.records_out += 1

    def _send(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        """Produce, waiting while the local queue is full. Under exactly-once a
        transaction that can no longer commit raises TransactionAbortable."""
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                if self.settings.exactly_once and _transaction_failed(exc):
                    raise TransactionAbortable(f"cannot produce to {topic}: {exc}") from exc
                raise

    def _dead_letter(self, msg: Message, stage: str, exc: BaseException) -> None:
        assert self._producer is not None
        reason = f"{type(exc).__name__}: {exc}"
        headers = [
            ("ks.error", reason.encode()),
            ("ks.stage", stage.encode()),
            ("ks.topic", (msg.topic() or "").encode()),
            ("ks.partition", str(msg.partition()).encode()),
            ("ks.offset", str(msg.offset()).encode()),
            ("ks.app", self.settings.app_id.encode()),
        ]
        self._send(self.topology.dlq_topic, msg.value(), msg.key(), headers=headers)
        self.metrics.dead_letters += 1
        log.warning(
            "record sent to the dead-letter topic",
            extra={"topic": msg.topic(), "partition": msg.partition(),
                   "offset": msg.offset(), "stage": stage, "error": reason},
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _on_marker(self, key: tuple[str, int], err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if err.code() in _PURGED:
                return  # dropped on purpose: its transaction was aborted
            self._delivery_errors.append(f"changelog {key}: {err}")
        else:
            self._marker_offsets[key] = msg.offset()

    # -- commit ------------------------------------------------------------------
    def commit(self, *, leaving: Collection[tuple[str, int]] = (), only_leaving: bool = False
               ) -> None:
        """Make all progress durable (see the module docstring for the order).

        ``leaving``: tasks being revoked; if the transaction has to be aborted,
        they are not rewound (they are dropped right after). ``only_leaving``:
        commit just those (at-least-once only: a transaction commits everything).
        """
        assert self._producer is not None and self._consumer is not None
        only = only_leaving and not self.settings.exactly_once
        tasks = [t for key, t in list(self.tasks.items())
                 if t.has_progress() and (not only or key in leaving) and not self._fenced(t)]
        if not tasks:
            return
        started = time.monotonic()
        producer = self._producer
        pending: list[tuple[Task, str, Table, dict[bytes, bytes | None]]] = []
        try:
            self._produce_state(tasks, pending)
        except TransactionAbortable as exc:
            self._abort(str(exc), leaving=leaving)
            return
        phase = self._phase_clock(started)
        offsets = [TopicPartition(t.topic, t.partition, t.position) for t in tasks]
        if self.settings.exactly_once:
            try:
                producer.send_offsets_to_transaction(
                    offsets, self._consumer.consumer_group_metadata(), TIMEOUT_S
                )
                producer.commit_transaction(TIMEOUT_S)
            except KafkaException as exc:
                if not _requires_abort(exc):
                    raise BrokerError(f"transaction commit failed: {exc}") from exc
                # Typically the group moved to a new generation while this
                # transaction was open (a rebalance): nothing of it is lost, it
                # is processed again.
                self._abort(f"transaction commit failed: {exc}", leaving=leaving)
                return
            producer.begin_transaction()
            self._aborts_in_row = 0
        else:
            left = producer.flush(TIMEOUT_S)
            if left:
                raise BrokerError(f"{left} records not delivered within {TIMEOUT_S:.0f}s")
        phase("flush")
        if self._delivery_errors:
            failed, self._delivery_errors = self._delivery_errors[:5], []
            raise BrokerError("delivery failed: " + "; ".join(failed))
        # Every table's changes and stamp in one round trip per Redis server.
        writes: list[tuple[Task, Table, dict[bytes, bytes | None], Stamp]] = []
        for task, store, table, changes in pending:
            if (task.topic, task.partition) not in self.tasks:
                continue
            topic = self.topology.changelog_topic(store)
            offset = self._marker_offsets.pop((topic, task.partition))
            stamp = replace(task.stamp(table.epoch), changelog_offset=offset + 1)
            writes.append((task, table, changes, stamp))
        errors = write_tables([(table, changes, stamp) for _, table, changes, stamp in writes])
        phase("write")
        for (task, table, changes, stamp), error in zip(writes, errors, strict=True):
            if isinstance(error, FencedError):
                if (task.topic, task.partition) in self.tasks:
                    log.warning(
                        "task fenced: another instance owns it now; dropping it",
                        extra={"topic": task.topic, "partition": task.partition,
                               "error": str(error)},
                    )
                    self._drop(task.topic, task.partition)
                continue
            if error is not None:
                raise error
            if (task.topic, task.partition) in self.tasks:
                table.committed(stamp)
                self.metrics.flushed_keys += len(changes)
        if not self.settings.exactly_once:
            live = [o for o in offsets if (o.topic, o.partition) in self.tasks]
            if live:
                try:
                    self._consumer.commit(offsets=live, asynchronous=False)
                except KafkaException as exc:
                    # The stamps already hold the positions; the group offset is a hint.
                    log.warning("offset commit failed", extra={"error": str(exc)})
            phase("offsets")
        for task in tasks:
            task.mark_committed()
        took = time.monotonic() - started
        self.metrics.commits += 1
        self.metrics.commit_seconds += took
        self.metrics.commit_max_seconds = max(self.metrics.commit_max_seconds, took)
        self._update_lag()

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

    def _produce_state(
        self, tasks: list[Task], pending: list[tuple[Task, str, Table, dict[bytes, bytes | None]]]
    ) -> None:
        """Step 1 of a commit: every store's changes, then its marker, to its changelog;
        ``pending`` gets what the backend must write once the commit holds."""
        for task in tasks:
            for store, table in task.tables.items():
                topic = self.topology.changelog_topic(store)
                changes = table.take_changes()
                fills = table.take_fills()
                self._produce_all(topic, task.partition, changes)
                marker_key = (topic, task.partition)
                stamp = task.stamp(table.epoch)
                self._produce_changelog(
                    topic, task.partition, MARKER_KEY, stamp.encode(),
                    on_delivery=partial(self._on_marker, marker_key),
                )
                pending.append((task, store, table, {**fills, **changes} if fills else changes))

    def _produce_changelog(
        self, topic: str, partition: int, key: bytes, value: bytes | None, **kwargs: Any
    ) -> None:
        self._send(topic, value, key, partition=partition, **kwargs)

    def _produce_all(self, topic: str, partition: int, records: dict[bytes, bytes | None]) -> None:
        """Produce ``records`` to one partition: the commit's hot loop, so the client
        is called directly; a full queue or an error takes the :meth:`_send` path."""
        assert self._producer is not None
        produce = self._producer.produce
        for key, value in records.items():
            try:
                produce(topic, value, key, partition=partition)
            except (BufferError, KafkaException):
                self._send(topic, value, key, partition=partition)

    def _abort(self, reason: str, *, leaving: Collection[tuple[str, int]] = ()) -> None:
        """Abort the open transaction and rewind every task to its last commit.

        Exactly-once only. Outputs, changelog records and input offsets of the
        transaction are discarded by the broker; each task forgets its uncommitted
        state (Redis holds only committed state) and its input is sought back to
        the last committed position, so the records are processed again.
        Messages of the batch being fetched when this runs (in a rebalance
        callback) may predate the seek; the tasks skip them. Tasks in
        ``leaving`` are not sought (they are being taken away). Like Kafka Streams'
        TaskMigratedException handling, but without closing the other tasks.
        """
        assert self._producer is not None and self._consumer is not None
        self._aborts_in_row += 1
        if self._aborts_in_row > MAX_ABORTS_IN_ROW:
            raise BrokerError(f"{MAX_ABORTS_IN_ROW} transactions in a row were aborted; "
                              f"last: {reason}")
        try:
            self._producer.abort_transaction(TIMEOUT_S)
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise BrokerError(f"cannot abort the transaction ({reason}): {exc}") from exc
        # Delivery reports of the aborted transaction's records (purged or not)
        # must not leak into the next commit.
        self._producer.poll(0)
        self._marker_offsets.clear()
        self._delivery_errors.clear()
        rewound = []
        for key, task in self.tasks.items():
            if not (task.has_progress() or task.mid_batch):
                continue
            offset = task.rollback()
            if key not in leaving:
                rewound.append(TopicPartition(key[0], key[1], offset))
                self._rewound.append(task)
        for tp in rewound:
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                raise BrokerError(f"cannot rewind {tp.topic}[{tp.partition}] to {tp.offset}: "
                                  f"{exc}") from exc
        self.metrics.aborted_transactions += 1
        log.warning(
            "transaction aborted; tasks rewound to their last commit",
            extra={"instance": self.instance, "reason": reason,
                   "rewound": ",".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in rewound)},
        )

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for (topic, partition), task in self.tasks.items():
            if task.position is None:
                continue
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            self.metrics.lag[f"{topic}[{partition}]"] = max(0, high - task.position)
            for store, table in task.tables.items():
                self.metrics.state_keys[f"{store}[{partition}]"] = len(table)

    # -- rebalance ---------------------------------------------------------------
    def _restore_consumer(self) -> Consumer:
        if self._restore is None:
            self._restore = Consumer(restore_consumer_config(self.settings))
        return self._restore

    def _open_task(self, topic: str, partition: int, restored: list[Restored]) -> Task:
        """A task over its restored tables (one per store of its sub-topology)."""
        for item in restored:
            self.metrics.restores += 1
            self.metrics.restored_records += item.event.tail_records
        if restored:
            self._restored[(topic, partition)] = restored
        tables = {r.event.store: r.table for r in restored}
        task = Task(
            self._subs[topic], partition, tables, self._produce, self._dead_letter,
            raise_on_error=self.settings.on_error == "raise",
        )
        task.adopt_upstream([t.stamp for t in tables.values()])
        return task

    def _fenced(self, task: Task) -> bool:
        """Check, before writing the changelog, that no newer owner claimed the task."""
        for table in task.tables.values():
            current = table.backend.owner_epoch()
            if current > table.epoch:
                log.warning(
                    "task fenced: another instance owns it now; dropping it",
                    extra={"topic": task.topic, "partition": task.partition,
                           "epoch": table.epoch, "owner_epoch": current},
                )
                self._drop(task.topic, task.partition)
                return True
        return False

    def _verify_ownership(self, stalled_s: float) -> None:
        """After a stall, drop every task another instance has claimed meanwhile."""
        log.warning("worker stalled; verifying task ownership",
                    extra={"instance": self.instance, "stalled_s": round(stalled_s, 1)})
        for task in list(self.tasks.values()):
            self._fenced(task)

    def _drop(self, topic: str, partition: int) -> None:
        """Forget a task that left this worker; its caches go to the reaper."""
        task = self.tasks.pop((topic, partition), None)
        if task is not None:
            self._reaper.add(task.release())
        for restored in self._restored.pop((topic, partition), []):
            event = restored.event
            if self._events is not None and not event.emitted and event.duration_ms is not None:
                self._events.emit(event)

    def _migration_tick(self, *, copy: bool = True) -> None:
        """Emit finished migrations and, on its turn, advance the background copies.

        A copy turn lasts at most ``COPY_TURN_S``; the next one comes after enough
        time that copying takes at most ``copy_share`` of this worker's time.
        """
        assert self._restorer is not None and self._events is not None
        started = time.monotonic()
        deadline = started + COPY_TURN_S
        copying = False
        for (topic, partition), items in list(self._restored.items()):
            for item in items:
                task_copy = item.copy
                while (copy and task_copy is not None and not task_copy.done
                       and time.monotonic() < deadline):
                    if task_copy.step():
                        self._restorer.copy_finished(item.event.store, partition, item)
                copying = copying or (task_copy is not None and not task_copy.done)
                if item.event.ready():
                    self._events.emit(item.event)
            if all(i.event.emitted for i in items):
                del self._restored[(topic, partition)]
        self._copying = copying
        if copy:
            ended = time.monotonic()
            share = self.settings.copy_share
            self._copy_turn = ended + (ended - started) * (1 - share) / share

    def _freeze_heap(self) -> None:
        """Take every object alive now out of the garbage collector's sight, ahead
        of a planned rebalance. With many cached container values (aggregates), a
        full collection takes a few hundred milliseconds, and one that falls
        between a moved task's last record and its first at the new owner adds
        to the pause; while frozen, a full collection scans only what was
        allocated since. Frozen objects are still freed when their last reference
        goes; reference cycles among them wait for :meth:`_thaw_heap`."""
        gc.freeze()
        self._heap_frozen = True

    def _thaw_heap(self) -> None:
        """The rebalance is over: the collector sees every object again."""
        gc.unfreeze()
        self._heap_frozen = False

    def _resuming(self) -> bool:
        """Some newly assigned task has not processed a record yet (and was
        assigned less than ``RESUME_FIRST_S`` ago)."""
        oldest = now_ms() - RESUME_FIRST_S * 1000
        return any(item.event.first_record_ms is None and item.event.assigned_ms > oldest
                   for items in self._restored.values() for item in items)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._closing:
            # Given partitions while leaving (another member left a moment
            # earlier): pass them on untouched. Restoring them would claim and
            # fence their state, and send their next owner to copy it from here.
            consumer.incremental_assign(partitions)
            log.info("partitions assigned while closing; passing them on",
                     extra={"instance": self.instance, "partitions": _names(partitions)})
            return
        started = time.monotonic()
        assigned_ms = now_ms()
        if partitions:
            self._rebalanced(started)
        assign = []
        assert self._locations is not None and self._admin is not None
        lookup = restore = publish = 0.0
        try:
            ends: dict[tuple[str, int], int] = {}
            if partitions:
                # One offsets request for the locations topic and every changelog.
                locations = (self.topology.locations_topic, 0)
                ends = end_offsets(self._admin, [locations, *self._changelogs(partitions)],
                                   read_committed=self.settings.exactly_once)
                self._locations.catch_up(ends[locations])
            lookup = time.monotonic()
            changelog = self.topology.changelog_topic
            wanted = [(store, tp.partition, ends.get((changelog(store), tp.partition)))
                      for tp in partitions for store in self._subs[tp.topic].stores()]
            assert self._restorer is not None
            # The restores run side by side up to their changelog tails.
            with closing(self._restorer.open_all(wanted, assigned_ms=assigned_ms)) as ready:
                for tp in partitions:
                    restored = [next(ready) for _ in self._subs[tp.topic].stores()]
                    task = self._open_task(tp.topic, tp.partition, restored)
                    self.tasks[(tp.topic, tp.partition)] = task
                    start = task.start_offset()
                    offset = OFFSET_STORED if start is None else start
                    assign.append(TopicPartition(tp.topic, tp.partition, offset))
                    # Assigned as soon as restored: its first fetch overlaps the
                    # restores of the others (records are processed only after
                    # this callback returns).
                    consumer.incremental_assign(assign[-1:])
            restore = time.monotonic()
            if self._restorer is not None and partitions:
                self._restorer.flush()
            publish = time.monotonic()
        except KeyshiftError:
            self._failed = True
            log.exception("restoring assigned tasks failed")
            raise
        if not assign:
            consumer.incremental_assign([])  # an empty assignment is answered too
        log.info(
            "partitions assigned",
            extra={"instance": self.instance,
                   "partitions": ",".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in assign),
                   "seconds": round(time.monotonic() - started, 3),
                   "locations_s": round(max(0.0, lookup - started), 3),
                   "restore_s": round(max(0.0, restore - lookup), 3),
                   "publish_s": round(max(0.0, publish - restore), 3)},
        )

    def _rebalanced(self, now: float) -> None:
        """A rebalance callback moved partitions: the expected rebalance came (more
        callbacks of it may follow within the grace period)."""
        self._prepared_until = min(self._prepared_until, now + PREPARED_GRACE_S)

    def _changelogs(self, partitions: list[TopicPartition]) -> list[tuple[str, int]]:
        return [
            (self.topology.changelog_topic(store), tp.partition)
            for tp in partitions for store in self._subs[tp.topic].stores()
        ]

    # Both revocation callbacks unassign themselves, even when they fail: the
    # client library's fallback asks librdkafka for the rebalance protocol from
    # inside the callback, which can hang while the consumer closes
    # (confluentinc/librdkafka#4041).
    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        entered = time.monotonic()
        committed = entered
        if partitions:
            self._rebalanced(entered)
        try:
            if not self._failed:
                # The revoked tasks' pause runs until the unassignment: commit
                # them, and leave the others' progress to the next regular commit.
                self.commit(leaving={(tp.topic, tp.partition) for tp in partitions},
                            only_leaving=True)
            committed = time.monotonic()
        finally:
            self._release(consumer, partitions)
            log.info(
                "partitions revoked",
                extra={"instance": self.instance,
                       "partitions": _names(partitions),
                       # where the revoked tasks' pause went on this side
                       "since_batch_ms": _ms(entered - self._batch_done),
                       **({"close_commit_ms": _ms(self._close_commit_s),
                           "consumer_close_ms": _ms(entered - self._closing_since)}
                          if self._closing else {}),
                       "commit_ms": _ms(committed - entered),
                       "unassign_ms": _ms(time.monotonic() - committed)},
            )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning(
            "partitions lost",
            extra={"instance": self.instance,
                   "partitions": _names(partitions)},
        )
        try:
            if self.settings.exactly_once and not self._failed:
                # The open transaction covers the lost tasks: it must not commit.
                # Abort it and rewind the tasks this instance keeps.
                self._abort("partitions lost",
                            leaving={(tp.topic, tp.partition) for tp in partitions})
        finally:
            self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the tasks and unassign their partitions. Their caches are freed
        from the loop, a slice per turn, so as not to hold up the callback (see
        :mod:`keyshift.app.reaper`)."""
        for tp in partitions:
            self._drop(tp.topic, tp.partition)
        consumer.incremental_unassign(partitions)


# Delivery errors of records an aborted transaction dropped before sending them.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _names(partitions: list[TopicPartition]) -> str:
    """``topic[partition]`` of each, comma-separated (for logs)."""
    return ",".join(f"{t.topic}[{t.partition}]" for t in partitions)


def _requires_abort(exc: KafkaException) -> bool:
    """Whether a transactional error leaves the producer usable after an abort."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.txn_requires_abort() and not err.fatal()


def _transaction_failed(exc: KafkaException) -> bool:
    """Whether a produce call failed because the open transaction has failed (the
    producer refuses records in that state with _STATE); abort_transaction then
    tells an abortable failure from a fatal one."""
    err = exc.args[0] if exc.args else None
    return _requires_abort(exc) or (isinstance(err, KafkaError) and err.code() == KafkaError._STATE)


def _close_within(consumer: Consumer, timeout_s: float) -> tuple[bool, BaseException | None]:
    """Close ``consumer`` (leave the group, run the revocation callback) in a
    helper thread. Returns whether it is still stuck after ``timeout_s``, and
    what the close raised."""
    failure: list[BaseException] = []

    def close() -> None:
        try:
            consumer.close()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    closer = threading.Thread(target=close, name="keyshift-consumer-close", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        return True, None
    return False, failure[0] if failure else None
