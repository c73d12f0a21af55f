"""A task: one partition of one sub-topology's input, with its own state tables."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from keyshift.errors import (
    BrokerError,
    MigrationError,
    ProcessingError,
    RecordRejected,
    StateError,
)
from keyshift.operators.compile import compile_subtopology
from keyshift.operators.record import Record
from keyshift.operators.topology import SubTopology
from keyshift.state.base import Stamp
from keyshift.state.changelog import ORIGIN_HEADER
from keyshift.state.table import Table

_ORIGIN = struct.Struct(">iqi")

#: Errors that are not the record's fault: raised past the record (never
#: dead-lettered), so the worker stops and the record is processed again later.
INFRASTRUCTURE_ERRORS = (BrokerError, StateError, MigrationError)

Produce = Callable[[str, bytes | None, bytes | None, int, list[tuple[str, bytes]] | None], None]
DeadLetter = Callable[[Message, str, BaseException], None]


class Task:
    """Runs one sub-topology over one input partition (the unit that migrates)."""

    def __init__(
        self,
        sub: SubTopology,
        partition: int,
        tables: dict[str, Table],
        produce: Produce,
        dead_letter: DeadLetter,
        *,
        raise_on_error: bool = False,
    ) -> None:
        self.sub = sub
        self.topic = sub.topic
        self.partition = partition
        self.tables = tables
        self._produce = produce
        self._dead_letter = dead_letter
        self._raise = raise_on_error
        # Context read by the compiled operators.
        self.offset = -1
        self.raw_key: bytes | None = None
        self.timestamp = 0
        self.message: Message | None = None
        self._emitted = 0
        # Progress.
        self.position: int | None = None
        self.committed_position: int | None = None
        self._first_offset: int | None = None
        # After a rollback: messages at or beyond this offset may have been
        # fetched before the rewind; they are skipped until the rewound input
        # arrives, or until the runtime calls fresh_input().
        self._stale_from: int | None = None
        self.seen: dict[int, tuple[int, int]] = {}
        self._committed_seen: dict[int, tuple[int, int]] = {}
        self.mid_batch = False
        self.last_processed_ms = 0  # wall clock, end of the last batch processed
        self.records_in = 0
        self.duplicates = 0
        self._push = compile_subtopology(sub, self)

    # -- ProcessorContext ------------------------------------------------------
    def record(self, key: Any, value: Any) -> Record:
        msg = self.message
        assert msg is not None
        return Record(
            key, value, self.timestamp, msg.headers(), self.topic, self.partition, self.offset
        )

    def table(self, store: str) -> Table:
        return self.tables[store]

    def emit(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._produce(topic, key, value, self.timestamp, None)

    def emit_repartition(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        origin = _ORIGIN.pack(self.partition, self.offset, self._emitted)
        self._emitted += 1
        self._produce(topic, key, value, self.timestamp, [(ORIGIN_HEADER, origin)])

    # -- restore ---------------------------------------------------------------
    def start_offset(self) -> int | None:
        """Where input must resume after restore; None = the group's committed offset."""
        if not self.tables:
            return None
        stamps = [t.stamp for t in self.tables.values()]
        if any(s is None for s in stamps):
            return None
        return min(s.input_offset for s in stamps if s is not None)

    def resume_at(self, offset: int) -> None:
        """Input resumes at ``offset`` (from the restored stamps). The first commit
        then records it, even before any input: the group offset catches up with
        the state, and records re-written after a restore (orphans) get their marker."""
        self.position = offset
        self._first_offset = offset
        self.last_processed_ms = max(
            (t.stamp.ts_ms for t in self.tables.values() if t.stamp is not None), default=0
        )

    def adopt_upstream(self, stamps: list[Stamp | None]) -> None:
        """Duplicate suppression resumes from the oldest store's view of upstream."""
        if not stamps or any(s is None for s in stamps):
            return
        known = [s for s in stamps if s is not None]
        common = set.intersection(*(set(s.upstream) for s in known))
        self.seen = {u: min(s.upstream[u] for s in known) for u in common}
        self._committed_seen = dict(self.seen)

    # -- processing ------------------------------------------------------------
    def read_seconds(self) -> tuple[float, float]:
        """Seconds its tables waited for state reads so far: (local, migration source)."""
        tables = self.tables.values()
        return (sum(t.read_seconds for t in tables), sum(t.remote_seconds for t in tables))

    def process(self, msgs: list[Message]) -> None:
        if self._stale_from is not None:
            msgs = self._skip_stale(msgs, self._stale_from)
            if not msgs:
                return
        if self._first_offset is None:
            self._first_offset = msgs[0].offset()
        # Stays set if the batch is cut short (its transaction failed mid-batch).
        self.mid_batch = True
        if self.tables:
            keys = [m.key() for m in msgs]
            for table in self.tables.values():
                table.prefetch(keys)
        self._run(msgs)
        self.records_in += len(msgs)
        self.position = msgs[-1].offset() + 1
        self.last_processed_ms = int(time.time() * 1000)
        self.mid_batch = False

    def _run(self, msgs: list[Message]) -> None:
        """Push each record through the operators (the per-record hot loop)."""
        kdes = self.sub.key_serde.deserialize
        vdes = self.sub.value_serde.deserialize
        push = self._push
        internal = self.sub.internal
        for msg in msgs:
            if internal and self._skip_repartitioned(msg):
                continue
            raw_key = msg.key()
            try:
                key = kdes(raw_key)
                value = vdes(msg.value())
            except Exception as exc:  # any serde failure is the record's
                self._dead_letter(msg, "deserialize", exc)
                continue
            self.offset = msg.offset()
            self.raw_key = raw_key
            self.timestamp = msg.timestamp()[1]
            self.message = msg
            self._emitted = 0
            try:
                push(key, value)
            except INFRASTRUCTURE_ERRORS:
                raise  # not the record's fault (TransactionAbortable is a BrokerError)
            except Exception as exc:
                self._failed(msg, exc)

    def _skip_repartitioned(self, msg: Message) -> bool:
        """A repartitioned record already applied (a duplicate), or with an origin
        header keyshift did not write (dead-lettered)."""
        try:
            if self._is_duplicate(msg, self.seen):
                self.duplicates += 1
                return True
        except (struct.error, TypeError, ValueError) as exc:
            self._dead_letter(msg, "header", exc)
            return True
        return False

    def _failed(self, msg: Message, exc: Exception) -> None:
        """User code or an output failed on ``msg``: dead-letter it, or (with
        ``on_error="raise"``) stop."""
        if self._raise:
            raise ProcessingError(
                f"{self.topic}[{self.partition}]@{msg.offset()}: {type(exc).__name__}: {exc}"
            ) from exc
        self._dead_letter(msg, "produce" if isinstance(exc, RecordRejected) else "process", exc)

    def _skip_stale(self, msgs: list[Message], stale_from: int) -> list[Message]:
        for i, msg in enumerate(msgs):
            if msg.offset() < stale_from:
                self._stale_from = None
                return msgs[i:]
        return []

    @staticmethod
    def _is_duplicate(msg: Message, seen: dict[int, tuple[int, int]]) -> bool:
        headers = msg.headers()
        if not headers:
            return False
        for name, raw in headers:
            if name == ORIGIN_HEADER:
                # A malformed header raises struct.error (dead-lettered by the caller).
                upstream, offset, index = _ORIGIN.unpack(raw)
                pos = (offset, index)
                last = seen.get(upstream)
                if last is not None and pos <= last:
                    return True
                seen[upstream] = pos
                return False
        return False

    def release(self) -> list[dict[bytes, Any]]:
        """The task left this worker: detach its tables' caches, for the caller to free."""
        return [table.release() for table in self.tables.values()]

    def has_progress(self) -> bool:
        return self.position is not None and self.position != self.committed_position

    def mark_committed(self) -> None:
        """Everything processed so far is durable."""
        self.committed_position = self.position
        self._committed_seen = dict(self.seen)

    def rollback(self) -> int:
        """Forget the progress since the last commit (its transaction was aborted).

        Returns the offset input must be rewound to: the last committed position,
        or the first offset processed since the task opened. Messages fetched
        before the rewind are skipped until the rewound input arrives.
        """
        for table in self.tables.values():
            table.rollback()
        self.seen = dict(self._committed_seen)
        self.mid_batch = False
        if self.position is not None:
            self._stale_from = self.position
        self.position = self.committed_position
        target = (
            self.committed_position if self.committed_position is not None else self._first_offset
        )
        assert target is not None, "rollback of a task that processed nothing"
        return target

    def fresh_input(self) -> None:
        """Everything fetched before the last rewind has been handed to process():
        from now on all input is the rewound input (the client drops messages
        fetched before a seek)."""
        self._stale_from = None

    def stamp(self, epoch: int) -> Stamp:
        assert self.position is not None
        return Stamp(self.position, -1, dict(self.seen), epoch, self.last_processed_ms)

    def __repr__(self) -> str:
        return f"Task({self.topic}[{self.partition}])"
