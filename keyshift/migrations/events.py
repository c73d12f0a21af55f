"""Migration events: one per moved task, as a structured log line and a record in
``<app>--events``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
from confluent_kafka import Producer

log = logging.getLogger("keyshift.migrations")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class MigrationEvent:
    """What one migration did and cost.

    ``pause_ms``: last record processed by the previous owner -> first record
    processed here (includes the previous owner's last commit and the group
    rebalance). ``resume_ms``: assignment -> first
    record processed (the part keyshift adds beyond the rebalance), of which
    ``fetch_ms`` is assignment -> first record received from Kafka.
    ``duration_ms``: assignment -> state fully local.
    """

    app: str
    store: str
    partition: int
    strategy: str
    reason: str
    from_instance: str | None
    from_url: str | None
    to_instance: str
    to_url: str
    assigned_ms: int
    previous_record_ms: int = 0
    keys: int = 0
    bytes: int = 0
    fetched_on_demand: int = 0
    tail_records: int = 0
    pause_ms: int | None = None
    resume_ms: int | None = None
    fetch_ms: int | None = None
    duration_ms: int | None = None
    first_record_ms: int | None = None
    emitted: bool = False

    @property
    def task(self) -> str:
        return f"{self.store}[{self.partition}]"

    def record_received(self, when_ms: int) -> None:
        if self.fetch_ms is None:
            self.fetch_ms = max(0, when_ms - self.assigned_ms)

    def record_first(self, when_ms: int) -> None:
        if self.first_record_ms is None:
            self.first_record_ms = when_ms
            self.resume_ms = max(0, when_ms - self.assigned_ms)
            if self.previous_record_ms:
                self.pause_ms = max(0, when_ms - self.previous_record_ms)

    def finish(self) -> None:
        self.duration_ms = now_ms() - self.assigned_ms

    def ready(self, idle_s: float = 30.0) -> bool:
        """Finished, and its first record processed (or none came for ``idle_s``
        after the assignment; the event then has no pause). Generous, because a
        task's first record waits for every changelog tail of its assignment
        (they are applied one after another) and for input to arrive."""
        if self.emitted or self.duration_ms is None:
            return False
        return self.first_record_ms is not None or now_ms() - self.assigned_ms > idle_s * 1000

    def to_dict(self) -> dict[str, object]:
        doc = asdict(self)
        doc.pop("emitted")
        doc["task"] = self.task
        return doc


class EventLog:
    """Publishes migration events; ``on_emit`` is also told of each (metrics)."""

    def __init__(
        self,
        topic: str,
        producer: Producer,
        on_emit: Callable[[MigrationEvent], None] | None = None,
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._on_emit = on_emit

    def emit(self, event: MigrationEvent) -> None:
        if self._on_emit is not None:
            self._on_emit(event)
        event.emitted = True
        doc = event.to_dict()
        log.info("migration", extra={k: v for k, v in doc.items() if v is not None})
        self._producer.produce(self.topic, orjson.dumps(doc), event.task.encode())
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(5)
