"""Where each task's state lives: the compacted ``<app>-state-locations`` topic.

Key ``<store>:<partition>``; value a :class:`Location` (instance, Redis URL
without secrets, owner epoch, whether a progressive copy is still running and
from where). Every worker keeps a live view; credentials for another
instance's Redis are never published, only matched from local configuration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from keyshift.errors import BrokerError
from keyshift.polling import consume_available
from keyshift.retry import DEFAULT_RETRY

log = logging.getLogger("keyshift.migrations.locations")

#: Marks a chain entry that names a Redis's *aside copy* of the task's data
#: (``StorePartition.set_aside``) instead of its live data.
ASIDE = "#aside"


def aside_of(url: str) -> str:
    """The chain entry for ``url``'s aside copy."""
    return url + ASIDE


def split_aside(url: str) -> tuple[str, bool]:
    """``(url without the marker, whether it names an aside copy)``."""
    if url.endswith(ASIDE):
        return url[: -len(ASIDE)], True
    return url, False


@dataclass(frozen=True, slots=True)
class Location:
    store: str
    partition: int
    instance: str
    url: str
    epoch: int
    complete: bool = True
    source: str | None = None
    updated_ms: int = 0
    #: During a chained copy: the earlier sources, newest first, holding the
    #: keys that are not at ``source`` yet (an entry ending in ``#aside`` names
    #: that Redis's aside copy).
    origins: tuple[str, ...] = ()

    def key(self) -> bytes:
        return f"{self.store}:{self.partition}".encode()

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Location:
        fields = orjson.loads(data)
        fields["origins"] = tuple(fields.get("origins", ()))
        return cls(**fields)


class LocationsView:
    """A live, local copy of the locations topic plus a way to publish to it."""

    def __init__(self, topic: str, consumer_conf: dict[str, object],
                 producer_conf: dict[str, object]) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_conf)
        self._consumer.assign([TopicPartition(topic, 0, 0)])
        self._producer = Producer(producer_conf)
        self._locations: dict[bytes, Location] = {}
        self._next_offset = 0

    def catch_up(self, end: int | None = None, timeout_s: float = 10.0) -> None:
        """Read the topic up to ``end`` (default: the end it has now)."""
        high = end
        if high is None:
            tp = TopicPartition(self.topic, 0)
            _, high = DEFAULT_RETRY.call(
                lambda: self._consumer.get_watermark_offsets(tp, timeout=timeout_s),
                f"offsets of {self.topic}",
            )
        deadline = time.monotonic() + timeout_s
        while self._next_offset < high:
            if time.monotonic() > deadline:
                log.warning("state locations not fully read in time", extra={"topic": self.topic})
                return
            for msg in consume_available(self._consumer, 1000, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {self.topic}: {err}")
                    continue
                self._next_offset = msg.offset() + 1
                self._apply(msg.key(), msg.value())

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._locations.pop(key, None)
        else:
            self._locations[key] = Location.decode(value)

    def get(self, store: str, partition: int) -> Location | None:
        return self._locations.get(f"{store}:{partition}".encode())

    def all(self) -> list[Location]:
        return list(self._locations.values())

    def publish(self, location: Location, *, flush: bool = True) -> None:
        """Record where a task's state lives (``flush=False`` batches until :meth:`flush`)."""
        location = Location(**{**asdict(location), "updated_ms": int(time.time() * 1000)})
        self._producer.produce(self.topic, location.encode(), location.key())
        self._locations[location.key()] = location
        if flush:
            self.flush()

    def flush(self) -> None:
        if self._producer.flush(15):
            raise BrokerError(f"could not publish state locations to {self.topic}")

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(5)
