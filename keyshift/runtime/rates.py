"""Rate reports: what each worker tells the autoscaler every few seconds.

A worker publishes, on the app's ``<app>--rates`` topic (one partition, short
retention), its cumulative counts since it started: source records processed
(per task and in all) and busy seconds (time spent processing). The autoscaler
(:mod:`keyshift.orchestration.autoscale`) turns two reports of one process into
its *true processing rate*, records per busy second: what it could do if it
never waited for input (DS2's useful rate). Cumulative counts make a lost or
late report harmless: the next one covers its window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaException, Producer

log = logging.getLogger("keyshift.rates")

#: How often a worker reports.
REPORT_S = 5.0
#: Retention of the rates topic: the autoscaler needs the last minutes.
RETENTION_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class RateReport:
    """One worker process's counts since it started (see the module docstring)."""

    instance: str
    incarnation: str
    ts_ms: int
    records: int
    busy_s: float
    #: Source records processed per task (``topic[partition]``).
    tasks: Mapping[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "instance": self.instance,
                "incarnation": self.incarnation,
                "ts_ms": self.ts_ms,
                "records": self.records,
                "busy_s": round(self.busy_s, 6),
                "tasks": dict(self.tasks),
            }
        )

    @classmethod
    def decode(cls, data: bytes | None) -> RateReport | None:
        """The report, or None if ``data`` is not one (the topic is not trusted)."""
        try:
            raw = orjson.loads(data or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(raw, dict):
            return None
        instance, incarnation = raw.get("instance"), raw.get("incarnation")
        ts_ms, records, busy_s = raw.get("ts_ms"), raw.get("records"), raw.get("busy_s")
        tasks = raw.get("tasks", {})
        if (
            not isinstance(instance, str)
            or not isinstance(incarnation, str)
            or type(ts_ms) is not int
            or type(records) is not int
            or type(busy_s) not in (int, float)
            or not isinstance(tasks, dict)
            or not all(isinstance(k, str) and type(v) is int for k, v in tasks.items())
        ):
            return None
        busy = float(busy_s)  # type: ignore[arg-type]  # checked above
        if records < 0 or busy < 0:
            return None
        return cls(instance, incarnation, ts_ms, records, busy, tasks)


class RateReporter:
    """Publishes this worker's :class:`RateReport` every ``every_s`` (from the loop).

    Args:
        topic: the app's rates topic.
        producer: a plain (non-transactional) producer.
        counts: returns (source records per task, busy seconds) so far.
    """

    def __init__(
        self,
        topic: str,
        producer: Producer,
        *,
        instance: str,
        incarnation: str,
        counts: Callable[[], tuple[Mapping[str, int], float]],
        every_s: float = REPORT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.instance = instance
        self.incarnation = incarnation
        self._producer = producer
        self._counts = counts
        self._every_s = every_s
        self._clock = clock
        self._next = clock() + every_s

    def tick(self) -> bool:
        """Publish a report if one is due; returns whether it did."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._every_s
        tasks, busy_s = self._counts()
        report = RateReport(
            self.instance,
            self.incarnation,
            int(time.time() * 1000),
            sum(tasks.values()),
            busy_s,
            dict(tasks),
        )
        try:
            self._producer.produce(self.topic, report.encode(), self.instance.encode())
            self._producer.poll(0)
        except (KafkaException, BufferError) as exc:  # a later report covers it
            log.warning("cannot publish a rate report", extra={"error": str(exc)})
        return True
