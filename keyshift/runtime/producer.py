"""Sending records: outputs, changelog records, markers and dead letters.

The :class:`RecordProducer` owns the worker's Kafka producer and tells apart
the two ways a send can fail:

* **the record's fault** (:class:`~keyshift.errors.RecordRejected`): larger than
  its topic takes, or refused as invalid. The record goes to the dead-letter
  topic with the reason in its headers (truncated if it is too large for that
  topic too); processing goes on.
* **the infrastructure's fault** (:class:`~keyshift.errors.BrokerError`): the
  cluster, the connection, authorization, a failed transaction. Never blamed on
  the record: the commit fails, nothing is dead-lettered, and the records are
  processed again after the restart.

Sizes are checked before sending, against the smaller of the producer's
``message.max.bytes`` and the topic's ``max.message.bytes``, so a too-large
output is rejected while its input record is known (and under exactly-once it
never fails the transaction). Delivery reports that still fail (at-least-once)
are settled by :meth:`RecordProducer.settle` before a commit writes its markers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS
from keyshift.errors import BrokerError, InstanceConflict, RecordRejected, TransactionAbortable
from keyshift.retry import kafka_error
from keyshift.runtime.metrics import Metrics

log = logging.getLogger("keyshift.producer")

#: Bytes kept free below a topic's size limit for what the broker counts besides
#: key, value and headers: the record batch header (61 bytes) and the record's
#: own lengths, timestamp and attributes.
RECORD_OVERHEAD = 128
#: librdkafka's default ``message.max.bytes``.
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
#: Longest reason kept in a dead letter's ``ks.error`` header.
MAX_REASON = 2000

#: Delivery errors that are the record's fault (retrying cannot help).
RECORD_FAULTS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    }
)
# Delivery errors of records an aborted transaction dropped before sending them.
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

Headers = list[tuple[str, bytes]]


#: Errors that mean another producer with this transactional id took over.
FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def producer_fenced(exc: KafkaException) -> bool:
    err = kafka_error(exc)
    return err is not None and err.code() in FENCED


def is_record_fault(err: KafkaError) -> bool:
    return err.code() in RECORD_FAULTS


def requires_abort(exc: KafkaException) -> bool:
    """Whether a transactional error leaves the producer usable after an abort."""
    err = kafka_error(exc)
    return err is not None and err.txn_requires_abort() and not err.fatal()


def transaction_failed(exc: KafkaException) -> bool:
    """Whether a produce call failed because the open transaction has failed (the
    producer refuses records in that state with _STATE); abort_transaction then
    tells an abortable failure from a fatal one."""
    err = kafka_error(exc)
    return requires_abort(exc) or (err is not None and err.code() == KafkaError._STATE)


@contextmanager
def client_errors() -> Iterator[None]:
    """Raise a transactional call's own KafkaException.

    confluent-kafka serves delivery reports inside transactional calls; a report
    served after the call has already failed (e.g. fenced) surfaces as a
    SystemError ("returned a result with an exception set") whose cause is the
    call's KafkaException, which is what callers must handle.
    """
    try:
        yield
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KafkaException):
            raise cause from None
        raise


def _headers_size(headers: Headers | None) -> int:
    return sum(len(name) + len(value) for name, value in headers) if headers else 0


def fenced_error(
    transactional_id: str,
    exc: KafkaException,
    *,
    open_s: float = 0.0,
    timeout_s: float | None = None,
) -> InstanceConflict | BrokerError:
    """The error for a fenced transactional producer.

    Fenced while its transaction had been open (``open_s``) longer than
    ``transaction.timeout.ms`` (``timeout_s``): the coordinator aborted the
    transaction on its own (e.g. its records waited for the leader of a
    partition on a broker that died) and bumped the producer epoch. That is a
    failure of the cluster, which a restart recovers from. Otherwise another
    process took the transactional id over: two workers share an instance id.
    """
    if timeout_s is not None and open_s > timeout_s:
        return BrokerError(
            f"the transaction was open {open_s:.1f}s, longer than transaction.timeout.ms "
            f"({timeout_s:.0f}s), and its coordinator aborted it ({exc}); nothing of it "
            f"is kept"
        )
    return InstanceConflict(
        f"another process started with transactional id {transactional_id!r} and fenced "
        f"this one ({exc}): two workers run with the same instance id; give each its own "
        f"--instance-id (KEYSHIFT_INSTANCE_ID)"
    )


class RecordProducer:
    """Produces the worker's records (see the module docstring).

    Args:
        config: the producer's configuration (transactional under exactly-once).
        dlq_topic: the app's dead-letter topic.
        app_id: written into every dead letter's ``ks.app`` header.
        transactional: exactly-once: failures of the open transaction raise
            :class:`~keyshift.errors.TransactionAbortable`.
        max_bytes: per topic, the largest record (key, value and headers) it takes.
        default_max_bytes: the limit for topics not in ``max_bytes``.
        factory: makes the Kafka producer from its configuration (tests pass a fake).
        clock: monotonic time (tests).
    """

    def __init__(
        self,
        config: dict[str, object],
        *,
        metrics: Metrics,
        dlq_topic: str,
        app_id: str,
        transactional: bool,
        max_bytes: Mapping[str, int] | None = None,
        default_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES - RECORD_OVERHEAD,
        factory: Callable[[dict[str, object]], Producer] = Producer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        self.dlq_topic = dlq_topic
        self.app_id = app_id
        self.transactional = transactional
        self.max_bytes = dict(max_bytes or {})
        self.default_max_bytes = default_max_bytes
        # Failed delivery reports since the last settle() (at-least-once).
        self._failed: list[tuple[KafkaError, Message]] = []
        if not transactional:
            config = {**config, "on_delivery": self.on_delivery}
        self.producer_config = config
        self.producer = factory(config)
        #: Exactly-once: when the open transaction's first record was sent (the
        #: transaction starts at its coordinator then, and its timeout runs).
        self.sending_since: float | None = None
        self._transaction_timeout_s = (
            int(str(config.get("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS))) / 1000
        )

    def transaction_began(self) -> None:
        """A new transaction began: nothing of it is at the coordinator yet."""
        self.sending_since = None

    def fenced(self, exc: KafkaException) -> InstanceConflict | BrokerError:
        """The error for this producer fenced with ``exc`` (see :func:`fenced_error`)."""
        open_s = 0.0 if self.sending_since is None else self._clock() - self.sending_since
        return fenced_error(
            str(self.producer_config.get("transactional.id")),
            exc,
            open_s=open_s,
            timeout_s=self._transaction_timeout_s,
        )

    # -- delivery reports ----------------------------------------------------------
    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """The producer's delivery callback (at-least-once): keeps failures."""
        if err is not None and err.code() not in PURGED:
            self._failed.append((err, msg))

    def forget_failures(self) -> None:
        """Drop failed reports (their transaction was aborted: nothing of it counts)."""
        self._failed.clear()

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports (waiting up to ``timeout_s`` for one). A fatal
        producer error (fenced by another process with this transactional id, or
        any other) is raised here.

        Raises:
            InstanceConflict: another producer with this transactional id took over.
            BrokerError: any other fatal producer error.
        """
        try:
            with client_errors():
                self.producer.poll(timeout_s)
        except KafkaException as exc:
            if producer_fenced(exc):
                raise self.fenced(exc) from exc
            raise BrokerError(f"producer failed: {exc}") from exc

    def limit(self, topic: str) -> int:
        return self.max_bytes.get(topic, self.default_max_bytes)

    # -- sending -----------------------------------------------------------------------
    def send(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        """Produce one record, waiting while the local queue is full.

        Raises:
            RecordRejected: Kafka refuses this record (too large, invalid).
            TransactionAbortable: exactly-once, the open transaction has failed.
            BrokerError: any other failure (not the record's fault).
        """
        if self.sending_since is None:
            self.sending_since = self._clock()
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self.poll(0.05)  # room is made as reports come in
            except KafkaException as exc:
                raise self._send_error(topic, exc) from exc

    def _send_error(self, topic: str, exc: KafkaException) -> Exception:
        err = kafka_error(exc)
        if err is not None and is_record_fault(err):
            return RecordRejected(f"{topic} refused the record: {err.str()}")
        if self.transactional and producer_fenced(exc):
            return self.fenced(exc)
        if self.transactional and transaction_failed(exc):
            return TransactionAbortable(f"cannot produce to {topic}: {exc}")
        return BrokerError(f"cannot produce to {topic}: {exc}")

    def send_output(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        headers: Headers | None,
    ) -> None:
        """Produce an output (sink or repartition record) of the record being processed.

        Raises:
            RecordRejected: larger than ``topic`` takes; the caller dead-letters
                the input record.
        """
        size = (0 if key is None else len(key)) + (0 if value is None else len(value))
        if headers:
            size += _headers_size(headers)
        if size > self.max_bytes.get(topic, self.default_max_bytes):
            raise RecordRejected(
                f"output of {size} bytes is larger than {topic} takes ({self.limit(topic)} bytes)"
            )
        if headers:
            self.send(topic, value, key, timestamp=timestamp, headers=headers)
        else:
            self.send(topic, value, key, timestamp=timestamp)
        self.metrics.records_out += 1
        self.metrics.records_out_by_topic[topic] += 1

    def send_changes(
        self,
        topic: str,
        partition: int,
        records: Mapping[bytes, bytes | None],
        on_first: Callable[[KafkaError | None, Message], None] | None,
    ) -> None:
        """Produce a table's changed keys to its changelog partition (the commit's hot
        loop, so the client is called directly; a full queue or an error takes the
        :meth:`send` path). ``on_first``, if given, gets the delivery report of the
        first record."""
        produce = self.producer.produce
        items = iter(records.items())
        if self.sending_since is None and records:
            self.sending_since = self._clock()
        if on_first is not None:
            for key, value in items:
                self.send(topic, value, key, partition=partition, on_delivery=on_first)
                break
        for key, value in items:
            try:
                produce(topic, value, key, partition=partition)
            except (BufferError, KafkaException):
                self.send(topic, value, key, partition=partition)

    # -- dead letters ------------------------------------------------------------------
    def dead_letter(self, msg: Message, stage: str, exc: BaseException) -> None:
        """Send an input record that could not be processed to the dead-letter topic."""
        reason = f"{type(exc).__name__}: {exc}"
        sent_before = self.metrics.dead_letters
        self._dead_letter(
            msg.key(),
            msg.value(),
            reason,
            stage,
            [
                ("ks.topic", (msg.topic() or "").encode()),
                ("ks.partition", str(msg.partition()).encode()),
                ("ks.offset", str(msg.offset()).encode()),
            ],
        )
        if self.metrics.dead_letters > sent_before:
            self.metrics.dead_letters_by_topic[msg.topic() or ""] += 1
        log.warning(
            "record sent to the dead-letter topic",
            extra={
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "stage": stage,
                "error": reason[:MAX_REASON],
            },
        )

    def _dead_letter(
        self, key: bytes | None, value: bytes | None, reason: str, stage: str, where: Headers
    ) -> None:
        headers: Headers = [
            ("ks.error", reason[:MAX_REASON].encode(errors="replace")),
            ("ks.stage", stage.encode()),
            *where,
            ("ks.app", self.app_id.encode()),
        ]
        key, value = self._fit(key, value, headers)
        try:
            self.send(self.dlq_topic, value, key, headers=headers)
        except RecordRejected as exc:
            # Even cut down, the dead-letter topic refuses it: count and log it.
            self.metrics.dead_letters_dropped += 1
            log.error(
                "dead letter refused by the dead-letter topic; record skipped",
                extra={
                    "topic": self.dlq_topic,
                    "stage": stage,
                    "error": str(exc),
                    "reason": reason[:MAX_REASON],
                },
            )
            return
        self.metrics.dead_letters += 1

    def _fit(
        self, key: bytes | None, value: bytes | None, headers: Headers
    ) -> tuple[bytes | None, bytes | None]:
        """Cut key and value down to what the dead-letter topic takes, saying so
        in a ``ks.truncated`` header (their original sizes)."""
        key_len = 0 if key is None else len(key)
        value_len = 0 if value is None else len(value)
        room = self.limit(self.dlq_topic) - _headers_size(headers) - 64
        if key_len + value_len <= room:
            return key, value
        headers.append(("ks.truncated", f"key={key_len} value={value_len}".encode()))
        keep_key = min(key_len, max(0, room // 2))
        key = None if key is None else key[:keep_key]
        value = None if value is None else value[: max(0, room - keep_key)]
        return key, value

    # -- settling (at-least-once) --------------------------------------------------------
    def settle(self, timeout_s: float, *, infrastructure: Callable[[str], bool]) -> None:
        """Wait until every record sent so far is delivered; dead-letter outputs that
        failed for their own fault, and wait for those too.

        ``infrastructure(topic)``: records of that topic (changelogs) may never be
        dead-lettered: any failure of theirs fails the commit.

        Raises:
            BrokerError: a record was not delivered in time, or failed for a
                reason that is not its own, or its dead letter failed.
        """
        self._flush(timeout_s)
        failed, self._failed = self._failed, []
        fatal: list[str] = []
        lettered = 0
        for err, msg in failed:
            topic = msg.topic() or ""
            if topic != self.dlq_topic and not infrastructure(topic) and is_record_fault(err):
                self._dead_letter(
                    msg.key(),
                    msg.value(),
                    f"KafkaError: {err.str()}",
                    "deliver",
                    [("ks.topic", topic.encode()), ("ks.partition", str(msg.partition()).encode())],
                )
                lettered += 1
            else:
                fatal.append(f"{topic}[{msg.partition()}]: {err.str()}")
        if lettered:
            log.warning(
                "outputs refused by their topics sent to the dead-letter topic",
                extra={"records": lettered},
            )
            self._flush(timeout_s)
            fatal += [f"{m.topic()}[{m.partition()}]: {e.str()}" for e, m in self._failed]
            self._failed.clear()
        if fatal:
            raise BrokerError(f"delivery failed ({len(fatal)} records): " + "; ".join(fatal[:5]))

    def _flush(self, timeout_s: float) -> None:
        try:
            with client_errors():
                left = self.producer.flush(timeout_s)
        except KafkaException as exc:
            if self.transactional and producer_fenced(exc):
                raise self.fenced(exc) from exc
            raise BrokerError(f"producer failed: {exc}") from exc
        if left:
            raise BrokerError(f"{left} records not delivered within {timeout_s:.0f}s")
