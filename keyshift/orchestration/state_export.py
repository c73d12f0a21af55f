"""``keyshift state export``: a store's keys and values as JSON lines (the
format: :mod:`keyshift.orchestration.state_lines`), read from where each
partition's state lives; and the store facts export and import share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from confluent_kafka.admin import AdminClient

from keyshift.config import Settings
from keyshift.errors import KeyshiftError, StateError
from keyshift.migrations.locations import Location
from keyshift.operators.topology import SubTopology, Topology
from keyshift.orchestration.placement import connectable, latest_locations
from keyshift.orchestration.state_lines import Entry, encode_entry
from keyshift.progress import Progress, Ticker
from keyshift.runtime.kafka import read_topic
from keyshift.runtime.topics import TopicManager
from keyshift.state.base import Store
from keyshift.state.factory import open_store
from keyshift.urls import redact


def store_subtopology(topology: Topology, store: str) -> SubTopology:
    """The sub-topology whose tasks update ``store``.

    Raises:
        KeyshiftError: the app has no such store.
    """
    if store not in topology.store_names():
        known = ", ".join(topology.store_names()) or "none"
        raise KeyshiftError(f"the app has no store {store!r} (its stores: {known})")
    return topology.subtopology_of_store(store)


def store_partitions(
    settings: Settings, topology: Topology, store: str, admin: AdminClient
) -> tuple[int, dict[str, int]]:
    """The store's partition count (its sub-topology's input's), and the
    partition count of every topic that exists."""
    manager = TopicManager(settings, admin=lambda _: admin)
    existing = manager.partition_counts()
    sub = store_subtopology(topology, store)
    counts = manager.plan(topology, existing).counts
    if sub.index not in counts:
        raise KeyshiftError(
            f"cannot tell how many partitions store {store!r} has: a source topic "
            "of the app does not exist"
        )
    return counts[sub.index], existing


@dataclass
class ExportStats:
    keys: int = 0
    #: Per partition, the (redacted) URL read.
    read_from: dict[int, str] = field(default_factory=dict)


def export_store(
    settings: Settings,
    topology: Topology,
    store: str,
    write: Callable[[bytes], object],
    *,
    partition: int | None = None,
    progress: Progress = lambda _: None,
    admin: AdminClient | None = None,
    open_state: Callable[[str], Store] = lambda url: open_store(url, timeout_s=30.0),
) -> ExportStats:
    """Write the JSON lines of ``store`` (every partition, or only ``partition``)
    to ``write``, each ending in a newline.

    Each partition is read from the Redis the locations topic names for it when
    that is this configuration's ``state`` or one of its ``peers``; otherwise
    (no location, or a server not configured) from ``state``. Reading a running
    app's state gives each key's value at the moment it is read, not one
    snapshot.

    Raises:
        KeyshiftError: no such store or partition, or no Redis to read.
    """
    admin = admin or AdminClient(settings.client_config())
    count, _ = store_partitions(settings, topology, store, admin)
    if partition is not None and not 0 <= partition < count:
        raise KeyshiftError(f"store {store!r} has partitions 0-{count - 1}, not {partition}")
    latest, _ = latest_locations(
        (m.key(), m.value()) for m in read_topic(settings.client_config(), topology.locations_topic)
    )
    stores: dict[str, Store] = {}
    stats = ExportStats()
    ticker = Ticker()
    try:
        for p in range(count) if partition is None else [partition]:
            url = _read_url(settings, store, p, latest.get(f"{store}:{p}".encode()), progress)
            backend = stores.get(url)
            if backend is None:
                backend = stores[url] = open_state(url)
            stats.read_from[p] = redact(url)
            part = backend.partition(settings.app_id, store, p)
            try:
                for batch in part.scan(1000):
                    for key, value in batch:
                        write(encode_entry(Entry(key, value, p)) + b"\n")
                    stats.keys += len(batch)
                    if ticker.due():
                        progress(f"exported {stats.keys} keys (at {store}[{p}])")
            except redis.RedisError as exc:
                raise StateError(f"cannot read {store}[{p}] at {redact(url)}: {exc}") from exc
    finally:
        for backend in stores.values():
            backend.close()
    return stats


def _read_url(
    settings: Settings, store: str, p: int, location: Location | None, progress: Progress
) -> str:
    """The Redis to read ``store[p]`` from: its location's when configured, else ``state``."""
    url = None if location is None else connectable(location.url, settings)
    if location is not None and url is None:
        progress(
            f"{store}[{p}]: its location {location.url} is not a configured Redis; "
            "reading this instance's state"
        )
    if location is not None and not location.complete:
        progress(
            f"{store}[{p}]: a progressive copy into {location.url} is under way; "
            "keys not copied yet are missing from the export"
        )
    if url is None and settings.state.startswith(("redis://", "rediss://", "unix://")):
        url = settings.state
    if url is None:
        raise KeyshiftError(
            f"no Redis to read {store}[{p}] from: the state setting is "
            f"{redact(settings.state)} and no location names a configured Redis"
        )
    return url
