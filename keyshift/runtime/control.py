"""The control topic ``<app>--control``: how an app's workers tell each other about
planned rebalances, with nothing shared but Kafka.

One partition, short retention, JSON records. Each worker reads it from a
little before it started (:data:`LOOKBACK_S`) and keeps reading it every turn
of its loop; it writes:

========== =================================================================
``hello``  a process started and is getting ready (clients, state, warm-up)
``join``   it is ready and about to subscribe (asks running members to commit)
``ack``    a running member committed ahead of the rebalance ``about`` names
``leave``  it was asked to stop and will leave (asks the others to commit)
``last``   a leaving worker made its last commit (leaves together with others)
``bye``    it closed and left the group
========== =================================================================

``about`` names the incarnation (one process of an instance) a ``ack`` answers.
Records that do not decode are skipped: the topic only shapes timing, never
what state a worker uses, so a forged record can at worst delay a rebalance
by the coordinator's bounded waits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from keyshift.retry import DEFAULT_RETRY

log = logging.getLogger("keyshift.control")

Kind = Literal["hello", "join", "ack", "leave", "last", "bye"]
KINDS = frozenset(get_args(Kind))

#: How far back a starting worker reads the control topic: announcements of
#: processes started a little before it (a scaling step starting several).
LOOKBACK_S = 30.0
#: Retention of the control topic: nothing older matters.
RETENTION_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class ControlMessage:
    kind: Kind
    instance: str
    incarnation: str
    ts_ms: int
    about: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def decode(cls, data: bytes | None) -> ControlMessage | None:
        """The message, or None if ``data`` is not one."""
        try:
            raw = orjson.loads(data or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
            return None
        fields = (raw.get("instance"), raw.get("incarnation"), raw.get("ts_ms"))
        about = raw.get("about")
        if (
            not isinstance(fields[0], str)
            or not isinstance(fields[1], str)
            or type(fields[2]) is not int
            or not (about is None or isinstance(about, str))
        ):
            return None
        return cls(raw["kind"], fields[0], fields[1], fields[2], about)


class ControlChannel:
    """Reads and writes one app's control topic for one worker process."""

    def __init__(
        self, topic: str, consumer: Consumer, producer: Producer, *, instance: str, incarnation: str
    ) -> None:
        self.topic = topic
        self.instance = instance
        self.incarnation = incarnation
        self._consumer = consumer
        self._producer = producer
        self._started = False
        self.skipped = 0

    def start(self, lookback_s: float = LOOKBACK_S) -> None:
        """Read from ``lookback_s`` ago on."""
        since = int((time.time() - lookback_s) * 1000)
        tp = TopicPartition(self.topic, 0, since)
        try:
            # Retried: the topic may have been created a moment ago, its leader
            # not known yet.
            (found,) = DEFAULT_RETRY.call(
                lambda: self._consumer.offsets_for_times([tp], timeout=10), "control offsets"
            )
            offset = found.offset if found.offset >= 0 else -1  # -1: the end
        except (KafkaException, ValueError) as exc:
            log.warning(
                "cannot find where to read the control topic; reading new records only",
                extra={"topic": self.topic, "error": str(exc)},
            )
            offset = -1
        self._consumer.assign([TopicPartition(self.topic, 0, offset)])
        self._started = True

    def publish(self, kind: Kind, about: str | None = None) -> None:
        message = ControlMessage(
            kind, self.instance, self.incarnation, int(time.time() * 1000), about
        )
        try:
            self._producer.produce(self.topic, message.encode(), self.instance.encode())
            self._producer.poll(0)
        except (KafkaException, BufferError) as exc:  # only timing depends on it
            log.warning(
                "cannot publish to the control topic", extra={"kind": kind, "error": str(exc)}
            )

    def flush(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)

    def read(self) -> list[ControlMessage]:
        """The messages that arrived since the last read (never waits)."""
        if not self._started:
            return []
        try:
            msgs = self._consumer.consume(500, 0)
        except KafkaException as exc:
            log.warning("cannot read the control topic", extra={"error": str(exc)})
            return []
        out = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("control topic error", extra={"error": str(err)})
                continue
            message = ControlMessage.decode(msg.value())
            if message is None:
                self.skipped += 1
                continue
            out.append(message)
        return out

    def close(self) -> None:
        self._consumer.close()
