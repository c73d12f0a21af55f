"""Kafka client configurations, end offsets and whole-topic reads for one application."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable

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
    OffsetSpec,
    ResourceType,
)

from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS, Settings, transaction_timeout_ms
from keyshift.errors import BrokerError, ConfigError
from keyshift.polling import consume_available
from keyshift.retry import DEFAULT_RETRY, Retry, kafka_error

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
    for key, default in (
        ("session.timeout.ms", SESSION_TIMEOUT_MS),
        ("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS),
    ):
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
    """Set the group configs that differ from the group's current ones, each in its
    own request, so one the broker refuses (outside its ``group.consumer.min/max.*``
    bounds, unknown to an older broker, not authorized) does not block the others.
    Configs already set are not written again: every worker of the app applies
    them when it starts, and a write to a live group's configs is not free.
    Returns the refused ones with the broker's reason; a refused config keeps the
    broker's value."""
    refused: dict[str, str] = {}
    current = _group_configs(admin, group, timeout_s)
    for key, value in configs.items():
        if current.get(key) == value:
            continue
        entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
        try:
            for future in admin.incremental_alter_configs(
                [resource], request_timeout=timeout_s
            ).values():
                future.result()
        except KafkaException as exc:
            refused[key] = str(exc.args[0].str() if exc.args else exc)
    return refused


def _group_configs(admin: AdminClient, group: str, timeout_s: float) -> dict[str, str]:
    """The group's explicitly set configs ({} if they cannot be read)."""
    try:
        futures = admin.describe_configs(
            [ConfigResource(ResourceType.GROUP, group)], request_timeout=timeout_s
        )
        return {
            name: str(entry.value)
            for future in futures.values()
            for name, entry in future.result().items()
            if not entry.is_default
        }
    except KafkaException:
        return {}


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
    """The group consumer's configuration. Its ``client.id`` is ``<app>--<instance>``
    even when the ``kafka`` settings name one (they do for every other client): the
    other workers find the group's instances by it (see
    :func:`keyshift.runtime.coordinator.group_instances`)."""
    config: dict[str, object] = {
        "group.id": settings.app_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if settings.exactly_once else "read_uncommitted",
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
    config["client.id"] = f"{settings.app_id}--{instance}"
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
    return reader_config(
        settings.client_config(), f"{settings.app_id}-restore", read_committed=settings.exactly_once
    )


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


#: Errors of a request sent to a partition's former leader, or with its former
#: leader epoch: the client's metadata is stale (a broker restarted, a leader moved).
_STALE_LEADER = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)


def _stale_leader(exc: KafkaException) -> bool:
    error = kafka_error(exc)
    return error is not None and error.code() in _STALE_LEADER


def refresh_metadata(admin: AdminClient, topics: Iterable[str], timeout_s: float) -> None:
    """Ask the brokers for ``topics``' leaders again: librdkafka's admin client keeps
    sending a partition's requests with the leader epoch it cached, and a broker
    that restarted since refuses them until the cache is refreshed."""
    for topic in sorted(set(topics)):
        try:
            admin.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:  # the retry that follows reports real trouble
            log.debug("metadata refresh failed", extra={"topic": topic, "error": str(exc)})


def end_offsets(
    admin: AdminClient,
    partitions: list[tuple[str, int]],
    *,
    read_committed: bool = False,
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
        try:
            return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}
        except KafkaException as exc:
            if _stale_leader(exc):
                refresh_metadata(admin, {t for t, _ in partitions}, timeout_s)
            raise

    try:
        # Retried: a topic created a moment ago may not have a known leader yet,
        # and a leader that moved is found again.
        return retry.call(query, "end offsets")
    except KafkaException as exc:
        raise BrokerError(f"cannot read end offsets: {exc}") from exc


#: How often :func:`stable_end_offsets` asks again while a transaction is open.
STABLE_POLL_S = 0.02
#: Beyond the transaction timeout: the broker's default interval between its checks
#: for timed-out transactions (10 s), and a margin.
ABORT_CHECK_GRACE_S = 15.0


def open_transaction_wait_s(settings: Settings) -> float:
    """How long a restore waits for an earlier owner's open transaction: until the
    broker must have aborted it."""
    return transaction_timeout_ms(settings.kafka) / 1000 + ABORT_CHECK_GRACE_S


def stable_end_offsets(
    admin: AdminClient,
    partitions: list[tuple[str, int]],
    *,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[tuple[str, int], int]:
    """The last stable offsets of ``partitions`` once no transaction is open on them
    (their last stable offset equals their high watermark), waiting at most
    ``wait_s``; after that, the last stable offsets as they are.

    Under exactly-once a task's changelog partition has one writer, its owner. A
    transaction still open there when a new owner restores belongs to an earlier
    owner, typically a paused one (a zombie) whose commit is under way: it may yet
    commit, with the input offsets that go with it. Restoring before it is decided
    would miss its records and process their input again (the broker aborts such a
    transaction after ``transaction.timeout.ms``, checked every
    ``transaction.abort.timed.out.transaction.cleanup.interval.ms``).
    """
    ends = end_offsets(admin, partitions, read_committed=True)
    deadline = clock() + wait_s
    pending = list(partitions)
    waited = False
    while pending:
        highs = end_offsets(admin, pending, read_committed=False)
        pending = [tp for tp in pending if ends[tp] < highs[tp]]
        if not pending or clock() >= deadline:
            break
        if not waited:
            waited = True
            log.warning(
                "a transaction of an earlier owner is open on a changelog; waiting for it "
                "to be committed or aborted",
                extra={"partitions": ",".join(f"{t}[{p}]" for t, p in pending)},
            )
        sleep(STABLE_POLL_S)
        ends.update(end_offsets(admin, pending, read_committed=True))
    if pending:
        log.error(
            "a changelog transaction is still open; restoring up to its start",
            extra={"partitions": ",".join(f"{t}[{p}]" for t, p in pending)},
        )
    return ends
