"""Shared stand-ins for unit tests: an in-memory Kafka cluster and its clients.

:class:`FakeCluster` holds topics (partition logs), committed group offsets,
open transactions and one consumer group per ``group.id``. Its clients
(:meth:`FakeCluster.clients`) plug into :class:`keyshift.runtime.clients.Clients`,
so a whole :class:`~keyshift.runtime.worker.Worker` runs against it with memory
state and no Java, Kafka or Redis.

What it models, because the worker's guarantees depend on it:

* a producer queues records; they reach the log (get offsets) and their
  delivery reports are served only in ``poll``/``flush`` (as in librdkafka);
* transactions: records of an open transaction are in the log but hidden from
  ``read_committed`` readers until the commit; an abort hides them for good;
  the commit or abort takes one offset (a control record, never returned);
* per-topic ``max.message.bytes`` (refused in delivery with
  MSG_SIZE_TOO_LARGE) and the producer's ``message.max.bytes`` (refused in
  ``produce``);
* a consumer group with incremental (cooperative) reconciliation: each member,
  at its next ``consume``, first revokes what it no longer owns, then is given
  what nobody holds any more; callbacks run inside ``consume``/``close``.

Faults: :attr:`FakeCluster.crash_at` names a hook point; when the count of
events at that point reaches it, :class:`Crash` (a BaseException) is raised
there, and the process whose client reached it is dead, as after a kill -9:
each :meth:`FakeCluster.clients` call is one process, and once it is dead its
clients do nothing any more (no delivery, no callback, no commit), its group
membership ends at once, and its store writes are refused.

Failed calls, which the process survives: :attr:`FakeCluster.failures` (a call
at a hook point raises a queued KafkaError, e.g. a rejected
``send_offsets_to_transaction``), :attr:`FakeProducer.fail_transaction_on` (the
open transaction fails at a produce), :attr:`FakeConsumer.close_gate` (a close
that hangs) and :meth:`FakeConsumer.lose` (partitions lost).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from keyshift.errors import StateError
from keyshift.runtime.clients import Clients
from keyshift.state.memory import MemoryStore


class Crash(BaseException):  # noqa: N818 - it is not an error, it is the end
    """The process dies here (kill -9): nothing may catch it."""


@dataclass
class Life:
    """One process: its clients stop working once it is dead."""

    dead: bool = False
    consumers: list[FakeConsumer] = field(default_factory=list)


@dataclass
class _Entry:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp: int
    txn: str | None = None  # transactional id while the transaction is open
    aborted: bool = False
    control: bool = False


@dataclass
class _Member:
    consumer: FakeConsumer
    topics: list[str]


@dataclass
class _Group:
    members: list[_Member] = field(default_factory=list)
    generation: int = 0
    #: partition -> member consumer holding it now
    holders: dict[tuple[str, int], FakeConsumer] = field(default_factory=dict)


class FakeCluster:
    """An in-memory Kafka cluster (see the module docstring)."""

    def __init__(self, *, default_partitions: int = 1) -> None:
        self.logs: dict[str, list[list[_Entry]]] = {}
        self.configs: dict[str, dict[str, str]] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}  # (group, topic, partition)
        self.groups: dict[str, _Group] = {}
        self.default_partitions = default_partitions
        self.stores: dict[str, MemoryStore] = {}
        self.crash_at: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []
        #: When set, queued records reach their partitions in a random order across
        #: partitions (each partition keeps its own order), as records to different
        #: brokers do; otherwise in the order they were produced.
        self.shuffle: random.Random | None = None
        #: Every record appended, in order: (topic, partition, offset).
        self.appended: list[tuple[str, int, int]] = []
        #: Store reads fail with StateError while set (the state backend is down).
        self.store_down = False
        #: Errors of calls that fail (the process goes on): each event at a hook
        #: point takes the first error queued under it, if any, and raises it as a
        #: KafkaException. Meant for points whose call raises KafkaException in
        #: librdkafka: ``send_offsets_to_transaction``, ``commit_transaction``,
        #: ``commit_offsets``, ``produce``, ``produce:<topic>``.
        self.failures: dict[str, list[KafkaError]] = {}

    # -- faults -------------------------------------------------------------------------
    def hook(self, point: str, life: Life | None = None) -> None:
        """Count an event at ``point``; crash ``life`` if :attr:`crash_at` says so."""
        count = self.events.get(point, 0) + 1
        self.events[point] = count
        if self.crash_at.get(point) == count:
            if life is not None:
                self.kill(life)
            raise Crash(point)
        queued = self.failures.get(point)
        if queued:
            raise KafkaException(queued.pop(0))

    def kill(self, life: Life) -> None:
        """The process dies: its consumers leave the group at once (no callbacks),
        and its open transactions are aborted (as the coordinator does once they
        time out)."""
        life.dead = True
        for consumer in life.consumers:
            consumer.leave()
        for producer in self.producers:
            if producer.life is life and producer._in_txn:
                producer._end(aborted=True)

    # -- topics ---------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, **config: str) -> None:
        if name not in self.logs:
            self.logs[name] = [[] for _ in range(partitions)]
            self.configs[name] = dict(config)
            for group in self.groups.values():
                group.generation += 1

    def partitions(self, topic: str) -> int:
        return len(self.logs[topic])

    def high(self, topic: str, partition: int) -> int:
        return len(self.logs[topic][partition])

    def stable(self, topic: str, partition: int) -> int:
        """The last stable offset: the first record of a still open transaction."""
        log = self.logs[topic][partition]
        for offset, entry in enumerate(log):
            if entry.txn is not None:
                return offset
        return len(log)

    def records(self, topic: str, *, committed: bool = True) -> list[Message]:
        """Every visible record of ``topic``, partition by partition."""
        out = []
        for partition in range(self.partitions(topic)):
            end = self.stable(topic, partition) if committed else self.high(topic, partition)
            for offset, entry in enumerate(self.logs[topic][partition][:end]):
                if entry.control or (committed and entry.aborted):
                    continue
                out.append(_message(topic, partition, offset, entry))
        return out

    def append(self, topic: str, partition: int, entry: _Entry) -> int:
        if topic not in self.logs:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, topic))
        log = self.logs[topic][partition]
        log.append(entry)
        self.appended.append((topic, partition, len(log) - 1))
        return len(log) - 1

    def delete_topic(self, name: str) -> None:
        del self.logs[name]
        self.configs.pop(name, None)

    # -- clients ------------------------------------------------------------------------
    def clients(self, life: Life | None = None) -> Clients:
        """The clients of one process (``life``; a new one by default)."""
        life = life or Life()

        def consumer(config: dict[str, object]) -> FakeConsumer:
            made = FakeConsumer(self, config, life)
            life.consumers.append(made)
            self.consumers.append(made)
            return made

        def producer(config: dict[str, object]) -> FakeProducer:
            made = FakeProducer(self, config, life)
            self.producers.append(made)
            return made

        def store(url: str) -> FakeStore:
            return FakeStore(self.store(url), self, life)

        return Clients(
            consumer=consumer,
            producer=producer,  # type: ignore[arg-type]
            admin=lambda config: FakeAdmin(self),
            store=store,
        )  # type: ignore[arg-type]

    def store(self, url: str) -> MemoryStore:
        """One shared memory store per URL (``memory://a`` and ``memory://b`` differ)."""
        return self.stores.setdefault(url, MemoryStore(url))

    # -- groups ---------------------------------------------------------------------------
    def group(self, group_id: str) -> _Group:
        return self.groups.setdefault(group_id, _Group())

    def target(self, group_id: str) -> dict[FakeConsumer, list[tuple[str, int]]]:
        """Range assignment over the members, in join order, per topic."""
        group = self.group(group_id)
        out: dict[FakeConsumer, list[tuple[str, int]]] = {m.consumer: [] for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics if t in self.logs})
        for topic in topics:
            members = [m for m in group.members if topic in m.topics]
            count = self.partitions(topic)
            for partition in range(count):
                owner = members[partition * len(members) // count]
                out[owner.consumer].append((topic, partition))
        return out


def _message(topic: str, partition: int, offset: int, entry: _Entry) -> Message:
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=entry.key,
        value=entry.value,
        headers=entry.headers,
        timestamp=(1, entry.timestamp),
    )


def _error(code: int, text: str = "") -> KafkaException:
    return KafkaException(KafkaError(code, text or str(code)))


class FakeProducer:
    """A producer on a :class:`FakeCluster` (idempotent, optionally transactional)."""

    def __init__(
        self, cluster: FakeCluster, config: dict[str, object], life: Life | None = None
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.life = life or Life()
        self.txn_id = config.get("transactional.id")
        self.on_delivery_default = config.get("on_delivery")
        self.max_bytes = int(str(config.get("message.max.bytes", 1_000_000)))
        self._queue: list[tuple[str, int, _Entry, Any]] = []
        self._reports: list[tuple[Any, KafkaError | None, Message]] = []
        self._in_txn = False
        self._txn_records: list[tuple[str, int]] = []
        self._txn_offsets: list[tuple[str, list[TopicPartition]]] = []
        self._counter = itertools.count()
        self.refuse: KafkaError | None = None  # produce() raises this while set
        #: produce() to one of these topics raises its error
        self.refuse_topics: dict[str, KafkaError] = {}
        #: The open transaction fails at the next produce to this topic (then this
        #: is reset): that produce and every later one raise _STATE, and
        #: send_offsets_to_transaction and commit_transaction raise an abortable
        #: error, until abort_transaction (as librdkafka once a transaction is in
        #: an abortable error state).
        self.fail_transaction_on: str | None = None
        self._txn_failed = False

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self.life.dead:
            return
        self.cluster.hook("produce", self.life)
        self.cluster.hook(f"produce:{topic}", self.life)
        if self.refuse is not None:
            raise KafkaException(self.refuse)
        if topic in self.refuse_topics:
            raise KafkaException(self.refuse_topics[topic])
        if self.fail_transaction_on == topic and self._in_txn:
            self.fail_transaction_on = None
            self._txn_failed = True
        if self._txn_failed:
            raise _error(KafkaError._STATE, "Unable to produce message: Local: Erroneous state")
        size = len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers or ())
        if size > self.max_bytes:
            raise _error(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")
        self._check_fenced()
        if self.txn_id is not None and not self._in_txn:
            raise _error(KafkaError._STATE, "no open transaction")
        if partition < 0:
            count = self.cluster.partitions(topic) if topic in self.cluster.logs else 1
            partition = (hash(key) if key is not None else next(self._counter)) % count
        entry = _Entry(
            key,
            value,
            list(headers) if headers else None,
            timestamp or int(time.time() * 1000),
            txn=self.txn_id if self._in_txn else None,
        )  # type: ignore[arg-type]
        self._queue.append((topic, partition, entry, on_delivery or self.on_delivery_default))

    def _deliver(self, limit: int | None = None) -> None:
        """Send queued records (all, or at most ``limit``), queueing their reports."""
        while self._queue and not self.life.dead and (limit is None or limit > 0):
            if limit is not None:
                limit -= 1
            self.cluster.hook("deliver", self.life)
            topic, partition, entry, callback = self._queue.pop(self._next())
            max_bytes = int(self.cluster.configs.get(topic, {}).get("max.message.bytes", 1 << 40))
            size = len(entry.key or b"") + len(entry.value or b"")
            err: KafkaError | None = None
            offset = -1
            if topic not in self.cluster.logs:
                err = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, topic)
            elif size > max_bytes:
                err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large for the topic")
            else:
                offset = self.cluster.append(topic, partition, entry)
                if entry.txn is not None:
                    self._txn_records.append((topic, partition))
            msg = Message(
                topic=topic,
                partition=partition,
                offset=offset,
                key=entry.key,
                value=entry.value,
                headers=entry.headers,
                error=err,
            )
            self._reports.append((callback, err, msg))

    def _next(self) -> int:
        """Index of the queued record to deliver next."""
        if self.cluster.shuffle is None:
            return 0
        heads: dict[tuple[str, int], int] = {}
        for i, (topic, partition, _, _) in enumerate(self._queue):
            heads.setdefault((topic, partition), i)
        return self.cluster.shuffle.choice(sorted(heads.values()))

    def _serve(self) -> int:
        if self.life.dead:
            return 0
        reports, self._reports = self._reports, []
        for callback, err, msg in reports:
            if callback is not None:
                callback(err, msg)
        return len(reports)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports. Records are sent in the background by a real
        producer; here a poll sends all queued records, or with
        :attr:`FakeCluster.shuffle` set a random number of them, so some are
        still in flight when a commit begins."""
        shuffle = self.cluster.shuffle
        self._deliver(None if shuffle is None else shuffle.randint(0, len(self._queue)))
        return self._serve()

    def flush(self, timeout: float = 0) -> int:
        if self.life.dead:
            return 0
        self.cluster.hook("flush", self.life)
        self._deliver()
        self._serve()
        return 0

    def __len__(self) -> int:
        return len(self._queue)

    # -- transactions -----------------------------------------------------------------
    def init_transactions(self, timeout: float = 0) -> None:
        """Fences every other producer with this transactional id and aborts its
        open transaction."""
        for other in self.cluster.producers:
            if other is not self and other.txn_id == self.txn_id and not other.fenced:
                other.fenced = True
                if other._in_txn:
                    other._end(aborted=True)

    fenced = False

    def _check_fenced(self) -> None:
        if self.fenced:
            raise KafkaException(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))

    def _check_txn_failed(self) -> None:
        if self._txn_failed:
            raise KafkaException(
                KafkaError(KafkaError._STATE, "the transaction failed", txn_requires_abort=True)
            )

    def begin_transaction(self) -> None:
        self._check_fenced()
        self._in_txn = True

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: Any, timeout: float = 0
    ) -> None:
        self._check_fenced()
        self.cluster.hook("send_offsets_to_transaction", self.life)
        self._check_txn_failed()
        group_id, generation, member = metadata
        group = self.cluster.group(group_id)
        if generation != group.generation or all(m.consumer is not member for m in group.members):
            raise KafkaException(
                KafkaError(
                    KafkaError.ILLEGAL_GENERATION, "generation moved", txn_requires_abort=True
                )
            )
        self._txn_offsets.append((group_id, list(offsets)))

    def commit_transaction(self, timeout: float = 0) -> None:
        if self.life.dead:
            return
        self._check_fenced()
        self._check_txn_failed()
        self._deliver()
        self.cluster.hook("commit_transaction", self.life)
        self._end(aborted=False)
        for group_id, offsets in self._txn_offsets:
            for tp in offsets:
                self.cluster.offsets[(group_id, tp.topic, tp.partition)] = tp.offset
        self._txn_offsets.clear()
        self._serve()

    def abort_transaction(self, timeout: float = 0) -> None:
        if self.life.dead:
            return
        purged, self._queue = self._queue, []
        for topic, partition, entry, callback in purged:
            msg = Message(topic=topic, partition=partition, key=entry.key, value=entry.value)
            self._reports.append((callback, KafkaError(KafkaError._PURGE_QUEUE, "purged"), msg))
        self._end(aborted=True)
        self._txn_offsets.clear()
        self._txn_failed = False

    def _end(self, *, aborted: bool) -> None:
        touched = set(self._txn_records)
        for topic, partition in touched:
            for entry in self.cluster.logs[topic][partition]:
                if entry.txn == self.txn_id:
                    entry.txn = None
                    entry.aborted = aborted
            self.cluster.append(topic, partition, _Entry(None, None, None, 0, control=True))
        self._txn_records.clear()
        self._in_txn = False


class FakeConsumer:
    """A consumer on a :class:`FakeCluster` (group member or assign-only reader)."""

    def __init__(
        self, cluster: FakeCluster, config: dict[str, object], life: Life | None = None
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.life = life or Life()
        self.group_id = str(config.get("group.id", ""))
        self.read_committed = config.get("isolation.level") == "read_committed"
        self.eof = bool(config.get("enable.partition.eof", False))
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self._eof_sent: set[tuple[str, int]] = set()
        self._callbacks: dict[str, Callable[..., None]] = {}
        self._member: _Member | None = None
        self.closed = False
        #: While set, close() first waits for it (at most 30 s): a close that
        #: hangs, as librdkafka's can mid-rebalance.
        self.close_gate: threading.Event | None = None
        self._losing: list[tuple[str, int]] = []

    # -- group membership ---------------------------------------------------------------
    def subscribe(
        self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None
    ) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        group = self.cluster.group(self.group_id)
        self._member = _Member(self, list(topics))
        group.members.append(self._member)
        group.generation += 1

    def consumer_group_metadata(self) -> tuple[str, int, FakeConsumer]:
        return (self.group_id, self.cluster.group(self.group_id).generation, self)

    def lose(self, partitions: list[tuple[str, int]]) -> None:
        """Lose ``partitions`` (as after a missed session timeout): at the next
        consume, before reconciling, they are no longer this member's and its
        lost callback gets them; reconciling may then assign them again."""
        self._losing.extend(partitions)

    def _reconcile(self) -> None:
        if self._member is None:
            return
        group = self.cluster.group(self.group_id)
        lost: list[tuple[str, int]] = []
        while self._losing:  # pop(): lose() may run in another thread
            lost.append(self._losing.pop(0))
        if lost:
            for key in lost:
                if group.holders.get(key) is self:
                    del group.holders[key]
            self._callbacks["lost"](self, [TopicPartition(t, p) for t, p in lost])
        mine = set(self.cluster.target(self.group_id).get(self, []))
        held = {k for k, v in group.holders.items() if v is self}
        revoke = sorted(held - mine)
        if revoke:
            for key in revoke:
                del group.holders[key]
            self._callbacks["revoke"](self, [TopicPartition(t, p) for t, p in revoke])
        free = sorted(k for k in mine - held if k not in group.holders)
        if free:
            for key in free:
                group.holders[key] = self
            self._callbacks["assign"](self, [TopicPartition(t, p) for t, p in free])

    def leave(self) -> None:
        """Leave the group without callbacks (as a crashed member whose session expired)."""
        if self._member is not None:
            group = self.cluster.group(self.group_id)
            group.members.remove(self._member)
            group.holders = {k: v for k, v in group.holders.items() if v is not self}
            group.generation += 1
            self._member = None

    def close(self) -> None:
        if self.close_gate is not None:
            self.close_gate.wait(30)
        if self._member is not None and not self.life.dead:
            group = self.cluster.group(self.group_id)
            held = sorted(k for k, v in group.holders.items() if v is self)
            if held and self._callbacks.get("revoke"):
                self._callbacks["revoke"](self, [TopicPartition(t, p) for t, p in held])
            self.leave()
        self.closed = True

    # -- assignment -------------------------------------------------------------------------
    def _start(self, tp: TopicPartition) -> int:
        offset = tp.offset
        if offset == OFFSET_STORED or offset < 0:
            if offset == OFFSET_END:
                return self.cluster.high(tp.topic, tp.partition)
            committed = self.cluster.offsets.get((self.group_id, tp.topic, tp.partition))
            if committed is not None and offset != OFFSET_BEGINNING:
                return committed
            return 0
        return int(offset)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {(tp.topic, tp.partition): self._start(tp) for tp in partitions}
        self._eof_sent.clear()

    def unassign(self) -> None:
        self.positions.clear()

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions[(tp.topic, tp.partition)] = self._start(tp)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        # Pauses stay: librdkafka keeps a partition paused across its unassignment.
        for tp in partitions:
            self.positions.pop((tp.topic, tp.partition), None)

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = 0
    ) -> list[TopicPartition]:
        """The first offset at or after each given timestamp (-1: none, the end)."""
        out = []
        for tp in partitions:
            log = self.cluster.logs[tp.topic][tp.partition]
            found = next((i for i, e in enumerate(log) if e.timestamp >= tp.offset), -1)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def unsubscribe(self) -> None:
        """Leave the group (callbacks run now, as librdkafka runs them at the next poll)."""
        if self._member is not None and not self.life.dead:
            group = self.cluster.group(self.group_id)
            held = sorted(k for k, v in group.holders.items() if v is self)
            if held and self._callbacks.get("revoke"):
                self._callbacks["revoke"](self, [TopicPartition(t, p) for t, p in held])
            self.leave()

    def memberid(self) -> str | None:
        return None if self._member is None else f"member-{id(self)}"

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def seek(self, tp: TopicPartition) -> None:
        self.positions[(tp.topic, tp.partition)] = int(tp.offset)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def commit(
        self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True, **_: Any
    ) -> None:
        if self.life.dead:
            return
        self.cluster.hook("commit_offsets", self.life)
        for tp in offsets or []:
            self.cluster.offsets[(self.group_id, tp.topic, tp.partition)] = tp.offset

    def committed(
        self, partitions: list[TopicPartition], timeout: float = 0
    ) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self.cluster.offsets.get((self.group_id, tp.topic, tp.partition), -1001),
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        return 0, self.cluster.high(tp.topic, tp.partition)

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return FakeAdmin(self.cluster).list_topics(topic)

    # -- fetching ---------------------------------------------------------------------------
    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Message]:
        if self.closed:
            raise RuntimeError("consumer closed")
        if self.life.dead:
            raise Crash("dead process")  # ends the dead process's loop
        self._reconcile()
        fetched = self._fetch(num_messages)
        if not fetched and timeout > 0:
            time.sleep(min(timeout, 0.002))  # an idle poll waits a little, as a real one
        return fetched

    def _fetch(self, num_messages: int) -> list[Message]:
        out: list[Message] = []
        for key in list(self.positions):
            if key in self.paused or len(out) >= num_messages:
                continue
            topic, partition = key
            end = (
                self.cluster.stable(topic, partition)
                if self.read_committed
                else self.cluster.high(topic, partition)
            )
            log = self.cluster.logs[topic][partition]
            offset = self.positions[key]
            while offset < end and len(out) < num_messages:
                entry = log[offset]
                if not entry.control and not (self.read_committed and entry.aborted):
                    out.append(_message(topic, partition, offset, entry))
                offset += 1
            self.positions[key] = offset
            if offset >= end and self.eof and key not in self._eof_sent and len(out) < num_messages:
                self._eof_sent.add(key)
                out.append(
                    Message(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        error=KafkaError(KafkaError._PARTITION_EOF, "EOF"),
                    )
                )
            elif offset < end:
                self._eof_sent.discard(key)
        return out


class FakeAdmin:
    """The AdminClient calls keyshift makes, on a :class:`FakeCluster`."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        topics = {}
        for name, log in self.cluster.logs.items():
            if topic is not None and name != topic:
                continue
            parts = {
                p: SimpleNamespace(id=p, leader=0, replicas=[0], isrs=[0]) for p in range(len(log))
            }
            topics[name] = SimpleNamespace(topic=name, partitions=parts, error=None)
        return SimpleNamespace(topics=topics)

    def create_topics(self, new_topics: Iterable[Any], **_: Any) -> dict[str, Future[None]]:
        out: dict[str, Future[None]] = {}
        for new in new_topics:
            future: Future[None] = Future()
            if new.topic in self.cluster.logs:
                future.set_exception(_error(KafkaError.TOPIC_ALREADY_EXISTS, "exists"))
            else:
                self.cluster.create_topic(new.topic, new.num_partitions, **dict(new.config or {}))
                future.set_result(None)
            out[new.topic] = future
        return out

    def describe_configs(self, resources: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        out: dict[Any, Future[Any]] = {}
        for resource in resources:
            future: Future[Any] = Future()
            config = self.cluster.configs.get(resource.name, {})
            future.set_result(
                {k: SimpleNamespace(name=k, value=v, is_default=False) for k, v in config.items()}
            )
            out[resource] = future
        return out

    def incremental_alter_configs(self, resources: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        out: dict[Any, Future[Any]] = {}
        for resource in resources:
            future: Future[Any] = Future()
            future.set_result(None)
            out[resource] = future
        return out

    def describe_consumer_groups(self, group_ids: list[str], **_: Any) -> dict[str, Future[Any]]:
        out: dict[str, Future[Any]] = {}
        for group_id in group_ids:
            future: Future[Any] = Future()
            # A fake member's assignment reaches it at once: the coordinator's
            # record and target of it are what the consumer holds.
            members = [
                SimpleNamespace(
                    client_id=str(m.consumer.config.get("client.id", "")),
                    member_id=m.consumer.memberid(),
                    assignment=SimpleNamespace(topic_partitions=m.consumer.assignment()),
                    target_assignment=SimpleNamespace(topic_partitions=m.consumer.assignment()),
                )
                for m in self.cluster.group(group_id).members
            ]
            future.set_result(SimpleNamespace(members=members))
            out[group_id] = future
        return out

    def list_offsets(
        self, wanted: dict[TopicPartition, Any], isolation_level: Any = None, **_: Any
    ) -> dict[TopicPartition, Future[Any]]:
        committed = str(isolation_level).endswith("READ_COMMITTED")
        out: dict[TopicPartition, Future[Any]] = {}
        for tp in wanted:
            future: Future[Any] = Future()
            end = (
                self.cluster.stable(tp.topic, tp.partition)
                if committed
                else self.cluster.high(tp.topic, tp.partition)
            )
            future.set_result(SimpleNamespace(offset=end))
            out[tp] = future
        return out


class FakeStore:
    """A process's view of a shared :class:`MemoryStore`: commits pass the
    ``store_commit`` hook and are refused once the process is dead."""

    def __init__(self, store: MemoryStore, cluster: FakeCluster, life: Life) -> None:
        self.store = store
        self.url = store.url
        self.cluster = cluster
        self.life = life

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> _HookedPartition:
        return _HookedPartition(
            self.store.partition(app_id, store, partition, aside=aside), self.cluster, self.life
        )

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


class _HookedPartition:
    def __init__(self, inner: Any, cluster: FakeCluster, life: Life) -> None:
        self._inner = inner
        self._cluster = cluster
        self._life = life

    def get_many(self, keys: Any, epoch: int = 0) -> Any:
        if self._cluster.store_down:
            raise StateError("state backend down")
        return self._inner.get_many(keys, epoch)

    def commit(self, changes: Any, stamp: Any, epoch: int) -> None:
        if self._life.dead:
            raise Crash("dead process")
        self._cluster.hook("store_commit", self._life)
        self._inner.commit(changes, stamp, epoch)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        life = self._life

        def call(*args: Any, **kwargs: Any) -> Any:
            if life.dead:
                raise Crash("dead process")
            return attr(*args, **kwargs)

        return call


class ManualClock:
    """A monotonic clock that moves only when a test sets ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0, every_s: float = 0.002) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every_s)
    return cond()


class WorkerThread:
    """Runs ``worker.run()`` in a thread; what it raised is kept in :attr:`error`
    (a :class:`Crash` counts as no error: the process just died)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.crashed = False
        self._thread = threading.Thread(target=self._run, name="fake-worker")

    def _run(self) -> None:
        try:
            self.worker.run()
        except Crash:
            self.crashed = True
        except BaseException as exc:  # the test thread looks at it
            self.error = exc

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 20.0) -> None:
        self.worker.stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the worker did not stop"
