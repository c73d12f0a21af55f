"""The worker: one consumer, one producer, the tasks the group assigns, a commit loop.

The worker owns its lifecycle, as an explicit state with checked transitions
(:class:`WorkerState`), and its loop; it delegates the rest:
:class:`~keyshift.runtime.tasks.TaskManager` (which tasks run here),
:class:`~keyshift.runtime.committer.Committer` (the commit protocol),
:class:`~keyshift.runtime.producer.RecordProducer` (sending and the DLQ),
:class:`~keyshift.runtime.rebalance.RebalanceListener` (the group's callbacks),
:class:`~keyshift.migrations.tracker.MigrationTracker` (moving state here) and
:class:`~keyshift.runtime.coordinator.Coordinator` (planned joins and leaves,
with the app's other workers, over Kafka).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Collection

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from keyshift.config import Settings
from keyshift.errors import BrokerError, ConfigError, TransactionAbortable
from keyshift.operators.topology import Topology
from keyshift.polling import consume_available
from keyshift.runtime import membership
from keyshift.runtime.assembly import Parts, assemble
from keyshift.runtime.clients import KAFKA, Clients
from keyshift.runtime.coordinator import Request
from keyshift.runtime.kafka import consumer_config, group_timeouts, open_transaction_wait_s
from keyshift.runtime.lost_revocation import LostRevocationCheck, stuck_after_s
from keyshift.runtime.membership import close_within, leave_as_static_member
from keyshift.runtime.metrics import GcClock, Metrics
from keyshift.runtime.ops import OpsServer
from keyshift.runtime.rates import RateReporter
from keyshift.runtime.rebalance import SMALL_BATCH, Closing, Readiness, RebalanceListener
from keyshift.runtime.task import Task
from keyshift.runtime.watchdog import WATCHDOG

log = logging.getLogger("keyshift.worker")


class WorkerState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"  # clients, state, warm-up
    JOINING = "joining"  # waiting for the others starting with it
    RUNNING = "running"
    LEAVING = "leaving"  # asked to stop: committed, waiting for the others leaving
    CLOSING = "closing"  # last commit, leaving the group, releasing clients
    STOPPED = "stopped"
    FAILED = "failed"


_NEXT: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.CREATED: frozenset({WorkerState.STARTING, WorkerState.STOPPED}),
    WorkerState.STARTING: frozenset({WorkerState.JOINING, WorkerState.CLOSING, WorkerState.FAILED}),
    WorkerState.JOINING: frozenset({WorkerState.RUNNING, WorkerState.CLOSING, WorkerState.FAILED}),
    WorkerState.RUNNING: frozenset({WorkerState.LEAVING, WorkerState.CLOSING, WorkerState.FAILED}),
    WorkerState.LEAVING: frozenset({WorkerState.CLOSING, WorkerState.FAILED}),
    WorkerState.CLOSING: frozenset({WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.FAILED: frozenset({WorkerState.STOPPED}),
    WorkerState.STOPPED: frozenset(),
}


class Worker:
    """Runs an app's topology as one instance of its consumer group.

    ``run()`` starts, loops and closes; ``stop()`` (from a signal handler or
    another thread) asks it to leave: it commits, leaves the group together
    with the others stopped with it, and returns.
    """

    def __init__(self, topology: Topology, settings: Settings, *, clients: Clients = KAFKA) -> None:
        self.topology = topology
        self.settings = settings
        self.clients = clients
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self._gc_clock = GcClock(self.metrics)
        self._state = WorkerState.CREATED
        self._stop = threading.Event()
        self._parts: Parts | None = None
        self._readiness = Readiness()
        self._closing: Closing | None = None
        self._batch_done = 0.0  # when the last batch was processed
        #: The operations endpoint's port while it serves (see ``metrics_port``).
        self.ops_port: int | None = None
        self._rates: RateReporter | None = None
        self._listener: RebalanceListener | None = None
        self._lost_revocations: LostRevocationCheck | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def state(self) -> WorkerState:
        return self._state

    def _to(self, state: WorkerState) -> None:
        if state not in _NEXT[self._state]:
            raise RuntimeError(f"worker state {self._state.value} -> {state.value} is not allowed")
        log.debug(
            "worker state",
            extra={"instance": self.instance, "from": self._state.value, "to": state.value},
        )
        self._state = state

    @property
    def tasks(self) -> dict[tuple[str, int], Task]:
        """The tasks running here, by (topic, partition)."""
        return {} if self._parts is None else self._parts.tasks.tasks

    def commit(
        self, *, leaving: Collection[tuple[str, int]] = (), only_leaving: bool = False
    ) -> None:
        """Make all progress durable (see :class:`~keyshift.runtime.committer.Committer`)."""
        if self._parts is not None:
            self._parts.committer.commit(leaving=leaving, only_leaving=only_leaving)

    # -- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to leave (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Start, loop until stopped, close; with ``metrics_port`` set, serve the
        operations endpoint (:mod:`keyshift.runtime.ops`) meanwhile."""
        ops = self._serve_ops()
        try:
            try:
                self.start()
                self.loop()
            except BaseException:
                self._fail()
                raise
            finally:
                self.close()
        finally:
            if ops is not None:
                ops.stop()

    def _serve_ops(self) -> OpsServer | None:
        settings = self.settings
        if settings.metrics_port is None:
            return None
        try:
            server = OpsServer(
                self.metrics,
                lambda: self._state.value,
                host=settings.metrics_host,
                port=settings.metrics_port,
                info={
                    "app": settings.app_id,
                    "instance": self.instance,
                    "guarantee": settings.guarantee,
                },
            )
        except OSError as exc:
            raise ConfigError(
                "metrics_port",
                f"cannot listen on {settings.metrics_host}:{settings.metrics_port}: {exc}",
            ) from exc
        self.ops_port = server.port
        return server.start()

    def _fail(self) -> None:
        if self._state not in (WorkerState.FAILED, WorkerState.STOPPED):
            self._state = WorkerState.FAILED  # from any state: the revocation commits nothing

    def start(self) -> None:
        """Make the clients, open the state, join the group (with the others starting)."""
        self._to(WorkerState.STARTING)
        self.topology.validate()
        self._gc_clock.start()
        settings = self.settings
        parts = self._parts = assemble(
            self.topology,
            settings,
            instance=self.instance,
            clients=self.clients,
            metrics=self.metrics,
            pause=self._pause,
        )
        if settings.group_protocol == "consumer" and self._static:
            log.warning(
                "a static member under group_protocol=consumer cannot leave the group "
                "for good (librdkafka sends member epoch -2): a stop waits for the "
                "session timeout; use static_membership=false or the classic protocol"
            )
        self._stall_s = group_timeouts(settings)[0] / 2000
        self._rates = RateReporter(
            self.topology.rates_topic,
            parts.control_producer,
            instance=self.instance,
            incarnation=parts.coordinator.me,
            counts=self._source_counts,
        )
        self._warm_up(parts)
        self._to(WorkerState.JOINING)
        parts.coordinator.join(stopping=self._stop.is_set)
        self._listener = RebalanceListener(
            instance=self.instance,
            topology=self.topology,
            exactly_once=settings.exactly_once,
            admin=parts.admin,
            locations=parts.locations,
            migrations=parts.migrations,
            tasks=parts.tasks,
            committer=parts.committer,
            metrics=self.metrics,
            readiness=self._readiness,
            closing=lambda: self._closing,
            failed=lambda: self._state is WorkerState.FAILED,
            last_batch=lambda: self._batch_done,
            open_transaction_wait_s=open_transaction_wait_s(settings),
        )
        self._subscribe(parts.consumer)
        if settings.group_protocol == "consumer" and not self._static:
            self._lost_revocations = LostRevocationCheck(
                parts.admin,
                settings.app_id,
                self._listener_callbacks,
                stuck_after_s=stuck_after_s(group_timeouts(settings)[1] / 1000),
            )
        self._to(WorkerState.RUNNING)
        log.info(
            "worker started",
            extra={
                "app": settings.app_id,
                "instance": self.instance,
                "guarantee": settings.guarantee,
                "topics": ",".join(self.topology.by_topic()),
            },
        )

    def _subscribe(self, consumer: Consumer) -> None:
        listener = self._listener
        assert listener is not None
        consumer.subscribe(
            list(self.topology.by_topic()),
            on_assign=listener.on_assign,
            on_revoke=listener.on_revoke,
            on_lost=listener.on_lost,
        )

    def _listener_callbacks(self) -> int:
        return 0 if self._listener is None else self._listener.callbacks

    def _source_counts(self) -> tuple[dict[str, int], float]:
        """Source records taken per task so far, and busy seconds (rate reports)."""
        sources = {s.topic for s in self.topology.subtopologies if not s.internal}
        per_task = self.metrics.records_in_by_task
        return (
            {task: n for task, n in per_task.items() if task.rpartition("[")[0] in sources},
            self.metrics.processing_seconds,
        )

    @property
    def _static(self) -> bool:
        return bool(self.settings.instance_id and self.settings.static_membership)

    def _warm_up(self, parts: Parts) -> None:
        """Get the first assignment's reads warm before joining: broker connections,
        the locations topic, the Redis servers it names."""
        try:
            parts.consumer.list_topics(timeout=10)
        except KafkaException as exc:  # only a warm-up: subscribing reports real trouble
            log.warning("metadata warm-up failed", extra={"error": str(exc)})
        parts.locations.catch_up()
        parts.migrations.warm_up()

    # -- the loop ----------------------------------------------------------------------
    def loop(self) -> None:
        assert self._parts is not None
        parts = self._parts
        interval = self.settings.commit_interval_ms / 1000
        next_commit = time.monotonic() + interval
        last = time.monotonic()
        while self._state in (WorkerState.RUNNING, WorkerState.LEAVING):
            if self._stop.is_set() and self._state is WorkerState.RUNNING:
                self._begin_leaving(parts)
            if self._state is WorkerState.LEAVING:
                if parts.coordinator.may_leave():
                    return
            elif self._checkpoint(parts, parts.coordinator.requests()):
                next_commit = time.monotonic() + interval
            now = self._turn(parts, last)
            last = now
            if self._state is WorkerState.RUNNING and self._lost_revocations is not None:
                unheard = self._lost_revocations.tick(parts.consumer)
                if unheard:
                    self._rejoin(parts, unheard)
            if (
                self._state is WorkerState.RUNNING
                and now >= next_commit
                and not self._readiness.expected
            ):
                parts.committer.commit()
                next_commit = time.monotonic() + interval

    def _turn(self, parts: Parts, last: float) -> float:
        """One turn of the loop: a batch, background copies, deliveries, cleanup."""
        prepared = self._state is WorkerState.LEAVING or self._readiness.expected
        migrations = parts.migrations
        # No background copy while a rebalance is expected (with small batches,
        # copy turns would take most of the loop's time) or while a new task
        # waits for its first record (its pause).
        may_copy = not prepared and not migrations.resuming()
        if may_copy:
            self._readiness.thaw()
        if parts.committer.rewound:
            # Rewinds seen by the last batch are behind us: the client drops
            # messages fetched before a seek, so no stale message can follow.
            for task in parts.committer.rewound:
                task.fresh_input()
            parts.committer.rewound.clear()
        wait = 0.005 if prepared else 0.1
        if migrations.copying and may_copy:
            wait = min(wait, max(0.0, migrations.next_copy_turn - time.monotonic()))
        # Small batches while leaving or while a rebalance is expected: its
        # callbacks are served after one small batch at most.
        msgs = consume_available(
            parts.consumer, SMALL_BATCH if prepared else self.settings.batch_size, wait
        )
        now = self.metrics.last_turn = time.monotonic()
        if now - last > self._stall_s:
            self._verify_ownership(parts, now - last)
        if msgs:
            self._process(parts, msgs)
        if migrations:
            migrations.tick(copy=may_copy and time.monotonic() >= migrations.next_copy_turn)
        else:
            migrations.copying = False
        parts.records.poll()
        if self._rates is not None:
            self._rates.tick()
        if parts.tasks.reaper:
            parts.tasks.reaper.reap()
        if parts.tasks.fenced:
            parts.tasks.check_fenced()
        return now

    def _process(self, parts: Parts, msgs: list[Message]) -> None:
        started = time.monotonic()
        try:
            parts.tasks.process(msgs, lambda: self.metrics.gc_seconds)
        except TransactionAbortable as exc:
            parts.committer.abort(str(exc))
        self._batch_done = time.monotonic()
        self.metrics.processing_seconds += self._batch_done - started

    def _checkpoint(self, parts: Parts, requests: list[Request]) -> bool:
        """Others are about to join or leave: commit now, connect to the Redis
        servers the next restores may read, and be ready for the rebalance."""
        if not requests:
            return False
        started = time.monotonic()
        parts.committer.commit()
        parts.migrations.warm_up()
        self._readiness.prepare()
        parts.coordinator.acknowledge(requests)
        log.info(
            "committed ahead of a rebalance",
            extra={
                "instance": self.instance,
                "ahead_of": ",".join(sorted({f"{r.kind}:{r.instance}" for r in requests})),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    def _rejoin(self, parts: Parts, unheard: Collection[tuple[str, int]]) -> None:
        """The group gave partitions held here away, and this consumer never heard:
        commit, leave, and join again as a new member (see
        :mod:`keyshift.runtime.lost_revocation`)."""
        log.warning(
            "the group coordinator's revocation never reached this consumer; "
            "rejoining the group as a new member",
            extra={
                "instance": self.instance,
                "partitions": ",".join(f"{t}[{p}]" for t, p in sorted(unheard)),
            },
        )
        self.metrics.rejoins += 1
        parts.committer.commit()
        parts.consumer = parts.committer.consumer = membership.rejoin(
            parts.consumer,
            lambda: self.clients.consumer(consumer_config(self.settings, self.instance)),
            self._subscribe,
        )

    def _begin_leaving(self, parts: Parts) -> None:
        """Asked to stop: commit, tell the others, and go on processing (in small
        batches, without committing) until the others leaving have said so too."""
        parts.committer.commit()
        self._readiness.prepare()
        parts.coordinator.leave()
        self._to(WorkerState.LEAVING)

    def _pause(self, partitions: list[TopicPartition]) -> None:
        if self._parts is not None:
            try:
                self._parts.consumer.pause(partitions)
            except KafkaException as exc:  # no longer assigned: nothing to pause
                log.info("cannot pause", extra={"error": str(exc)})

    def _verify_ownership(self, parts: Parts, stalled_s: float) -> None:
        """After a stall (process stopped, long GC, VM freeze) that may have cost the
        group session, drop every task another instance has claimed meanwhile."""
        log.warning(
            "worker stalled; verifying task ownership",
            extra={"instance": self.instance, "stalled_s": round(stalled_s, 1)},
        )
        parts.tasks.drop_fenced([task for _, task in parts.tasks.items()])

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Commit (unless failed), leave the group, release every client.

        Under exactly-once a final transaction the group rejects (it is
        rebalancing) is aborted and nothing is lost: Redis holds only committed
        state, so the next owner resumes from the last commit.
        """
        parts = self._parts
        if parts is None:
            self._state = WorkerState.STOPPED if self._state is WorkerState.CREATED else self._state
            return
        leaving = self._state is WorkerState.LEAVING
        stuck, error = False, None
        try:
            if self._state is not WorkerState.FAILED:
                self._to(WorkerState.CLOSING)
                began = time.monotonic()
                parts.committer.commit()
                self._closing = Closing(time.monotonic(), time.monotonic() - began)
                if leaving:
                    parts.coordinator.leave_together()
        except BaseException:
            self._fail()
            raise
        finally:
            stuck, error = self._leave_group(parts)
            self._release(parts)
        if error is not None:
            raise error
        if stuck:
            raise BrokerError(
                f"the consumer did not close within {membership.CLOSE_TIMEOUT_S:.0f}s"
            )

    def _leave_group(self, parts: Parts) -> tuple[bool, BaseException | None]:
        if self._closing is None:
            self._closing = Closing(time.monotonic(), 0.0)
        if (
            self._static
            and self.settings.group_protocol == "classic"
            and self._state is not WorkerState.FAILED
        ):
            leave_as_static_member(parts.consumer)
        stuck, error = close_within(parts.consumer, membership.CLOSE_TIMEOUT_S)
        if stuck or error is not None:
            self._fail()
        if stuck:
            log.error(
                "the consumer did not close in time; leaving without it (the group "
                "evicts this member after its session timeout)",
                extra={"instance": self.instance, "timeout_s": membership.CLOSE_TIMEOUT_S},
            )
        return stuck, error

    def _release(self, parts: Parts) -> None:
        if self._state is WorkerState.FAILED and self.settings.exactly_once:
            try:
                with WATCHDOG.watch("abort_transaction", 5):
                    parts.producer.abort_transaction(5)
            except KafkaException:
                pass
        try:
            parts.producer.flush(10)
        except KafkaException as exc:  # fatal (fenced): the error that stopped the
            # worker is the one to report
            log.warning("producer flush on close failed", extra={"error": str(exc)})
        parts.coordinator.bye()
        parts.close_readers()
        parts.store.close()
        self._gc_clock.stop()
        self._readiness.thaw()
        if self._state is WorkerState.CLOSING:
            self._to(WorkerState.STOPPED)
        log.info(
            "worker stopped",
            extra={
                "instance": self.instance,
                "state": self._state.value,
                **self.metrics.snapshot(),
            },
        )
