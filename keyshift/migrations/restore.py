"""Bring one store partition of a newly assigned task to this instance.

Steps: look up where the state lives, plan a strategy, claim (fence) the
local partition, move the state (handoff / stop-and-copy / progressive /
replay), apply the changelog tail beyond the moved stamp, publish the new
location. The result is a :class:`~keyshift.state.table.Table` ready for
processing and a :class:`MigrationEvent` describing what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer

from keyshift.config import Settings
from keyshift.errors import StateError
from keyshift.migrations.events import MigrationEvent, now_ms
from keyshift.migrations.locations import Location, LocationsView, split_aside
from keyshift.migrations.planner import Plan, plan
from keyshift.migrations.replay import replay_changelog
from keyshift.migrations.transfer import ProgressiveCopy, stop_and_copy
from keyshift.state.base import Store, StorePartition
from keyshift.state.redis.store import RedisStore, redact
from keyshift.state.table import Table

log = logging.getLogger("keyshift.migrations.restore")

#: A migration source that answered a ping this recently is not pinged again.
ANSWERED_RECENTLY_S = 1.0


class _Clock:
    """Milliseconds spent in each step of a restore (for its log line)."""

    def __init__(self) -> None:
        self.laps: dict[str, int] = {}
        self._last = time.monotonic()

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.laps[f"{step}_ms"] = round((now - self._last) * 1000)
        self._last = now


@dataclass
class Restored:
    table: Table
    event: MigrationEvent
    copy: ProgressiveCopy | None


class Restorer:
    """Plans and runs the migration of store partitions to this instance."""

    def __init__(
        self,
        settings: Settings,
        local: Store,
        locations: LocationsView,
        restore_consumer: Callable[[], Consumer],
        instance: str,
        changelog_topic: Callable[[str], str],
    ) -> None:
        self.settings = settings
        self.local = local
        self.locations = locations
        self.restore_consumer = restore_consumer
        self.instance = instance
        self.changelog_topic = changelog_topic
        scheme = settings.state.split("://", 1)[0]
        # memory:// state is private to a process: never "the same place" as another's.
        self.local_url = (
            f"memory://{instance}" if scheme == "memory" else redact(settings.state)
        )
        self._peers = {redact(u): u for u in (*settings.peers, settings.state)}
        self._sources: dict[str, RedisStore] = {}
        self._answered: dict[str, float] = {}  # URL -> when it last answered a ping
        #: Tasks whose aside copy in the local Redis no chain reads any more.
        self._stale_asides: list[tuple[str, int]] = []

    # -- source resolution --------------------------------------------------------
    def resolve(self, url: str) -> str | None:
        """A connectable URL for a published (secret-free) one, from local config only."""
        if url in self._peers:
            return self._peers[url]
        if "***" in url or url.startswith("memory://"):
            return None
        return url

    def _source(self, url: str) -> RedisStore:
        store = self._sources.get(url)
        if store is None:
            store = RedisStore(url, timeout_s=5.0)
            self._sources[url] = store
        return store

    def _partition(self, url: str, store: str, partition: int) -> StorePartition:
        """A source partition by chain URL (``#aside``: that Redis's aside copy)."""
        base, aside = split_aside(url)
        return self._source(base).partition(self.settings.app_id, store, partition, aside=aside)

    def warm_up(self) -> int:
        """Connect ahead of time to the Redis servers the first restores will
        likely read (every URL in the locations view but this instance's own),
        and create the changelog consumer: a first connection costs tens of
        milliseconds on a busy machine, and would otherwise come out of a moved
        partition's pause. Unreachable servers are skipped (the planner deals
        with them). Returns how many servers answered."""
        self.restore_consumer()
        urls = {split_aside(u)[0] for loc in self.locations.all()
                for u in (loc.url, loc.source, *loc.origins) if u is not None}
        answered = 0
        for url in sorted(urls - {self.local_url}):
            resolved = self.resolve(url)
            if resolved is not None and self.reachable(resolved):
                answered += 1
        return answered

    def reachable(self, url: str) -> bool:
        """Whether ``url`` answers a ping; one that answered less than
        ``ANSWERED_RECENTLY_S`` ago (e.g. at :meth:`warm_up`, just ahead of a
        planned rebalance) is taken as reachable without another round trip
        (planning, mostly this ping, took up to 30 ms per source in a benchmark
        scale-in step). A server lost since then fails the restore's first
        command instead, and with it the worker; its restart plans again."""
        now = time.monotonic()
        if now - self._answered.get(url, -ANSWERED_RECENTLY_S) < ANSWERED_RECENTLY_S:
            return True
        try:
            self._source(url).ping()
        except StateError as exc:
            self._answered.pop(url, None)
            log.info("migration source unreachable", extra={"url": redact(url), "error": str(exc)})
            return False
        self._answered[url] = time.monotonic()
        return True

    # -- restore ------------------------------------------------------------------
    def open(self, store: str, partition: int, *, end: int | None = None) -> Restored:
        """Restore ``store[partition]``; ``end``: its changelog end offset, if known."""
        assigned = now_ms()
        clock = _Clock()
        app = self.settings.app_id
        location = self.locations.get(store, partition)
        decision: Plan = plan(location, self.local_url, self.settings.migration,
                              self.resolve, self.reachable)
        clock.lap("plan")
        local = self.local.partition(app, store, partition)
        epoch = local.claim(self.instance, 0 if location is None else location.epoch + 1)
        if decision.clear_local:
            local.clear_data()
        if not decision.set_aside and not self._reads_local_aside(decision):
            self._stale_asides.append((store, partition))
        if decision.set_aside:
            assert location is not None
            # Tagged by the move (the location it starts from): a retry of this
            # restore after a crash keeps the aside copy instead of emptying it.
            local.set_aside(f"{location.instance}@{location.epoch}")
        clock.lap("claim")
        event = MigrationEvent(
            app=app, store=store, partition=partition, strategy=decision.strategy,
            reason=decision.reason,
            from_instance=None if location is None else location.instance,
            from_url=None if location is None else location.url,
            to_instance=self.instance, to_url=self.local_url, assigned_ms=assigned,
        )
        copy: ProgressiveCopy | None = None
        what = f"{store}[{partition}]"
        if decision.strategy == "stop-and-copy":
            assert decision.source_url is not None
            source = self._partition(decision.source_url, store, partition)
            stamp, stats = stop_and_copy(source, local, epoch, self.instance, what=what)
            event.keys, event.bytes = stats.keys, stats.bytes
        elif decision.strategy == "progressive":
            assert decision.source_url is not None
            source = self._partition(decision.source_url, store, partition)
            origins = [self._partition(url, store, partition) for url in decision.origin_urls]
            copy, stamp = ProgressiveCopy.begin(source, local, epoch, self.instance,
                                                resume=decision.resume, what=what, origins=origins)
        else:
            stamp = local.read_stamp()
        if stamp is not None:
            event.previous_record_ms = stamp.ts_ms
        clock.lap("move")
        result = replay_changelog(self.restore_consumer(), self.changelog_topic(store),
                                  partition, local, stamp, epoch, end=end,
                                  read_committed=self.settings.exactly_once)
        event.tail_records = result.records
        clock.lap("tail")
        if result.stamp is not None:
            event.previous_record_ms = max(event.previous_record_ms, result.stamp.ts_ms)
        table = Table(local, max_entries=self.settings.cache_max_entries)
        table.adopt(result.stamp, epoch)
        table.source = copy
        self.locations.publish(Location(
            store, partition, self.instance, self.local_url, epoch,
            complete=copy is None,
            source=None if copy is None or decision.source_url is None
            else redact(decision.source_url),
            origins=() if copy is None else tuple(redact(u) for u in decision.origin_urls),
        ), flush=False)
        if copy is None:
            event.finish()
        log.info("task state ready", extra={"task": what, "strategy": decision.strategy,
                                             "reason": decision.reason,
                                             "tail_records": result.records,
                                             **clock.laps})
        return Restored(table, event, copy)

    def _reads_local_aside(self, decision: Plan) -> bool:
        for url in (decision.source_url, *decision.origin_urls):
            if url is not None:
                base, aside = split_aside(url)
                if aside and redact(base) == self.local_url:
                    return True
        return False

    def flush(self) -> None:
        """Make the locations published by :meth:`open` durable (once per assignment),
        then delete the local aside copies of those tasks that no chain reads any
        more (left by a chain that was abandoned or superseded). Only after the
        flush: until the new locations are durable, a retried restore may still
        plan from the old one, whose chain may read the aside copy."""
        self.locations.flush()
        app = self.settings.app_id
        for store, partition in self._stale_asides:
            self.local.partition(app, store, partition, aside=True).clear()
        self._stale_asides.clear()

    def copy_finished(self, store: str, partition: int, restored: Restored) -> None:
        """Record that a progressive copy completed."""
        assert restored.copy is not None
        restored.event.keys = restored.copy.stats.keys
        restored.event.bytes = restored.copy.stats.bytes
        restored.event.fetched_on_demand = restored.copy.fetched
        restored.event.finish()
        restored.table.source = None
        self.locations.publish(Location(store, partition, self.instance, self.local_url,
                                        restored.table.epoch))

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
