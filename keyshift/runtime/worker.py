"""The worker: one consumer, one producer, the tasks the group assigns, a commit loop.

The worker owns the lifecycle (start, loop, close) and the rebalance callbacks;
it delegates the rest: :class:`~keyshift.runtime.tasks.TaskManager` (which tasks
run here, dispatch, fencing), :class:`~keyshift.runtime.committer.Committer`
(the commit protocol), :class:`~keyshift.runtime.producer.RecordProducer`
(sending, delivery errors, the dead-letter topic) and
:class:`~keyshift.migrations.tracker.MigrationTracker` (moving state here).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection
from contextlib import closing

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from keyshift.app.group_gate import LEAVE_TIMEOUT_S, POLL_S, CheckpointWatch, GroupGate
from keyshift.config import Settings
from keyshift.errors import BrokerError, KeyshiftError, TransactionAbortable
from keyshift.migrations.events import EventLog, now_ms
from keyshift.migrations.locations import LocationsView
from keyshift.migrations.restore import Restorer
from keyshift.migrations.tracker import MigrationTracker
from keyshift.operators.topology import Topology
from keyshift.polling import consume_available
from keyshift.runtime.clients import KAFKA, Clients
from keyshift.runtime.committer import TIMEOUT_S, Committer
from keyshift.runtime.kafka import (
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
from keyshift.runtime.metrics import GcClock, Metrics
from keyshift.runtime.producer import RecordProducer
from keyshift.runtime.task import Task
from keyshift.runtime.tasks import TaskManager
from keyshift.state.base import Store

log = logging.getLogger("keyshift.worker")

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


class Worker:
    """Runs an app's topology as one instance of its consumer group."""

    def __init__(
        self, topology: Topology, settings: Settings, *, group_gate: GroupGate | None = None,
        clients: Clients = KAFKA,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.clients = clients
        self.group_gate = group_gate
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self._gc_clock = GcClock(self.metrics)
        self._running = False
        self._stop_asked = False
        self._gate_passed = False  # the leave gate (see loop())
        self._closing = False  # the consumer is closing: assignments are passed on
        self._closing_since = 0.0  # when close() began closing the consumer
        self._close_commit_s = 0.0  # how long close()'s own commit took
        self._batch_done = 0.0  # when the last batch was processed
        self._prepared_until = 0.0  # ready for a rebalance until then (see loop())
        self._heap_frozen = False  # see _freeze_heap()
        self._failed = False
        self._restore: Consumer | None = None
        self._locations: LocationsView | None = None
        self._migrations: MigrationTracker | None = None
        self._tasks: TaskManager | None = None
        self._committer: Committer | None = None
        self._records: RecordProducer | None = None
        self._store: Store | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None

    @property
    def tasks(self) -> dict[tuple[str, int], Task]:
        """The tasks running here, by (topic, partition)."""
        return {} if self._tasks is None else self._tasks.tasks

    def commit(self, *, leaving: Collection[tuple[str, int]] = (),
               only_leaving: bool = False) -> None:
        """Make all progress durable (see :class:`~keyshift.runtime.committer.Committer`)."""
        if self._committer is not None:
            self._committer.commit(leaving=leaving, only_leaving=only_leaving)

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
        clients = self.clients
        topics = TopicManager(settings, clients.admin)
        existing = topics.partition_counts()
        _, specs = topics.plan(topology, existing)
        topics.ensure(specs, existing)
        self._admin = topics.admin
        self._subs = topology.by_topic()
        self._store = clients.store(settings.state)
        self._store.ping()
        txn_id = None
        if settings.exactly_once:
            txn_id = f"{settings.app_id}-{settings.instance_id or uuid.uuid4().hex[:12]}"
        self._records = RecordProducer(
            producer_config(settings, txn_id), metrics=self.metrics,
            dlq_topic=topology.dlq_topic, app_id=settings.app_id,
            transactional=settings.exactly_once, max_bytes=topics.record_limits(topology),
            default_max_bytes=topics.default_limit, factory=clients.producer,
        )
        self._producer = self._records.producer
        if settings.exactly_once:
            try:
                self._producer.init_transactions(TIMEOUT_S)
            except KafkaException as exc:
                raise BrokerError(f"cannot initialise transactions: {exc}") from exc
            self._producer.begin_transaction()
        control = clients.producer(control_producer_config(settings))
        self._control_producer = control
        self._locations = LocationsView(
            topology.locations_topic, {}, {},
            consumer=clients.consumer(control_consumer_config(settings)), producer=control)
        restorer = Restorer(
            settings, self._store, self._locations, self._restore_consumer, self.instance,
            topology.changelog_topic, max_record_bytes=topics.default_limit,
            sources=clients.store,
        )
        self._migrations = MigrationTracker(
            restorer, EventLog(topology.events_topic, control),
            copy_share=settings.copy_share)
        session_ms = group_timeouts(settings)[0]
        self._tasks = TaskManager(
            self._subs, records=self._records, metrics=self.metrics, pause=self._pause,
            migrations=self._migrations, raise_on_error=settings.on_error == "raise",
            fenced_limit_s=2 * session_ms / 1000)
        if settings.group_protocol == "consumer":
            self._apply_group_configs()
        # A pause this long (process stopped, long GC, VM freeze) may have cost the
        # group session: verify task ownership before touching state again.
        self._stall_s = session_ms / 2000
        self._consumer = clients.consumer(consumer_config(settings))
        self._committer = Committer(
            producer=self._producer, records=self._records, consumer=self._consumer,
            tasks=self._tasks, topology=topology, settings=settings, metrics=self.metrics)
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
        if self._migrations is not None:
            # Partitions may come from instances whose Redis this one never read.
            self._migrations.warm_up()
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
        if self._migrations is not None:
            self._migrations.warm_up()
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
        assert self._tasks is not None and self._committer is not None
        assert self._migrations is not None
        consumer = self._consumer
        tasks, committer, migrations = self._tasks, self._committer, self._migrations
        assert self._records is not None
        records = self._records
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
            may_copy = not prepared and not migrations.resuming()
            if self._heap_frozen and may_copy:
                self._thaw_heap()
            if committer.rewound:
                # Rewinds seen by the last batch are behind us: the client drops
                # messages fetched before a seek, so no stale message can follow.
                for task in committer.rewound:
                    task.fresh_input()
                committer.rewound.clear()
            # While a background copy runs, idle in consume only until its next turn.
            wait = POLL_S if prepared else 0.1
            if migrations.copying and may_copy:
                wait = min(wait, max(0.0, migrations.next_copy_turn - time.monotonic()))
            # Small batches while waiting to leave (the worker sees at once that it
            # may leave) and while a rebalance is expected (its callbacks are
            # served after one small batch at most).
            msgs = consume_available(consumer, LEAVING_BATCH if prepared else batch, wait)
            after = time.monotonic()
            if after - last > self._stall_s:
                self._verify_ownership(after - last)
            last = after
            if msgs:
                self._process(msgs)
            if migrations:
                migrations.tick(copy=may_copy and time.monotonic() >= migrations.next_copy_turn)
            else:
                migrations.copying = False
            records.poll()
            if tasks.reaper:
                tasks.reaper.reap()
            if tasks.fenced:
                tasks.check_fenced()
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
                try:
                    self._producer.flush(10)
                except KafkaException as exc:  # fatal (fenced): the error that
                    # stopped the worker is the one to report
                    log.warning("producer flush on close failed", extra={"error": str(exc)})
            if self._restore is not None:
                self._restore.close()
            if self._migrations is not None:
                self._migrations.close()
            if self._locations is not None:
                self._locations.close()
            if self._store is not None:
                self._store.close()
            self._gc_clock.stop()
            log.info("worker stopped", extra={"instance": self.instance,
                                              **self.metrics.snapshot()})
        if error is not None:
            raise error
        if stuck:
            raise BrokerError(f"the consumer did not close within {CLOSE_TIMEOUT_S:.0f}s")

    def _process(self, msgs: list[Message]) -> None:
        assert self._tasks is not None and self._committer is not None
        started = time.monotonic()
        try:
            self._tasks.process(msgs, lambda: self.metrics.gc_seconds)
        except TransactionAbortable as exc:
            self._committer.abort(str(exc))
        self._batch_done = time.monotonic()
        self.metrics.processing_seconds += self._batch_done - started

    def _pause(self, partitions: list[TopicPartition]) -> None:
        if self._consumer is not None:
            try:
                self._consumer.pause(partitions)
            except KafkaException as exc:  # no longer assigned: nothing to pause
                log.info("cannot pause", extra={"error": str(exc)})

    def _verify_ownership(self, stalled_s: float) -> None:
        """After a stall, drop every task another instance has claimed meanwhile."""
        assert self._tasks is not None
        log.warning("worker stalled; verifying task ownership",
                    extra={"instance": self.instance, "stalled_s": round(stalled_s, 1)})
        self._tasks.drop_fenced([task for _, task in self._tasks.items()])

    # -- rebalance ---------------------------------------------------------------
    def _restore_consumer(self) -> Consumer:
        if self._restore is None:
            self._restore = self.clients.consumer(restore_consumer_config(self.settings))
        return self._restore

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
            assert self._migrations is not None and self._tasks is not None
            migrations = self._migrations
            # The restores run side by side up to their changelog tails.
            with closing(migrations.restore(wanted, assigned_ms=assigned_ms)) as ready:
                for tp in partitions:
                    restored = [next(ready) for _ in self._subs[tp.topic].stores()]
                    key = (tp.topic, tp.partition)
                    migrations.started(key, restored)
                    self.metrics.restores += len(restored)
                    self.metrics.restored_records += sum(r.event.tail_records for r in restored)
                    task = self._tasks.open(tp.topic, tp.partition,
                                            {r.event.store: r.table for r in restored})
                    start = task.start_offset()
                    offset = OFFSET_STORED if start is None else start
                    assign.append(TopicPartition(tp.topic, tp.partition, offset))
                    # Assigned as soon as restored: its first fetch overlaps the
                    # restores of the others (records are processed only after
                    # this callback returns).
                    consumer.incremental_assign(assign[-1:])
            restore = time.monotonic()
            if partitions:
                migrations.publish()
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
                assert self._committer is not None
                self._committer.abort("partitions lost",
                                      leaving={(tp.topic, tp.partition) for tp in partitions})
        finally:
            self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the tasks and unassign their partitions. Their caches are freed
        from the loop, a slice per turn, so as not to hold up the callback (see
        :mod:`keyshift.runtime.reaper`)."""
        if self._tasks is not None:
            self._tasks.unassigned(partitions)
        consumer.incremental_unassign(partitions)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _names(partitions: list[TopicPartition]) -> str:
    """``topic[partition]`` of each, comma-separated (for logs)."""
    return ",".join(f"{t.topic}[{t.partition}]" for t in partitions)


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
