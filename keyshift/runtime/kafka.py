"""Kafka client configuration and topic management for one application."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS, Settings
from keyshift.errors import BrokerError, ConfigError, TopologyError
from keyshift.operators.topology import Topology
from keyshift.polling import consume_available
from keyshift.retry import DEFAULT_RETRY, Retry
from keyshift.runtime.control import RETENTION_MS as CONTROL_RETENTION_MS
from keyshift.runtime.producer import DEFAULT_MESSAGE_MAX_BYTES, RECORD_OVERHEAD

log = logging.getLogger("keyshift.kafka")

_CONSUMER_ONLY_CLASSIC = (
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
)


#: The group session timeout and heartbeat interval keyshift asks for, unless the
#: ``session.timeout.ms`` / ``heartbeat.interval.ms`` Kafka settings override them.
#: Fast heartbeats: under KIP-848 a member learns of an assignment change only at
#: its next heartbeat, so a new owner's wait for it (up to one interval) is part
#: of every move's pause (the broker's ``group.consumer.min.heartbeat.interval.ms``
#: must allow it).
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 50


def group_timeouts(settings: Settings) -> tuple[int, int]:
    """``(session timeout ms, heartbeat interval ms)`` of this app's consumer group."""
    values = []
    for key, default in (("session.timeout.ms", SESSION_TIMEOUT_MS),
                         ("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)):
        raw = settings.kafka.get(key, default)
        try:
            values.append(int(raw))
        except ValueError:
            raise ConfigError(f"kafka.{key}", f"{raw!r} is not an integer") from None
    return values[0], values[1]


def consumer_group_configs(settings: Settings) -> dict[str, str]:
    """Group configs (KIP-848, ``group.protocol=consumer``) keyshift sets on its group.

    Under KIP-848 the coordinator, not the client, owns the session timeout and the
    heartbeat interval, so keyshift asks for the same values it gives the classic
    protocol. ``consumer.assignment.interval.ms=0`` turns off assignment batching
    (Kafka 4.3+, KIP-1263, 1 s by default): every assignment change moves state, and
    batching only adds to each move's pause.
    """
    session, heartbeat = group_timeouts(settings)
    return {
        "consumer.assignment.interval.ms": "0",
        "consumer.session.timeout.ms": str(session),
        "consumer.heartbeat.interval.ms": str(heartbeat),
    }


def apply_group_configs(
    admin: AdminClient, group: str, configs: dict[str, str], timeout_s: float = 10.0
) -> dict[str, str]:
    """Set each group config in its own request, so one the broker refuses (outside
    its ``group.consumer.min/max.*`` bounds, unknown to an older broker, not
    authorized) does not block the others. Returns the refused ones with the
    broker's reason; a refused config keeps the broker's value."""
    refused: dict[str, str] = {}
    for key, value in configs.items():
        entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
        try:
            for future in admin.incremental_alter_configs([resource],
                                                          request_timeout=timeout_s).values():
                future.result()
        except KafkaException as exc:
            refused[key] = str(exc.args[0].str() if exc.args else exc)
    return refused


def producer_config(settings: Settings, transactional_id: str | None) -> dict[str, object]:
    config: dict[str, object] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "partitioner": "murmur2_random",
        "client.id": f"{settings.app_id}-producer",
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = DEFAULT_TRANSACTION_TIMEOUT_MS
    config.update(settings.client_config())
    return config


def consumer_config(settings: Settings, instance: str) -> dict[str, object]:
    """The group consumer's configuration. Its ``client.id`` is ``<app>--<instance>``:
    the other workers find the group's instances by it (see
    :func:`keyshift.runtime.coordinator.group_instances`)."""
    config: dict[str, object] = {
        "group.id": settings.app_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if settings.exactly_once else "read_uncommitted",
        "client.id": f"{settings.app_id}--{instance}",
        "fetch.wait.max.ms": 100,
        "max.poll.interval.ms": 600_000,
        "group.protocol": settings.group_protocol,
    }
    timeouts = group_timeouts(settings)  # checked under both protocols
    if settings.group_protocol == "classic":
        config["partition.assignment.strategy"] = "cooperative-sticky"
        config["session.timeout.ms"], config["heartbeat.interval.ms"] = timeouts
    if settings.instance_id and settings.static_membership:
        config["group.instance.id"] = settings.instance_id
    config.update(settings.client_config())
    if settings.group_protocol == "consumer":
        for key in _CONSUMER_ONLY_CLASSIC:
            config.pop(key, None)
    return config


def reader_config(
    client: dict[str, str], purpose: str, *, read_committed: bool = False
) -> dict[str, object]:
    """An assign-only consumer that reads topics to their end (no group offsets)."""
    config: dict[str, object] = {
        "group.id": f"{purpose}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "fetch.wait.max.ms": 50,
        "client.id": purpose,
    }
    config.update(client)
    return config


def control_consumer_config(settings: Settings, purpose: str) -> dict[str, object]:
    """A reader of one of the app's own topics (state locations, control)."""
    return reader_config(settings.client_config(), f"{settings.app_id}-{purpose}")


def control_producer_config(settings: Settings) -> dict[str, object]:
    config: dict[str, object] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
        "client.id": f"{settings.app_id}-control",
    }
    config.update(settings.client_config())
    return config


def restore_consumer_config(settings: Settings) -> dict[str, object]:
    """A changelog reader; read_committed under exactly-once."""
    return reader_config(settings.client_config(), f"{settings.app_id}-restore",
                         read_committed=settings.exactly_once)


def read_topic(
    client: dict[str, str], topic: str, *, read_committed: bool = False, idle_s: float = 5.0
) -> list[Message]:
    """Every record of ``topic`` now (all partitions, in partition order), or [] if absent."""
    consumer = Consumer(reader_config(client, "keyshift-reader", read_committed=read_committed))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        pending, out = set(meta.partitions), []
        deadline = time.monotonic() + idle_s
        while pending and time.monotonic() < deadline:
            msgs = consume_available(consumer, 10_000, 0.25)
            if msgs:
                deadline = time.monotonic() + idle_s
            for msg in msgs:
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
        return out
    finally:
        consumer.close()


def end_offsets(
    admin: AdminClient, partitions: list[tuple[str, int]], *, read_committed: bool = False,
    timeout_s: float = 10.0,
    retry: Retry = DEFAULT_RETRY,
) -> dict[tuple[str, int], int]:
    """End offsets (the last stable offset when ``read_committed``) in one request per leader.

    Uses an admin connection on purpose: a consumer's offset query queues behind
    its own long-polling fetches on the same connection (``fetch.wait.max.ms``).
    """
    if not partitions:
        return {}
    level = IsolationLevel.READ_COMMITTED if read_committed else IsolationLevel.READ_UNCOMMITTED
    wanted = {TopicPartition(t, p): OffsetSpec.latest() for t, p in set(partitions)}

    def query() -> dict[tuple[str, int], int]:
        futures = admin.list_offsets(wanted, isolation_level=level, request_timeout=timeout_s)
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    try:
        # Retried: a topic created a moment ago may not have a known leader yet.
        return retry.call(query, "end offsets")
    except KafkaException as exc:
        raise BrokerError(f"cannot read end offsets: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


class TopicManager:
    """Checks source topics and creates internal and sink topics."""

    def __init__(self, settings: Settings,
                 admin: Callable[[dict[str, Any]], AdminClient] = AdminClient) -> None:
        self.settings = settings
        self.admin = admin(settings.client_config())
        raw = settings.kafka.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
        try:
            producer_max = int(raw)
        except ValueError:
            raise ConfigError("kafka.message.max.bytes", f"{raw!r} is not an integer") from None
        #: The largest record the producer sends, less room for its overhead.
        self.default_limit = producer_max - RECORD_OVERHEAD

    def record_limits(self, topology: Topology, timeout_s: float = 15.0) -> dict[str, int]:
        """Per topic the app produces to (sinks, repartition topics, the DLQ), the
        largest record it takes: the smaller of its ``max.message.bytes`` and the
        producer's ``message.max.bytes``, less room for the record's overhead."""
        names = {sink for sub in topology.subtopologies for sink in sub.sinks()}
        names |= {t for sub in topology.subtopologies for t in sub.repartition_topics()}
        names.add(topology.dlq_topic)
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in sorted(names)]
        limits: dict[str, int] = {}
        try:
            futures = self.admin.describe_configs(resources, request_timeout=timeout_s)
            for resource, future in futures.items():
                entry = future.result().get("max.message.bytes")
                if entry is not None and entry.value is not None:
                    limits[resource.name] = min(
                        int(entry.value) - RECORD_OVERHEAD, self.default_limit)
        except KafkaException as exc:
            # Only a check ahead of sending: the broker still refuses what is too
            # large, and the record is dead-lettered then.
            log.warning("cannot read topic size limits", extra={"error": str(exc)})
        return limits

    def partition_counts(self, timeout: float = 15.0) -> dict[str, int]:
        try:
            meta = self.admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(
                f"cannot reach Kafka at {self.settings.brokers!r} (setting 'brokers'): {exc}"
            ) from exc
        return {name: len(t.partitions) for name, t in meta.topics.items() if not t.error}

    def plan(
        self, topology: Topology, existing: dict[str, int]
    ) -> tuple[dict[int, int], list[TopicSpec]]:
        """Partition count of every sub-topology, and the topics that must exist."""
        counts: dict[int, int] = {}
        wanted: list[TopicSpec] = []
        for sub in topology.subtopologies:
            if not sub.internal:
                if sub.topic not in existing:
                    raise TopologyError(
                        f"source topic {sub.topic!r} does not exist; create it first "
                        f"(keyshift topics create {sub.topic} --partitions N)"
                    )
                counts[sub.index] = existing[sub.topic]
            else:
                assert sub.upstream is not None
                counts[sub.index] = sub.partitions or counts[sub.upstream.index]
                wanted.append(TopicSpec(sub.topic, counts[sub.index], {}))
        for sub in topology.subtopologies:
            n = counts[sub.index]
            for store in sub.stores():
                wanted.append(
                    TopicSpec(topology.changelog_topic(store), n, {"cleanup.policy": "compact"})
                )
            for sink in sub.sinks():
                wanted.append(TopicSpec(sink, n, {}))
        wanted.append(TopicSpec(topology.dlq_topic, 1, {}))
        wanted.append(TopicSpec(topology.locations_topic, 1, {"cleanup.policy": "compact"}))
        wanted.append(TopicSpec(topology.events_topic, 1, {}))
        wanted.append(TopicSpec(topology.control_topic, 1, {
            "cleanup.policy": "delete", "retention.ms": str(CONTROL_RETENTION_MS)}))
        return counts, wanted

    def ensure(self, specs: list[TopicSpec], existing: dict[str, int]) -> None:
        seen: set[str] = set()
        missing: list[NewTopic] = []
        for spec in specs:
            if spec.name in seen:
                continue
            seen.add(spec.name)
            if spec.name in existing:
                internal = spec.name.endswith(("-changelog", "-repartition"))
                if internal and existing[spec.name] != spec.partitions:
                    raise TopologyError(
                        f"internal topic {spec.name!r} has {existing[spec.name]} partitions, "
                        f"expected {spec.partitions}; delete it or reset the app"
                    )
                continue
            missing.append(
                NewTopic(spec.name, num_partitions=spec.partitions, config=dict(spec.config))
            )
        if not missing:
            return
        for name, future in self.admin.create_topics(missing, operation_timeout=30).items():
            try:
                future.result()
                log.info("created topic", extra={"topic": name})
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
        self._wait_for_leaders([t.topic for t in missing])

    def _wait_for_leaders(self, names: list[str], timeout_s: float = 15.0) -> None:
        """New topics are usable once every partition has a leader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            topics = self.admin.list_topics(timeout=10).topics
            if all(
                name in topics
                and topics[name].error is None
                and all(p.leader >= 0 for p in topics[name].partitions.values())
                for name in names
            ):
                return
            time.sleep(0.1)
        log.warning("new topics have no leader yet", extra={"topics": ",".join(names)})
