"""The topics an app needs: sources checked, internal and sink topics created,
and the size limit of each topic it produces to."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from keyshift.config import Settings
from keyshift.errors import BrokerError, ConfigError, TopologyError
from keyshift.operators.topology import Topology
from keyshift.runtime.control import RETENTION_MS as CONTROL_RETENTION_MS
from keyshift.runtime.producer import DEFAULT_MESSAGE_MAX_BYTES, RECORD_OVERHEAD

log = logging.getLogger("keyshift.kafka")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


class TopicManager:
    """Checks source topics and creates internal and sink topics."""

    def __init__(
        self, settings: Settings, admin: Callable[[dict[str, Any]], AdminClient] = AdminClient
    ) -> None:
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
                        int(entry.value) - RECORD_OVERHEAD, self.default_limit
                    )
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
        wanted.append(
            TopicSpec(
                topology.control_topic,
                1,
                {"cleanup.policy": "delete", "retention.ms": str(CONTROL_RETENTION_MS)},
            )
        )
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
