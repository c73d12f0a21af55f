"""``keyshift autoscale``: measure the job, ask a policy, scale, wait, repeat.

Every ``window_s`` the autoscaler observes the job (:class:`JobProbe`): the
instances in its consumer group, the source partitions, the arrival rate (the
sources' end offsets, two samples apart), the backlog (the group's lag) and
the true processing rate of an instance (the workers' rate reports, see
:mod:`keyshift.runtime.rates`). It asks the policy
(:mod:`keyshift.orchestration.autoscale`) and logs and publishes every decision
with its inputs on ``<app>--events`` (``"kind": "autoscale"``). After a change
it waits until the group has the new count of members, no migration event has
arrived for one report interval (the moved tasks run again) and every member
has reported a fresh window, so that the next decision never reads rates
measured across a migration.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from keyshift.config import Settings
from keyshift.errors import BrokerError
from keyshift.operators.topology import Topology
from keyshift.orchestration.autoscale import Decision, Observation, Policy
from keyshift.orchestration.scaling import Backend, apply_scale, plan_scale
from keyshift.runtime.kafka import end_offsets, reader_config
from keyshift.runtime.rates import REPORT_S, RateReport

log = logging.getLogger("keyshift.autoscale")

#: Reports kept per worker process: enough for a few windows.
KEPT_REPORTS = 12
#: The oldest rate reports a decision uses: a minute of steady running.
RATES_HORIZON_S = 60.0


@dataclass
class RateWindow:
    """Recent rate reports of each worker process, by incarnation."""

    reports: dict[str, deque[RateReport]] = field(default_factory=dict)

    def add(self, report: RateReport) -> None:
        kept = self.reports.setdefault(report.incarnation, deque(maxlen=KEPT_REPORTS))
        if not kept or report.ts_ms > kept[-1].ts_ms:
            kept.append(report)

    def processing_rate(self, since_ms: int) -> float:
        """Source records per busy second over the reports newer than ``since_ms``
        (0: none measured). Each process counts from its first report in the
        window to its last: its cumulative counts make the difference exact."""
        records, busy = 0, 0.0
        for kept in self.reports.values():
            fresh = [r for r in kept if r.ts_ms >= since_ms]
            if len(fresh) < 2:
                continue
            records += fresh[-1].records - fresh[0].records
            busy += fresh[-1].busy_s - fresh[0].busy_s
        return records / busy if busy > 0 and records > 0 else 0.0

    def reported_since(self, instance: str, since_ms: int) -> bool:
        return any(
            r.instance == instance and r.ts_ms >= since_ms
            for kept in self.reports.values()
            for r in kept
        )


class JobProbe:
    """Reads what the autoscaler observes (see the module docstring)."""

    def __init__(self, settings: Settings, topology: Topology) -> None:
        self.settings = settings
        self.topology = topology
        self.sources = sorted({s.topic for s in topology.subtopologies if not s.internal})
        client = settings.client_config()
        self.admin = AdminClient(client)
        self._rates_reader = Consumer(reader_config(client, f"{settings.app_id}-autoscale"))
        self._events_reader = Consumer(reader_config(client, f"{settings.app_id}-autoscale"))
        self.window = RateWindow()
        self.migrations_seen_ms = 0
        self._last_ends: tuple[float, int] | None = None
        self._earlier: float | None = None
        self._window_start: tuple[float, int] | None = None
        self._unassigned = {
            topology.rates_topic: self._rates_reader,
            topology.events_topic: self._events_reader,
        }
        self._assign()

    def _assign(self) -> None:
        """Read each of the app's topics from a little before now, once it exists
        (the workers create them)."""
        since = int((time.time() - 2 * KEPT_REPORTS * REPORT_S) * 1000)
        for topic, reader in list(self._unassigned.items()):
            try:
                (found,) = reader.offsets_for_times([TopicPartition(topic, 0, since)], timeout=10)
            except KafkaException:
                continue  # not created yet
            start = found.offset if found.offset >= 0 else OFFSET_END
            reader.assign([TopicPartition(topic, 0, start)])
            del self._unassigned[topic]

    def close(self) -> None:
        self._rates_reader.close()
        self._events_reader.close()

    # -- what arrived ------------------------------------------------------------------
    def poll(self) -> None:
        """Take the rate reports and migration events that arrived."""
        if self._unassigned:
            self._assign()
        for msg in self._drain(self._rates_reader):
            report = RateReport.decode(msg.value())
            if report is not None:
                self.window.add(report)
        for msg in self._drain(self._events_reader):
            try:
                event = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("kind", "migration") == "migration":
                self.migrations_seen_ms = int(time.time() * 1000)

    @staticmethod
    def _drain(reader: Consumer) -> list[Message]:
        out: list[Message] = []
        while True:
            msgs = reader.consume(1000, 0.05)
            if not msgs:
                return out
            out.extend(m for m in msgs if m.error() is None)
            if any(
                m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF
                for m in msgs
            ):
                log.warning("cannot read a topic of the app")

    # -- the group and its sources ------------------------------------------------------
    def members(self) -> list[str]:
        """Instance ids of the group's members (their client ids end in ``--<id>``)."""
        group = self.settings.app_id
        try:
            described = self.admin.describe_consumer_groups([group], request_timeout=10)[group]
            members = described.result().members
        except KafkaException as exc:
            raise BrokerError(f"cannot describe group {group!r}: {exc}") from exc
        return [str(m.client_id).rpartition("--")[2] for m in members]

    def _partitions(self) -> list[tuple[str, int]]:
        meta = self.admin.list_topics(timeout=10).topics
        return [(t, p) for t in self.sources if t in meta for p in meta[t].partitions]

    def backlog(self) -> int:
        """Records in the sources the group has not processed yet."""
        return self._backlog(end_offsets(self.admin, self._partitions()))

    def _backlog(self, ends: dict[tuple[str, int], int]) -> int:
        group = self.settings.app_id
        try:
            request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])
            answer = self.admin.list_consumer_group_offsets([request])[group].result()
        except KafkaException as exc:
            raise BrokerError(f"cannot read the offsets of group {group!r}: {exc}") from exc
        committed = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}
        return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())

    def _arrival(self, ends: dict[tuple[str, int], int]) -> float | None:
        """Records/s arrived since the last sample of the end offsets (None: no
        sample yet); this one becomes the last."""
        now, total = time.monotonic(), sum(ends.values())
        rate = None
        if self._last_ends is not None and now > self._last_ends[0]:
            rate = max(0.0, (total - self._last_ends[1]) / (now - self._last_ends[0]))
        self._last_ends = (now, total)
        return rate

    def mark(self, *, start: bool = False) -> None:
        """Sample the sources' end offsets: ``start`` begins a window; otherwise
        the rate since the previous sample is the window's earlier rate."""
        ends = end_offsets(self.admin, self._partitions())
        earlier = self._arrival(ends)
        if start:
            self._window_start = self._last_ends
            self._earlier = None
        else:
            self._earlier = earlier

    def observe(self, rates_since_ms: int) -> Observation:
        """The job now: the arrival rate since :meth:`mark` (or the last observation),
        the true processing rate from the rate reports since ``rates_since_ms``."""
        partitions = self._partitions()
        ends = end_offsets(self.admin, partitions)
        recent = self._arrival(ends)
        whole = recent or 0.0
        if self._window_start is not None and self._last_ends is not None:
            (t0, n0), (t1, n1) = self._window_start, self._last_ends
            whole = max(0.0, (n1 - n0) / (t1 - t0)) if t1 > t0 else whole
        self.poll()
        trend = None
        if self._earlier is not None and recent is not None:
            trend = (self._earlier, recent)
        return Observation(
            instances=len(self.members()),
            partitions=len(partitions),
            arrival_rate=whole,
            processing_rate=self.window.processing_rate(rates_since_ms),
            backlog=self._backlog(ends),
            arrival_trend=trend,
        )


class Autoscaler:
    """Runs the decide-act-settle loop (see the module docstring).

    Args:
        probe: what it observes.
        policy: what decides.
        backend: how it scales (``keyshift scale``'s backends).
        dry_run: decide and publish, never scale.
        events: where decisions are published (None: logged only).
        window_s: how long each measurement covers.
        settle_timeout_s: the longest wait for a change to settle.
        sleep: waits (tests).
    """

    def __init__(
        self,
        probe: JobProbe,
        policy: Policy,
        *,
        backend: Backend,
        dry_run: bool = False,
        events: Producer | None = None,
        window_s: float = 3 * REPORT_S,
        settle_timeout_s: float = 120.0,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.probe = probe
        self.policy = policy
        self.backend = backend
        self.dry_run = dry_run
        self.events = events
        self.window_s = window_s
        self.settle_timeout_s = settle_timeout_s
        self.name = name
        self._sleep = sleep
        self.decisions: list[Decision] = []
        self._id = uuid.uuid4().hex[:8]
        self._settled_ms = 0

    def step(self) -> Decision:
        """Observe, decide, publish; scale and settle when the decision changes the count.

        The arrival rate is measured over the window, and separately over its
        first two thirds and its last third (a policy waits while those differ:
        the load is changing, and the window mixes two loads); the processing rate
        over every report since the last change settled, at most a minute
        back (rates measured across a migration are never used).
        """
        tail = self.window_s / 3
        self.probe.mark(start=True)
        self._sleep(self.window_s - tail)
        self.probe.mark()
        self._sleep(tail)
        rates_since = max(self._settled_ms, int((time.time() - RATES_HORIZON_S) * 1000))
        decision = self.policy.decide(self.probe.observe(rates_since))
        self.decisions.append(decision)
        self._publish(decision)
        if decision.changes and not self.dry_run:
            action = plan_scale(
                self.backend, self.probe.settings.app_id, decision.instances, name=self.name
            )
            started_ms = int(time.time() * 1000)
            apply_scale(action)
            self.settle(decision.instances, started_ms)
            self._settled_ms = int(time.time() * 1000)
        return decision

    def settle(self, instances: int, since_ms: int) -> bool:
        """Wait until the group has ``instances`` members, migrations are quiet and
        every member has reported since; False if that took too long."""
        deadline = time.monotonic() + self.settle_timeout_s
        while time.monotonic() < deadline:
            self._sleep(REPORT_S / 2)
            self.probe.poll()
            members = self.probe.members()
            now_ms = int(time.time() * 1000)
            quiet = now_ms - max(self.probe.migrations_seen_ms, since_ms) >= REPORT_S * 1000
            settled_ms = max(self.probe.migrations_seen_ms, since_ms)
            if (
                len(members) == instances
                and quiet
                and all(self.probe.window.reported_since(m, settled_ms) for m in members)
            ):
                return True
        log.warning("the job did not settle in time", extra={"instances": instances})
        return False

    def _publish(self, decision: Decision) -> None:
        doc = {"kind": "autoscale", "ts_ms": int(time.time() * 1000), **decision.to_dict()}
        doc["dry_run"] = self.dry_run
        log.info("autoscale decision", extra={k: v for k, v in doc.items() if k != "kind"})
        if self.events is not None:
            self.events.produce(
                self.probe.topology.events_topic,
                orjson.dumps(doc),
                f"autoscale-{self._id}".encode(),
            )
            self.events.flush(5)

    def run(self, steps: int | None = None) -> None:
        done = 0
        while steps is None or done < steps:
            self.step()
            done += 1
