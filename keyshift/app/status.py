"""What an application is doing: group members, lag, where state lives, recent migrations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from keyshift.app.kafka import read_topic
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
        [ConsumerGroupTopicPartitions(settings.app_id)])[settings.app_id].result(15)
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
    latest: dict[bytes, Location] = {}
    for msg in read_topic(settings.client_config(), topology.locations_topic):
        if msg.key() is not None and msg.value() is not None:
            latest[msg.key()] = Location.decode(msg.value())  # compacted: last one wins
    for loc in latest.values():
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
    events = [orjson.loads(m.value())
              for m in read_topic(settings.client_config(), topology.events_topic) if m.value()]
    status.migrations = events[-migrations:]
    return status


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
