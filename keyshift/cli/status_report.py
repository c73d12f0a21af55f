"""What `keyshift status` reports: group members, lag, where state lives, recent migrations."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from keyshift.config import Settings
from keyshift.errors import BrokerError
from keyshift.operators.topology import Topology
from keyshift.orchestration.placement import connectable, latest_locations
from keyshift.runtime.kafka import read_topic
from keyshift.state.base import Store
from keyshift.state.factory import open_store


@dataclass
class AppStatus:
    app: str
    state: str
    members: list[dict[str, Any]] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    locations: list[dict[str, Any]] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    #: Location records left out because they break the schema.
    skipped_locations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "group_state": self.state,
            "members": self.members,
            "lag": self.lag,
            "state": self.locations,
            "last_migrations": self.migrations,
            "skipped_locations": self.skipped_locations,
        }


def _open(url: str) -> Store:
    return open_store(url, timeout_s=2.0)


def summarize_locations(
    records: Iterable[tuple[bytes | None, bytes | None]],
    settings: Settings,
    *,
    open_store: Callable[[str], Store] = _open,
) -> tuple[list[dict[str, Any]], int]:
    """One entry per task from the locations topic's ``(key, value)`` records, sorted
    by task, and how many records were malformed.

    Key and size counts are read only from a configured Redis
    (:func:`connectable`); a Redis URL that is not configured gets
    ``note = "not a configured peer"``, a failed read ``error``.
    """
    latest, skipped = latest_locations(records)
    stores: dict[str, Store] = {}
    entries: list[dict[str, Any]] = []
    try:
        for loc in latest.values():
            entry: dict[str, Any] = {
                "task": f"{loc.store}[{loc.partition}]",
                "instance": loc.instance,
                "url": loc.url,
                "epoch": loc.epoch,
                "complete": loc.complete,
            }
            url = connectable(loc.url, settings)
            if url is not None:
                try:
                    store = stores.get(url)
                    if store is None:
                        store = stores[url] = open_store(url)
                    part = store.partition(settings.app_id, loc.store, loc.partition)
                    entry.update(part.usage())
                except Exception as exc:  # noqa: BLE001 - status is best effort per task
                    entry["error"] = str(exc)
            elif not loc.url.startswith("memory://"):
                entry["note"] = "not a configured peer"
            entries.append(entry)
    finally:
        for store in stores.values():
            store.close()
    entries.sort(key=lambda e: str(e["task"]))
    return entries, skipped


def parse_events(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The migration events among the events topic's record values, in order; a
    value that is not a JSON object, or is another kind of event (an autoscale
    decision), is skipped."""
    events = []
    for value in values:
        if not value:
            continue
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("kind", "migration") == "migration":
            events.append(event)
    return events


def collect(settings: Settings, topology: Topology, *, migrations: int = 10) -> AppStatus:
    admin = AdminClient(settings.client_config())
    try:
        group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(15)
    except KafkaException as exc:
        raise BrokerError(f"cannot describe group {settings.app_id!r}: {exc}") from exc
    status = AppStatus(settings.app_id, str(group.state).rsplit(".", 1)[-1])
    for member in group.members:
        parts = member.assignment.topic_partitions if member.assignment else []
        status.members.append(
            {
                "instance": member.group_instance_id or member.client_id,
                "host": member.host,
                "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in parts),
            }
        )
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(settings.app_id)])[
        settings.app_id
    ].result(15)
    probe = Consumer({**settings.client_config(), "group.id": f"{settings.app_id}-status"})
    try:
        for tp in committed.topic_partitions:
            _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), 10)
            if tp.offset >= 0:
                status.lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - tp.offset)
    finally:
        probe.close()
    status.locations, status.skipped_locations = summarize_locations(
        (
            (m.key(), m.value())
            for m in read_topic(settings.client_config(), topology.locations_topic)
        ),
        settings,
    )
    events = parse_events(
        m.value() for m in read_topic(settings.client_config(), topology.events_topic)
    )
    status.migrations = events[-migrations:]
    return status


def render(status: AppStatus) -> str:
    """Human-readable status."""
    lines = [f"app {status.app}: consumer group {status.state}, {len(status.members)} members"]
    for member in status.members:
        lines.append(
            f"  {member['instance']} ({member['host']}): {', '.join(member['partitions']) or '-'}"
        )
    lines.append(f"lag: {sum(status.lag.values())} records in total")
    for tp, lag in sorted(status.lag.items()):
        lines.append(f"  {tp}: {lag}")
    lines.append("state:")
    for loc in status.locations:
        size = f" keys={loc['keys']} bytes={loc['bytes']}" if "keys" in loc else ""
        note = "" if loc["complete"] else " (copy in progress)"
        if "note" in loc:
            note += f" ({loc['note']})"
        lines.append(
            f"  {loc['task']}: {loc['instance']} {loc['url']} epoch={loc['epoch']}{size}{note}"
        )
    if status.skipped_locations:
        lines.append(f"  skipped {status.skipped_locations} malformed location records")
    lines.append("last migrations:")
    for event in status.migrations:
        # Published by workers, but read from a topic anyone may write: any
        # field may be missing.
        lines.append(
            f"  {event.get('task')}: {event.get('from_instance')} -> "
            f"{event.get('to_instance')} {event.get('strategy')} keys={event.get('keys')} "
            f"pause_ms={event.get('pause_ms')} duration_ms={event.get('duration_ms')} "
            f"tail={event.get('tail_records')}"
        )
    return "\n".join(lines)
