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

log = logging.getLogger("keyshift.migrations.locations")


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

    def key(self) -> bytes:
        return f"{self.store}:{self.partition}".encode()

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Location:
        return cls(**orjson.loads(data))


class LocationsView:
    """A live, local copy of the locations topic plus a way to publish to it."""

    def __init__(self, topic: str, consumer_conf: dict[str, object],
                 producer_conf: dict[str, object]) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_conf)
        self._consumer.assign([TopicPartition(topic, 0, 0)])
        self._producer = Producer(producer_conf)
        self._locations: dict[bytes, Location] = {}

    def catch_up(self, timeout_s: float = 10.0) -> None:
        """Read the topic to its current end."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            at_end = False
            for msg in self._consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        continue
                    raise BrokerError(f"reading {self.topic}: {err}")
                self._apply(msg.key(), msg.value())
            if at_end:
                return
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0),
                                                           cached=True)
            position = self._consumer.position([TopicPartition(self.topic, 0)])[0].offset
            if high >= 0 and position >= high:
                return
        log.warning("state locations not fully read in time", extra={"topic": self.topic})

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

    def publish(self, location: Location) -> None:
        location = Location(**{**asdict(location), "updated_ms": int(time.time() * 1000)})
        self._producer.produce(self.topic, location.encode(), location.key())
        if self._producer.flush(15):
            raise BrokerError(f"could not publish the state location to {self.topic}")
        self._locations[location.key()] = location

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(5)
