"""The topics an app needs, on a cluster: read, checked, created and altered
(what to do is decided in :mod:`keyshift.runtime.topic_plan`), and the size
limit of each topic the app produces to."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from keyshift.config import Settings
from keyshift.errors import BrokerError, ConfigError, TopologyError
from keyshift.operators.topology import Topology
from keyshift.runtime.producer import DEFAULT_MESSAGE_MAX_BYTES, RECORD_OVERHEAD
from keyshift.runtime.topic_plan import (
    ConfigChange,
    TopicPlan,
    TopicSpec,
    TopicState,
    plan_topics,
    source_missing,
    validate_topics,
)

log = logging.getLogger("keyshift.kafka")


class TopicManager:
    """Reads the cluster's topics, checks an app's, creates and alters them."""

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

    def observe(
        self, names: Iterable[str] | None = None, *, configs: bool = False, timeout_s: float = 15.0
    ) -> dict[str, TopicState]:
        """The cluster's topics (only ``names`` when given): partitions, replicas and,
        with ``configs``, every config's value."""
        try:
            meta = self.admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerError(
                f"cannot reach Kafka at {self.settings.brokers!r} (setting 'brokers'): {exc}"
            ) from exc
        wanted = None if names is None else set(names)
        found = {
            name: t
            for name, t in meta.topics.items()
            if not t.error and (wanted is None or name in wanted)
        }
        values: dict[str, dict[str, str]] = {}
        if configs and found:
            resources = [ConfigResource(ResourceType.TOPIC, name) for name in sorted(found)]
            try:
                futures = self.admin.describe_configs(resources, request_timeout=timeout_s)
                for resource, future in futures.items():
                    values[resource.name] = {
                        key: str(entry.value)
                        for key, entry in future.result().items()
                        if entry.value is not None
                    }
            except KafkaException as exc:
                raise BrokerError(f"cannot read topic configs: {exc}") from exc
        return {
            name: TopicState(
                name,
                len(t.partitions),
                min((len(p.replicas) for p in t.partitions.values()), default=0),
                values.get(name, {}),
            )
            for name, t in found.items()
        }

    def partition_counts(self, timeout: float = 15.0) -> dict[str, int]:
        return {name: t.partitions for name, t in self.observe(timeout_s=timeout).items()}

    def plan(self, topology: Topology, existing: Mapping[str, int]) -> TopicPlan:
        """Every topic ``topology`` needs (see :func:`plan_topics`)."""
        return plan_topics(topology, existing, self.settings.replication_factor)

    @property
    def min_replication(self) -> int:
        """The least replication factor accepted on the app's topics."""
        return max(1, self.settings.replication_factor)

    def prepare(self, topology: Topology) -> TopicPlan:
        """At a worker's start: check the app's topics, then create those missing
        (with ``create_topics``) or fail listing them.

        Raises:
            TopologyError: a source is missing, the topics do not validate (see
                :func:`validate_topics`), or topics are missing while
                ``create_topics`` is off (the message names them and the
                ``keyshift topics apply`` command that creates them).
        """
        cluster = self.observe()
        plan = self.plan(topology, {n: t.partitions for n, t in cluster.items()})
        if plan.missing_sources:
            raise TopologyError("; ".join(source_missing(t) for t in plan.missing_sources))
        problems = validate_topics(topology, plan, cluster, min_replication=self.min_replication)
        if problems:
            raise TopologyError(
                "the app's topics do not fit it; the worker stops rather than corrupt "
                "state:\n  " + "\n  ".join(problems)
            )
        missing = [spec for spec in plan.specs if spec.managed and spec.name not in cluster]
        if missing and not self.settings.create_topics:
            names = "\n  ".join(f"{s.name} ({s.role})" for s in missing)
            raise TopologyError(
                f"{len(missing)} topic(s) the app needs are missing and create_topics is "
                f"off:\n  {names}\ncreate them with: keyshift topics apply "
                f"{topology.app_ref or 'MODULE:APP'}"
            )
        self.create(missing)
        return plan

    def create(self, specs: list[TopicSpec]) -> list[str]:
        """Create ``specs``' topics; one that exists meanwhile is no error.
        Returns the names created."""
        if not specs:
            return []
        new = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication,
                config=dict(spec.config),
            )
            for spec in specs
        ]
        created: list[str] = []
        for name, future in self.admin.create_topics(new, operation_timeout=30).items():
            try:
                future.result()
                created.append(name)
                log.info("created topic", extra={"topic": name})
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
        self._wait_for_leaders([t.topic for t in new])
        return created

    def alter(self, changes: list[ConfigChange], timeout_s: float = 30.0) -> None:
        """Set the configs ``changes`` name (incremental: other configs stay)."""
        by_topic: dict[str, list[ConfigEntry]] = {}
        for change in changes:
            by_topic.setdefault(change.topic, []).append(
                ConfigEntry(change.key, change.wanted, incremental_operation=AlterConfigOpType.SET)
            )
        if not by_topic:
            return
        resources = [
            ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
            for topic, entries in by_topic.items()
        ]
        for resource, future in self.admin.incremental_alter_configs(
            resources, request_timeout=timeout_s
        ).items():
            try:
                future.result()
                log.info("altered topic configs", extra={"topic": resource.name})
            except KafkaException as exc:
                raise BrokerError(f"cannot alter the configs of {resource.name!r}: {exc}") from exc

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
