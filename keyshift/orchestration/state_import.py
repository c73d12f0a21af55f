"""``keyshift state import``: JSON lines (the format:
:mod:`keyshift.orchestration.state_lines`) into a store, through its changelog.

An import goes through the store's changelog, like a worker's commit: the
records, then one marker per partition covering them (its stamp keeps the
input position and owner epoch of the last marker there). The state appears
when workers next restore those tasks: a restore applies the changelog beyond
the state's stamp, whatever strategy moves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from keyshift.config import Settings
from keyshift.errors import BrokerError, KeyshiftError, StateError
from keyshift.migrations.locations import Location
from keyshift.operators.topology import SubTopology, Topology
from keyshift.orchestration.placement import connectable, latest_locations
from keyshift.orchestration.reset import committed_offsets, require_stopped
from keyshift.orchestration.state_export import store_partitions, store_subtopology
from keyshift.orchestration.state_lines import Entry, LineError, decode_entry
from keyshift.polling import consume_available
from keyshift.progress import Progress, Ticker
from keyshift.retry import DEFAULT_RETRY
from keyshift.runtime.kafka import producer_config, read_topic, reader_config
from keyshift.runtime.topics import TopicManager
from keyshift.state.base import Stamp, Store
from keyshift.state.changelog import MARKER_HEADERS, MARKER_KEY, has_marker_header
from keyshift.state.factory import open_store

#: Records produced between two markers on a partition (a restore applies a
#: marker's records in one write).
IMPORT_BATCH = 10_000
#: How many changelog records an import reads back from the end at first to
#: find the partition's last marker (widened until one is found).
MARKER_WINDOW = 1_000
#: librdkafka's partitioners, which keyshift's producer may be configured with
#: (``kafka.partitioner``): an import can place keys as they do.
PARTITIONERS = (
    "murmur2_random",
    "murmur2",
    "consistent_random",
    "consistent",
    "fnv1a_random",
    "fnv1a",
)


def last_marker(
    settings: Settings, topic: str, partition: int, low: int, high: int
) -> Stamp | None:
    """The stamp of the last marker in ``topic[partition]`` between ``low`` and
    ``high`` (read committed under exactly-once, as a restore reads), or None.

    Compaction keeps a partition's latest marker (markers share one key), and a
    commit ends with its marker, so the last one is near the end: the search
    reads back from the end, widening the window until it finds one.
    """
    if high <= low:
        return None
    consumer = Consumer(
        reader_config(
            settings.client_config(),
            f"{settings.app_id}-import",
            read_committed=settings.exactly_once,
        )
    )
    try:
        window = MARKER_WINDOW
        end = high
        while end > low:
            start = max(low, end - window)
            found = _last_marker_in(consumer, topic, partition, start, end)
            if found is not None:
                return found
            end, window = start, window * 8
        return None
    finally:
        consumer.close()


def _last_marker_in(
    consumer: Consumer, topic: str, partition: int, start: int, end: int
) -> Stamp | None:
    consumer.assign([TopicPartition(topic, partition, start)])
    found: Stamp | None = None
    headers_seen = False
    deadline = time.monotonic() + 60
    try:
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot read {topic}[{partition}] from {start} to {end}")
            done = False
            for msg in consume_available(consumer, 1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise BrokerError(f"reading {topic}[{partition}]: {err}")
                if msg.offset() >= end:
                    done = True
                    continue
                if msg.key() != MARKER_KEY:
                    continue
                headered = has_marker_header(msg.headers())
                if not headered and headers_seen:
                    continue  # the replay's rule: not a marker once headered ones exist
                try:
                    found = Stamp.decode(msg.value())
                except StateError:
                    continue
                headers_seen = headers_seen or headered
            if done:
                return found
    finally:
        consumer.unassign()


@dataclass
class ImportStats:
    records: int = 0
    deleted: int = 0
    #: Partitions written to (each got at least one marker).
    partitions: set[int] = field(default_factory=set)


@dataclass
class _Base:
    """What an import's markers on one partition say besides their records."""

    input_offset: int
    upstream: dict[int, tuple[int, int]]
    epoch: int


def import_store(
    settings: Settings,
    topology: Topology,
    store: str,
    lines: Iterable[bytes],
    *,
    partitioner: str | None = None,
    progress: Progress = lambda _: None,
    admin: AdminClient | None = None,
    batch: int = IMPORT_BATCH,
    open_state: Callable[[str], Store] = lambda url: open_store(url, timeout_s=30.0),
) -> ImportStats:
    """Produce the entries of ``lines`` (JSON lines) to ``store``'s changelog,
    each followed, per partition and every ``batch`` lines, by a marker.

    A line's partition is its ``partition`` field when given. Otherwise the
    key is placed as the app's own producer places it: for a store behind a
    ``key_by``, with the app's partitioner (``kafka.partitioner``, default
    ``murmur2_random``), exactly as the repartition topic's records are; for a
    store on a source topic, whose producers chose the partitions, only with an
    explicit ``partitioner``.

    Each marker keeps the input offset and upstream positions of the
    partition's last marker (else of the stamp of the state its location
    names, else the group's committed offset or the partition's earliest), so
    the task resumes its input where it would have. Its owner epoch is the
    highest of that marker's, the published location's and that state's
    stamp's: the next restore applies no marker below its state's epoch, and
    its new owner claims above the location's.

    Raises:
        GroupActiveError: the app's consumer group has members.
        LineError: a line breaks the format (its number is in the message).
        KeyshiftError: no such store, the changelog is missing and
            ``create_topics`` is off, a partition is out of range, or the
            next restore would not apply the import (:func:`_check_held`).
        BrokerError: Kafka refused a record.
    """
    admin = admin or AdminClient(settings.client_config())
    require_stopped(admin, settings.app_id, "import state")
    sub = store_subtopology(topology, store)
    count, existing = store_partitions(settings, topology, store, admin)
    topic = topology.changelog_topic(store)
    _ensure_changelog(settings, topology, topic, count, existing, admin)
    if partitioner is None and sub.internal:
        partitioner = str(producer_config(settings, None)["partitioner"])
    if partitioner is not None and partitioner not in PARTITIONERS:
        raise KeyshiftError(
            f"partitioner {partitioner!r} cannot place keys reproducibly; "
            f"use one of {', '.join(PARTITIONERS)}"
        )
    bases = _bases(settings, topology, sub, store, topic, count, admin, open_state)
    config = producer_config(settings, None)
    config["client.id"] = f"{settings.app_id}-import"
    if partitioner is not None:
        config["partitioner"] = partitioner
    producer = Producer(config)
    stats = ImportStats()
    ticker = Ticker()
    pending: list[Entry] = []
    try:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = decode_entry(raw)
            except LineError as exc:
                raise LineError(f"line {number}: {exc}") from None
            if entry.partition is None and partitioner is None:
                raise LineError(
                    f"line {number}: no partition; store {store!r} is updated by the tasks of "
                    f"source topic {sub.topic!r}, whose producers chose each key's partition: "
                    "give every line a 'partition' (export writes it) or pass --partitioner"
                )
            if entry.partition is not None and entry.partition >= count:
                raise LineError(
                    f"line {number}: partition {entry.partition} is beyond the store's "
                    f"{count} partitions"
                )
            pending.append(entry)
            if len(pending) >= batch:
                _produce_batch(producer, topic, pending, bases, stats)
                pending = []
            if ticker.due():
                progress(f"imported {stats.records} records so far")
        if pending:
            _produce_batch(producer, topic, pending, bases, stats)
    finally:
        producer.flush(30)
    return stats


def _ensure_changelog(
    settings: Settings,
    topology: Topology,
    topic: str,
    count: int,
    existing: dict[str, int],
    admin: AdminClient,
) -> None:
    if topic in existing:
        if existing[topic] != count:
            raise KeyshiftError(
                f"changelog {topic!r} has {existing[topic]} partitions, the store {count}"
            )
        return
    if not settings.create_topics:
        raise KeyshiftError(
            f"changelog topic {topic!r} does not exist and create_topics is off; "
            "create the app's topics first (keyshift topics apply MODULE:APP)"
        )
    manager = TopicManager(settings, admin=lambda _: admin)
    spec = manager.plan(topology, existing).spec(topic)
    assert spec is not None  # the plan lists every store's changelog
    manager.create([spec])


def _offsets(
    admin: AdminClient, partitions: list[tuple[str, int]], spec: Any
) -> dict[tuple[str, int], int]:
    if not partitions:
        return {}

    def query() -> dict[tuple[str, int], int]:
        futures = admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in partitions}, request_timeout=15
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    try:
        # Retried: a topic created a moment ago may not have a known leader yet.
        return DEFAULT_RETRY.call(query, "offsets")
    except KafkaException as exc:
        raise BrokerError(f"cannot list offsets: {exc}") from exc


def _bases(
    settings: Settings,
    topology: Topology,
    sub: SubTopology,
    store: str,
    topic: str,
    count: int,
    admin: AdminClient,
    open_state: Callable[[str], Store],
) -> dict[int, _Base]:
    """Per partition, what the import's markers carry besides their records."""
    changelog = [(topic, p) for p in range(count)]
    lows = _offsets(admin, changelog, OffsetSpec.earliest())
    highs = _offsets(admin, changelog, OffsetSpec.latest())
    latest, _ = latest_locations(
        (m.key(), m.value()) for m in read_topic(settings.client_config(), topology.locations_topic)
    )
    inputs = [(sub.topic, p) for p in range(count)]
    committed = committed_offsets(admin, settings.app_id, inputs)
    input_exists = sub.topic in {t for t in admin.list_topics(timeout=15).topics}
    earliest = _offsets(admin, inputs, OffsetSpec.earliest()) if input_exists else {}
    opened: dict[str, Store] = {}
    bases: dict[int, _Base] = {}
    try:
        for p in range(count):
            location = latest.get(f"{store}:{p}".encode())
            published = 0 if location is None else location.epoch
            held = None
            if location is not None:
                held = _held_stamp(settings, location, opened, open_state)
                _check_held(store, p, location, held, highs[(topic, p)])
            marker = last_marker(settings, topic, p, lows[(topic, p)], highs[(topic, p)])
            epoch = max(published, 0 if held is None else held.epoch)
            if marker is not None:
                bases[p] = _Base(
                    marker.input_offset, dict(marker.upstream), max(marker.epoch, epoch)
                )
            elif held is not None:
                bases[p] = _Base(held.input_offset, dict(held.upstream), epoch)
            else:
                start = committed.get((sub.topic, p), earliest.get((sub.topic, p), 0))
                bases[p] = _Base(start, {}, epoch)
    finally:
        for backend in opened.values():
            backend.close()
    return bases


def _held_stamp(
    settings: Settings,
    location: Location,
    opened: dict[str, Store],
    open_state: Callable[[str], Store],
) -> Stamp | None:
    """The stamp of the state the location names, when that Redis is configured
    (``state`` or ``peers``); None otherwise or when it holds none."""
    url = connectable(location.url, settings)
    if url is None:
        return None
    backend = opened.get(url)
    if backend is None:
        backend = opened[url] = open_state(url)
    try:
        return backend.partition(settings.app_id, location.store, location.partition).read_stamp()
    except redis.RedisError as exc:
        raise StateError(
            f"cannot read the stamp of {location.store}[{location.partition}] "
            f"at {location.url}: {exc}"
        ) from exc


def _check_held(store: str, p: int, location: Location, held: Stamp | None, end: int) -> None:
    """Refuse an import that the next restore would not apply.

    The next owner applies the changelog beyond the stamp of the state the
    location names, and only markers whose epoch is not below that stamp's.
    A stamp beyond the changelog's end (the changelog was emptied under the
    state) would skip the import. A stamp whose epoch is more than one above
    the location's comes from restores that never published their location;
    a marker with that epoch could rank above the commits of an owner that
    claims the task elsewhere with the location's epoch plus one, so it is
    not written. Both settle once the app has run.
    """
    if held is None:
        return
    where = f"{store}[{p}] at {location.url}"
    if held.changelog_offset > end:
        raise KeyshiftError(
            f"the state of {where} reflects changelog offset {held.changelog_offset}, beyond "
            f"the changelog's end {end}: reset the app with --delete-internal first"
        )
    if held.epoch > location.epoch + 1:
        raise KeyshiftError(
            f"the state of {where} carries owner epoch {held.epoch}, ahead of its published "
            f"location's {location.epoch}: start the app once so the task settles, stop it, "
            "and import again"
        )


def _produce_batch(
    producer: Producer,
    topic: str,
    entries: list[Entry],
    bases: dict[int, _Base],
    stats: ImportStats,
) -> None:
    """Produce ``entries``, wait for them, then one marker per partition they
    went to, whose ``first_offset`` is the first of them there (records after an
    earlier marker and before it are a cut-short commit's, not this one's)."""
    delivered: dict[int, list[int]] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(f"{msg.partition()}: {err.str()}")
            return
        offset = msg.offset()
        assert offset is not None
        delivered.setdefault(msg.partition() or 0, []).append(offset)

    for entry in entries:
        _produce(producer, topic, entry, on_delivery)
    if producer.flush(60) or errors:
        raise BrokerError(f"cannot write to {topic}: {'; '.join(errors[:5]) or 'timed out'}")
    now = int(time.time() * 1000)
    for p, offsets in sorted(delivered.items()):
        base = bases[p]
        stamp = Stamp(
            input_offset=base.input_offset,
            changelog_offset=max(offsets) + 1,
            upstream=base.upstream,
            epoch=base.epoch,
            ts_ms=now,
            first_offset=min(offsets),
        )
        producer.produce(
            topic,
            stamp.encode(),
            MARKER_KEY,
            partition=p,
            headers=MARKER_HEADERS,
            on_delivery=on_delivery,
        )
    if producer.flush(60) or errors:
        raise BrokerError(
            f"cannot write markers to {topic}: {'; '.join(errors[:5]) or 'timed out'}"
        )
    stats.records += len(entries)
    stats.deleted += sum(1 for e in entries if e.value is None)
    stats.partitions.update(delivered)


def _produce(
    producer: Producer,
    topic: str,
    entry: Entry,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    while True:
        try:
            if entry.partition is None:
                producer.produce(topic, entry.value, entry.key, on_delivery=on_delivery)
            else:
                producer.produce(
                    topic,
                    entry.value,
                    entry.key,
                    partition=entry.partition,
                    on_delivery=on_delivery,
                )
            return
        except BufferError:
            producer.poll(0.1)
