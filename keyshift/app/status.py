"""What an application is doing: group members, lag, where state lives, recent migrations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from keyshift.config import Settings
from keyshift.errors import BrokerError
from keyshift.migrations.locations import Location
from keyshift.operators.topology import Topology
from keyshift.state.redis.store import RedisStore, partition_keys, redact


@dataclass
class AppStatus:
    app: str
    state: str
    members: list[dict[str, Any]] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    locations: list[dict[str, Any]] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app, "group_state": self.state, "members": self.members,
            "lag": self.lag, "state": self.locations, "last_migrations": self.migrations,
        }


def _read_all(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer({
        **settings.client_config(),
        "group.id": f"{settings.app_id}-status-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
    })
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        pending = set(meta.partitions)
        out = []
        idle = 0
        while pending and idle < 20:
            msgs = consumer.consume(1000, 0.25)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def collect(settings: Settings, topology: Topology, *, migrations: int = 10) -> AppStatus:
    admin = AdminClient(settings.client_config())
    try:
        group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(15)
    except KafkaException as exc:
        raise BrokerError(f"cannot describe group {settings.app_id!r}: {exc}") from exc
    status = AppStatus(settings.app_id, str(group.state).rsplit(".", 1)[-1])
    for member in group.members:
        parts = member.assignment.topic_partitions if member.assignment else []
        status.members.append({
            "instance": member.group_instance_id or member.client_id,
            "host": member.host,
            "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in parts),
        })
    committed = admin.list_consumer_group_offsets(
        [_group_request(settings.app_id)])[settings.app_id].result(15)
    probe = Consumer({**settings.client_config(), "group.id": f"{settings.app_id}-status"})
    try:
        for tp in committed.topic_partitions:
            _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), 10)
            if tp.offset >= 0:
                status.lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - tp.offset)
    finally:
        probe.close()
    stores: dict[str, RedisStore] = {}
    peers = {redact(u): u for u in (*settings.peers, settings.state)}
    for key, value in _read_all(settings, topology.locations_topic):
        if key is None or value is None:
            continue
        loc = Location.decode(value)
        entry: dict[str, Any] = {"task": f"{loc.store}[{loc.partition}]", "instance": loc.instance,
                                 "url": loc.url, "epoch": loc.epoch, "complete": loc.complete}
        url = peers.get(loc.url) or (None if "***" in loc.url else loc.url)
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            try:
                store = stores.setdefault(url, RedisStore(url, timeout_s=2.0))
                data_key, _ = partition_keys(settings.app_id, loc.store, loc.partition)
                entry.update(store.usage(data_key))
            except Exception as exc:  # noqa: BLE001 - status is best effort per task
                entry["error"] = str(exc)
        status.locations.append(entry)
    for store in stores.values():
        store.close()
    status.locations.sort(key=lambda e: str(e["task"]))
    events = [orjson.loads(v) for _, v in _read_all(settings, topology.events_topic) if v]
    status.migrations = events[-migrations:]
    return status


def _group_request(group: str) -> Any:
    from confluent_kafka import ConsumerGroupTopicPartitions

    return ConsumerGroupTopicPartitions(group)


def render(status: AppStatus) -> str:
    """Human-readable status."""
    lines = [f"app {status.app}: consumer group {status.state}, {len(status.members)} members"]
    for member in status.members:
        lines.append(f"  {member['instance']} ({member['host']}): "
                     f"{', '.join(member['partitions']) or '-'}")
    lines.append(f"lag: {sum(status.lag.values())} records in total")
    for tp, lag in sorted(status.lag.items()):
        lines.append(f"  {tp}: {lag}")
    lines.append("state:")
    for loc in status.locations:
        size = f" keys={loc['keys']} bytes={loc['bytes']}" if "keys" in loc else ""
        note = "" if loc["complete"] else " (copy in progress)"
        lines.append(f"  {loc['task']}: {loc['instance']} {loc['url']} "
                     f"epoch={loc['epoch']}{size}{note}")
    lines.append("last migrations:")
    for event in status.migrations:
        lines.append(
            f"  {event['task']}: {event['from_instance']} -> {event['to_instance']} "
            f"{event['strategy']} keys={event['keys']} pause_ms={event['pause_ms']} "
            f"duration_ms={event['duration_ms']} tail={event['tail_records']}"
        )
    return "\n".join(lines)
