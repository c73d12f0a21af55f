"""Building a worker's parts: topics checked and created, clients made (through
:class:`~keyshift.runtime.clients.Clients`), state opened, and the pieces wired
to each other."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keyshift.config import Settings
from keyshift.errors import BrokerError
from keyshift.migrations.events import EventLog
from keyshift.migrations.locations import LocationsView
from keyshift.migrations.restore import Restorer
from keyshift.migrations.tracker import MigrationTracker
from keyshift.operators.topology import Topology
from keyshift.runtime.clients import Clients
from keyshift.runtime.committer import TIMEOUT_S, Committer
from keyshift.runtime.control import ControlChannel
from keyshift.runtime.coordinator import Coordinator, group_instances
from keyshift.runtime.kafka import (
    apply_group_configs,
    consumer_config,
    consumer_group_configs,
    control_consumer_config,
    control_producer_config,
    group_timeouts,
    producer_config,
    restore_consumer_config,
)
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.producer import RecordProducer, client_errors
from keyshift.runtime.tasks import TaskManager
from keyshift.runtime.topic_plan import state_partitions
from keyshift.runtime.topics import TopicManager
from keyshift.runtime.watchdog import WATCHDOG
from keyshift.state.base import Store

log = logging.getLogger("keyshift.worker")


@dataclass
class Parts:
    """Everything a running worker uses, made by :func:`assemble`."""

    admin: AdminClient
    store: Store
    records: RecordProducer
    producer: Producer
    control_producer: Producer
    locations: LocationsView
    migrations: MigrationTracker
    tasks: TaskManager
    consumer: Consumer
    committer: Committer
    coordinator: Coordinator
    restore_consumers: list[Consumer]

    def close_readers(self) -> None:
        """Close what only reads (changelogs, locations, control topic)."""
        for consumer in self.restore_consumers:
            consumer.close()
        self.migrations.close()
        self.locations.close()
        self.coordinator.close()


def assemble(
    topology: Topology,
    settings: Settings,
    *,
    instance: str,
    clients: Clients,
    metrics: Metrics,
    pause: Callable[[list[TopicPartition]], None],
) -> Parts:
    """Check and create the app's topics, make every client, open the state."""
    topics = TopicManager(settings, clients.admin)
    plan = topics.prepare(topology)
    store = clients.store(settings.state)
    store.ping()
    control = clients.producer(control_producer_config(settings))
    coordinator = Coordinator(
        ControlChannel(
            topology.control_topic,
            clients.consumer(control_consumer_config(settings, "control")),
            control,
            instance=instance,
            incarnation=uuid.uuid4().hex[:12],
        ),
        lambda: group_instances(
            lambda: _member_client_ids(topics.admin, settings.app_id), settings.app_id
        ),
    )
    coordinator.hello()
    records = _records(topology, settings, topics, clients, metrics)
    locations = LocationsView(
        topology.locations_topic,
        {},
        {},
        consumer=clients.consumer(control_consumer_config(settings, "locations")),
        producer=control,
    )
    restore_consumers: list[Consumer] = []

    def restore_consumer() -> Consumer:
        if not restore_consumers:
            restore_consumers.append(clients.consumer(restore_consumer_config(settings)))
        return restore_consumers[0]

    restorer = Restorer(
        settings,
        store,
        locations,
        restore_consumer,
        instance,
        topology.changelog_topic,
        max_record_bytes=topics.default_limit,
        sources=clients.store,
    )
    migrations = MigrationTracker(
        restorer,
        EventLog(
            topology.events_topic,
            control,
            on_emit=lambda e: metrics.observe_migration(e.strategy, e.pause_ms, e.duration_ms),
        ),
        copy_share=settings.copy_share,
    )
    session_ms = group_timeouts(settings)[0]
    tasks = TaskManager(
        topology.by_topic(),
        records=records,
        metrics=metrics,
        pause=pause,
        migrations=migrations,
        raise_on_error=settings.on_error == "raise",
        fenced_limit_s=2 * session_ms / 1000,
        state_partitions=state_partitions(topology, plan),
    )
    if settings.group_protocol == "consumer":
        _apply_group_configs(topics.admin, settings)
    consumer = clients.consumer(consumer_config(settings, instance))
    committer = Committer(
        producer=records.producer,
        records=records,
        consumer=consumer,
        tasks=tasks,
        topology=topology,
        settings=settings,
        metrics=metrics,
    )
    return Parts(
        topics.admin,
        store,
        records,
        records.producer,
        control,
        locations,
        migrations,
        tasks,
        consumer,
        committer,
        coordinator,
        restore_consumers,
    )


def _records(
    topology: Topology, settings: Settings, topics: TopicManager, clients: Clients, metrics: Metrics
) -> RecordProducer:
    """The record producer; under exactly-once its transactions are initialised."""
    txn_id = None
    if settings.exactly_once:
        txn_id = f"{settings.app_id}-{settings.instance_id or uuid.uuid4().hex[:12]}"
    records = RecordProducer(
        producer_config(settings, txn_id),
        metrics=metrics,
        dlq_topic=topology.dlq_topic,
        app_id=settings.app_id,
        transactional=settings.exactly_once,
        max_bytes=topics.record_limits(topology),
        default_max_bytes=topics.default_limit,
        factory=clients.producer,
    )
    if settings.exactly_once:
        try:
            with client_errors(), WATCHDOG.watch("init_transactions", TIMEOUT_S):
                records.producer.init_transactions(TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"cannot initialise transactions: {exc}") from exc
        records.producer.begin_transaction()
    return records


def _member_client_ids(admin: AdminClient, group: str) -> list[str]:
    try:
        described = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException as exc:  # only waits depend on it
        log.warning("cannot describe the consumer group", extra={"error": str(exc)})
        return []
    return [str(member.client_id) for member in described.members]


def _apply_group_configs(admin: AdminClient, settings: Settings) -> None:
    configs = consumer_group_configs(settings)
    refused = apply_group_configs(admin, settings.app_id, configs)
    for key, reason in refused.items():
        log.warning(
            "group config refused by the broker; its own value applies",
            extra={"group": settings.app_id, "config": key, "value": configs[key], "error": reason},
        )
    applied = {k: v for k, v in configs.items() if k not in refused}
    if applied:
        log.info(
            "group configs in effect",
            extra={
                "group": settings.app_id,
                "configs": ",".join(f"{k}={v}" for k, v in applied.items()),
            },
        )
