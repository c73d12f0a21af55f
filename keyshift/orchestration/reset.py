"""``keyshift reset``: rewind an app's consumer group on its source topics and,
optionally, delete its internal topics and its Redis state.

Like Kafka Streams' application-reset tool, a reset refuses while the app's
consumer group has members: a running worker would commit its own positions
over the new ones, and would keep writing the state being deleted.

A task of a store-holding sub-topology resumes its input where its state's
stamp says, not at the group's committed offset (see the concepts page). So
new offsets alone reprocess input only in sub-topologies without stores;
``delete_internal`` removes the state, the changelogs and the locations, so
every task starts from the new offsets with empty state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from keyshift.config import Settings
from keyshift.errors import BrokerError, KeyshiftError, StateError
from keyshift.operators.topology import Topology
from keyshift.orchestration.placement import redis_urls
from keyshift.progress import Progress, Ticker
from keyshift.retry import DEFAULT_RETRY, kafka_error
from keyshift.runtime.topics import TopicManager
from keyshift.urls import redact

#: Keys unlinked per round trip, and the SCAN ``COUNT`` hint.
UNLINK_BATCH = 1000
#: How long a reset waits for deleted topics to leave the cluster's metadata.
TOPIC_DELETION_WAIT_S = 60.0

Spec = Literal["earliest", "latest", "datetime", "offsets"]
TopicPartitionKey = tuple[str, int]


class GroupActiveError(KeyshiftError):
    """The app's consumer group has members: the app is running."""


class OffsetsFileError(KeyshiftError):
    """An offsets file (``--to-offsets``) that does not follow its format."""


# ------------------------------------------------------------------ pure parts


def parse_offsets(text: str) -> dict[TopicPartitionKey, int]:
    """The ``topic,partition,offset`` lines of an offsets file.

    One entry per line; blank lines and lines starting with ``#`` are skipped;
    spaces around fields are ignored. A partition named twice is an error, as
    are a negative partition or offset and a line with other than three fields.

    Raises:
        OffsetsFileError: a line breaks the format (its number is in the message).
    """
    out: dict[TopicPartitionKey, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0]:
            raise OffsetsFileError(f"line {number}: expected topic,partition,offset: {raw!r:.80}")
        topic, partition, offset = fields
        try:
            p, o = int(partition), int(offset)
        except ValueError:
            raise OffsetsFileError(
                f"line {number}: partition and offset must be integers: {raw!r:.80}"
            ) from None
        if p < 0 or o < 0:
            raise OffsetsFileError(f"line {number}: negative partition or offset: {raw!r:.80}")
        if (topic, p) in out:
            raise OffsetsFileError(f"line {number}: {topic}[{p}] is named twice")
        out[(topic, p)] = o
    return out


def parse_datetime(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date and time
    (``2026-12-01T06:00:00Z``, ``2026-12-01 07:00:00+01:00``, ``2026-12-01``);
    without a UTC offset the time is taken as UTC.

    Raises:
        KeyshiftError: not an ISO 8601 date and time.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise KeyshiftError(
            f"{text!r} is not an ISO 8601 date and time (e.g. 2026-12-01T06:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def redis_pattern(app_id: str) -> str:
    """The SCAN pattern of every Redis key of ``app_id``'s stores (``ks:{app:store:p}:...``).

    App ids use ``[A-Za-z0-9._-]`` (checked by the settings): no glob character
    and no ``:``, so the pattern matches this app's keys and no other app's.
    """
    if not app_id or not all((c.isascii() and c.isalnum()) or c in "._-" for c in app_id):
        raise KeyshiftError(f"app id {app_id!r} must use [A-Za-z0-9._-]")
    return f"ks:{{{app_id}:*"


# ------------------------------------------------------------------ the group


def group_members(admin: AdminClient, group: str, timeout_s: float = 15.0) -> list[str]:
    """The members of consumer group ``group`` (instance or client ids); [] when
    the group is empty or does not exist. Works for groups of either protocol
    (``consumer``, KIP-848, and ``classic``)."""
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[
            group
        ].result()
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is not None and error.name() == "GROUP_ID_NOT_FOUND":
            return []
        raise BrokerError(f"cannot describe consumer group {group!r}: {exc}") from exc
    return sorted(m.group_instance_id or m.client_id for m in description.members)


def require_stopped(admin: AdminClient, group: str, doing: str) -> None:
    """Refuse to go on while consumer group ``group`` has members.

    Raises:
        GroupActiveError: it has members (their ids are in the message).
    """
    members = group_members(admin, group)
    if members:
        raise GroupActiveError(
            f"cannot {doing}: consumer group {group!r} has {len(members)} member(s) "
            f"({', '.join(members[:5])}{', ...' if len(members) > 5 else ''}); "
            "stop every worker of the app first (a stopped static member stays in the "
            "group until its session times out)"
        )


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class OffsetChange:
    topic: str
    partition: int
    current: int | None  # the committed offset (None: none committed)
    new: int


@dataclass
class ResetPlan:
    """What a reset changes; :func:`render_plan` prints it."""

    app_id: str
    offsets: list[OffsetChange] = field(default_factory=list)
    #: Internal topics of the app that exist now (deleted with ``delete_internal``).
    topics: list[str] = field(default_factory=list)
    #: Redis servers (connectable URLs) whose keys of the app are deleted.
    redis: list[str] = field(default_factory=list)
    delete_internal: bool = False
    notes: list[str] = field(default_factory=list)


#: Roles in the topic manager's plan of the topics keyshift does not own.
USER_ROLES = frozenset({"source", "sink"})


def internal_topics(
    settings: Settings, topology: Topology, existing: dict[str, int], admin: AdminClient
) -> list[str]:
    """keyshift's own topics of the app (every planned topic but sources and
    sinks: repartition, changelogs, locations, events, DLQ, control, ...) that
    exist now."""
    plan = TopicManager(settings, admin=lambda _: admin).plan(topology, existing)
    return sorted(
        spec.name for spec in plan.specs if spec.role not in USER_ROLES and spec.name in existing
    )


def source_partitions(topology: Topology, existing: dict[str, int]) -> list[TopicPartitionKey]:
    """Every partition of the app's source topics (not its repartition topics).

    Raises:
        KeyshiftError: a source topic does not exist.
    """
    out: list[TopicPartitionKey] = []
    for sub in topology.subtopologies:
        if sub.internal:
            continue
        if sub.topic not in existing:
            raise KeyshiftError(f"source topic {sub.topic!r} does not exist")
        out += [(sub.topic, p) for p in range(existing[sub.topic])]
    return out


def _list_offsets(
    admin: AdminClient, specs: dict[TopicPartition, Any], timeout_s: float = 15.0
) -> dict[TopicPartitionKey, int]:
    if not specs:
        return {}

    def query() -> dict[TopicPartitionKey, int]:
        futures = admin.list_offsets(specs, request_timeout=timeout_s)
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    try:
        return DEFAULT_RETRY.call(query, "offsets")  # a leader may be moving
    except KafkaException as exc:
        raise BrokerError(f"cannot list offsets: {exc}") from exc


def committed_offsets(
    admin: AdminClient, group: str, partitions: list[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    """The group's committed offsets of ``partitions`` (absent: none committed)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
    try:
        result = admin.list_consumer_group_offsets([request], request_timeout=15)[group].result()
    except KafkaException as exc:
        raise BrokerError(f"cannot read the committed offsets of group {group!r}: {exc}") from exc
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions or []
        if tp.offset >= 0
    }


def target_offsets(
    admin: AdminClient,
    partitions: list[TopicPartitionKey],
    spec: Spec,
    *,
    timestamp_ms: int | None = None,
    offsets: dict[TopicPartitionKey, int] | None = None,
    notes: list[str] | None = None,
) -> dict[TopicPartitionKey, int]:
    """The offset each source partition is reset to.

    ``datetime``: the first offset whose record timestamp is at or after
    ``timestamp_ms``, or the end when there is none. ``offsets``: the file's
    offsets for the partitions it names (others are left out: their committed
    offsets stay), each kept within the partition's earliest and end offsets.

    Raises:
        KeyshiftError: an offsets file names a partition that is not one of
            the app's source partitions.
    """
    tps = [TopicPartition(t, p) for t, p in partitions]
    if spec == "earliest":
        return _list_offsets(admin, {tp: OffsetSpec.earliest() for tp in tps})
    ends = _list_offsets(admin, {tp: OffsetSpec.latest() for tp in tps})
    if spec == "latest":
        return ends
    if spec == "datetime":
        assert timestamp_ms is not None
        found = _list_offsets(admin, {tp: OffsetSpec.for_timestamp(timestamp_ms) for tp in tps})
        return {tp: (off if off >= 0 else ends[tp]) for tp, off in found.items()}
    assert offsets is not None
    unknown = sorted(set(offsets) - set(partitions))
    if unknown:
        named = ", ".join(f"{t}[{p}]" for t, p in unknown[:5])
        raise KeyshiftError(
            f"the offsets file names partitions that are no source of the app: {named}"
        )
    starts = _list_offsets(admin, {TopicPartition(t, p): OffsetSpec.earliest() for t, p in offsets})
    out = {}
    for tp, wanted in offsets.items():
        kept = min(max(wanted, starts[tp]), ends[tp])
        if kept != wanted and notes is not None:
            notes.append(
                f"{tp[0]}[{tp[1]}]: offset {wanted} is outside [{starts[tp]}, {ends[tp]}]; "
                f"using {kept}"
            )
        out[tp] = kept
    return out


def plan_reset(
    settings: Settings,
    topology: Topology,
    spec: Spec,
    *,
    timestamp_ms: int | None = None,
    offsets: dict[TopicPartitionKey, int] | None = None,
    delete_internal: bool = False,
    admin: AdminClient | None = None,
) -> ResetPlan:
    """What a reset of the app does; changes nothing.

    Raises:
        GroupActiveError: the app's consumer group has members.
        BrokerError: Kafka cannot be reached.
    """
    admin = admin or AdminClient(settings.client_config())
    group = settings.app_id
    require_stopped(admin, group, "reset the app")
    try:
        meta = admin.list_topics(timeout=15)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.brokers!r}: {exc}") from exc
    existing = {name: len(t.partitions) for name, t in meta.topics.items() if not t.error}
    partitions = source_partitions(topology, existing)
    result = ResetPlan(group, delete_internal=delete_internal)
    new = target_offsets(
        admin, partitions, spec, timestamp_ms=timestamp_ms, offsets=offsets, notes=result.notes
    )
    current = committed_offsets(admin, group, partitions)
    result.offsets = [
        OffsetChange(t, p, current.get((t, p)), new[(t, p)]) for t, p in partitions if (t, p) in new
    ]
    if delete_internal:
        result.topics = internal_topics(settings, topology, existing, admin)
        result.redis = redis_urls(settings)
        if settings.state.startswith("memory://"):
            result.notes.append(
                "state is memory://: it lives in the worker processes, nothing to delete"
            )
    elif topology.store_names():
        result.notes.append(
            f"the app has stores ({', '.join(topology.store_names())}): their tasks resume "
            "where their state's stamp says, so only sub-topologies without stores "
            "reprocess from the new offsets; pass --delete-internal to rebuild the state"
        )
    return result


def render_plan(plan: ResetPlan) -> str:
    lines = [f"reset of app {plan.app_id} (consumer group {plan.app_id}, no members):"]
    lines.append("committed offsets of the source topics:")
    for change in plan.offsets:
        current = "-" if change.current is None else str(change.current)
        lines.append(f"  {change.topic}[{change.partition}]: {current} -> {change.new}")
    if plan.delete_internal:
        lines.append("internal topics to delete:")
        lines += [f"  {name}" for name in plan.topics] or ["  (none exist)"]
        lines.append("Redis state to delete (every key matching ks:{" + plan.app_id + ":*):")
        lines += [f"  {redact(url)}" for url in plan.redis] or ["  (no Redis configured)"]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------ applying it


def apply_reset(
    settings: Settings,
    plan: ResetPlan,
    *,
    progress: Progress = lambda _: None,
    admin: AdminClient | None = None,
) -> dict[str, int]:
    """Carry out ``plan``: the offsets, then (``delete_internal``) the topics
    and the Redis keys. Returns the keys deleted per Redis (redacted URL).

    Raises:
        GroupActiveError: a worker joined the group since the plan was made.
        BrokerError: Kafka refused a change.
        StateError: a Redis server failed.
    """
    admin = admin or AdminClient(settings.client_config())
    require_stopped(admin, plan.app_id, "reset the app")
    if plan.offsets:
        set_offsets(admin, plan.app_id, {(c.topic, c.partition): c.new for c in plan.offsets})
        progress(f"reset {len(plan.offsets)} committed offsets")
    deleted: dict[str, int] = {}
    if not plan.delete_internal:
        return deleted
    if plan.topics:
        delete_topics(admin, plan.topics)
        progress(f"deleted {len(plan.topics)} internal topics")
    for url in plan.redis:
        deleted[redact(url)] = delete_app_keys(url, plan.app_id, progress=progress)
    return deleted


def set_offsets(admin: AdminClient, group: str, offsets: dict[TopicPartitionKey, int]) -> None:
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    )
    try:
        result = admin.alter_consumer_group_offsets([request], request_timeout=30)[group].result()
    except KafkaException as exc:
        raise BrokerError(f"cannot set the committed offsets of group {group!r}: {exc}") from exc
    failed = [
        f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in result.topic_partitions if tp.error
    ]
    if failed:
        raise BrokerError(f"cannot set committed offsets: {'; '.join(failed[:5])}")


def delete_topics(
    admin: AdminClient, names: list[str], *, wait_s: float = TOPIC_DELETION_WAIT_S
) -> None:
    """Delete topics and wait until they are gone from the metadata (a topic
    being deleted cannot be created again yet)."""
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.name() == "UNKNOWN_TOPIC_OR_PART":
                continue
            raise BrokerError(f"cannot delete topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + wait_s
    while True:
        try:
            present = set(admin.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise BrokerError(f"cannot list topics: {exc}") from exc
        left = sorted(set(names) & present)
        if not left:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not deleted after {wait_s:.0f}s: {', '.join(left)}")
        time.sleep(0.2)


def scan_app_keys(client: redis.Redis, app_id: str) -> Iterator[list[bytes]]:
    """Batches of the Redis keys of ``app_id``'s stores (SCAN, never KEYS)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=redis_pattern(app_id), count=UNLINK_BATCH):
        batch.append(key)
        if len(batch) >= UNLINK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def count_app_keys(url: str, app_id: str) -> int:
    """How many Redis keys of the app's stores ``url`` holds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=30)
    try:
        return sum(len(batch) for batch in scan_app_keys(client, app_id))
    except redis.RedisError as exc:
        raise StateError(f"cannot scan Redis at {redact(url)}: {exc}") from exc
    finally:
        client.close()


def delete_app_keys(url: str, app_id: str, *, progress: Progress = lambda _: None) -> int:
    """Delete every Redis key of the app's stores at ``url`` (SCAN and UNLINK in
    batches: the server frees big hashes in the background); returns how many."""
    client = redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=30)
    where = redact(url)
    deleted = 0
    ticker = Ticker()
    try:
        for batch in scan_app_keys(client, app_id):
            deleted += int(client.unlink(*batch))
            if ticker.due():
                progress(f"{where}: deleted {deleted} keys so far")
    except redis.RedisError as exc:
        raise StateError(f"cannot delete the app's keys at {where}: {exc}") from exc
    finally:
        client.close()
    progress(f"{where}: deleted {deleted} keys")
    return deleted
