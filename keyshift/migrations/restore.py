"""Bring one store partition of a newly assigned task to this instance.

Steps: look up where the state lives, plan a strategy, claim (fence) the
local partition, move the state (handoff / stop-and-copy / progressive /
replay), apply the changelog tail beyond the moved stamp, publish the new
location. The result is a :class:`~keyshift.state.table.Table` ready for
processing and a :class:`MigrationEvent` describing what happened. The
restores of one assignment (:meth:`Restorer.open_all`) run up to the tail side
by side, and apply their tails one after another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Consumer

from keyshift.config import Settings
from keyshift.errors import StateError
from keyshift.migrations.events import MigrationEvent, now_ms
from keyshift.migrations.locations import Location, LocationsView, split_aside
from keyshift.migrations.planner import Plan, plan, replay_plan
from keyshift.migrations.replay import replay_changelog
from keyshift.migrations.transfer import ProgressiveCopy, stop_and_copy
from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.factory import open_store
from keyshift.state.table import DEFAULT_MAX_RECORD_BYTES, Table
from keyshift.urls import redact

log = logging.getLogger("keyshift.migrations.restore")

#: A migration source that answered a ping this recently is not pinged again.
ANSWERED_RECENTLY_S = 1.0
#: How many restores of one assignment run their first steps (up to and
#: including the move of the state) at once.
RESTORE_THREADS = 4


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


@dataclass
class _Moved:
    """A restore up to its changelog tail: planned, claimed, its state moved."""

    store: str
    partition: int
    local: StorePartition
    decision: Plan
    epoch: int
    stamp: Stamp | None
    copy: ProgressiveCopy | None
    event: MigrationEvent
    clock: _Clock


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
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        sources: Callable[[str], Store] | None = None,
    ) -> None:
        self.settings = settings
        self.max_record_bytes = max_record_bytes
        # Opens another instance's state (a migration source) by its URL.
        self._open_source = sources or (lambda url: open_store(url, timeout_s=5.0))
        self.local = local
        self.locations = locations
        self.restore_consumer = restore_consumer
        self.instance = instance
        self.changelog_topic = changelog_topic
        # ``memory://`` without a name is private to this worker: never "the same
        # place" as another's. A named ``memory://name`` store is that name's.
        self.local_url = (
            f"memory://{instance}" if settings.state == "memory://" else redact(settings.state)
        )
        self._peers = {redact(u): u for u in (*settings.peers, settings.state)}
        self._sources: dict[str, Store] = {}
        self._sources_lock = threading.Lock()  # restores of one assignment share them
        self._answered: dict[str, float] = {}  # URL -> when it last answered a ping
        #: Tasks whose aside copy in the local Redis no chain reads any more.
        self._stale_asides: list[tuple[str, int]] = []

    # -- source resolution --------------------------------------------------------
    def resolve(self, url: str) -> str | None:
        """A connectable URL for a published (secret-free) one: this instance's own
        state URL or one of ``peers``, with their credentials. Any other server a
        location names is never connected to (the state is replayed from the
        changelog instead): the locations topic is not trusted to pick servers."""
        return self._peers.get(url)

    def _source(self, url: str) -> Store:
        with self._sources_lock:
            store = self._sources.get(url)
            if store is None:
                store = self._open_source(url)
                self._sources[url] = store
            return store

    def _partition(
        self, url: str, store: str, partition: int, move_tag: str | None = None
    ) -> StorePartition:
        """A source partition by chain URL (``#aside``: that Redis's aside copy).

        ``move_tag`` names the location a chained copy plans from. A live link
        whose data was set aside under that tag (its instance began this same
        move and died before publishing the location naming its aside copy) is
        read from the aside copy, where its keys are now.
        """
        base, aside = split_aside(url)
        source = self._source(base)
        app = self.settings.app_id
        if not aside and move_tag is not None:
            set_aside = source.partition(app, store, partition, aside=True)
            if set_aside.aside_tag() == move_tag:
                log.info(
                    "chain link was set aside for this move; reading its aside copy",
                    extra={"url": redact(base), "task": f"{store}[{partition}]"},
                )
                return set_aside
        return source.partition(app, store, partition, aside=aside)

    def _a_source_lost_it(
        self, decision: Plan, location: Location, store: str, partition: int, move_tag: str
    ) -> bool:
        """Whether a link of the planned copy no longer holds the state that
        ``location`` describes.

        Whoever published the location claimed every link of its copy with the
        location's epoch (the owner claimed its own partition with it), so a
        link holds that state only while its owner epoch is exactly that one:
        0 means its Redis restarted empty or was flushed; another epoch means
        someone claimed it since (its own worker back on an emptied Redis, or a
        restore that may have cleared it). Copying or resuming from such a link
        would count its missing keys from zero; replaying the changelog is
        always right. Two links are trusted by their tag instead: an aside copy
        made for this very move (its maker checked the data before moving it
        aside), and the local data this restore is about to set aside, which is
        judged by its epoch before it moves.
        """
        assert decision.source_url is not None
        links = [(decision.source_url, None), *((url, move_tag) for url in decision.origin_urls)]
        for url, tag in links:
            base, aside = split_aside(url)
            if aside and decision.set_aside and redact(base) == self.local_url:
                if self._partition(url, store, partition).aside_tag() == move_tag:
                    continue  # made for this move by an earlier try of this restore
                part = self._partition(base, store, partition)
            else:
                part = self._partition(url, store, partition, tag)
                if tag is not None and part.aside_tag() == tag:
                    continue  # its instance set it aside for this move
            held = part.owner_epoch()
            if held != location.epoch:
                log.warning(
                    "a copy source no longer holds the state; replaying the changelog",
                    extra={
                        "url": redact(url),
                        "task": f"{store}[{partition}]",
                        "owner_epoch": held,
                        "location_epoch": location.epoch,
                    },
                )
                return True
        return False

    def warm_up(self) -> int:
        """Connect ahead of time to the Redis servers the first restores will
        likely read (every URL in the locations view but this instance's own),
        and create the changelog consumer: a first connection costs tens of
        milliseconds on a busy machine, and would otherwise come out of a moved
        partition's pause. Unreachable servers are skipped (the planner deals
        with them). Returns how many servers answered."""
        self.restore_consumer()
        urls = {
            split_aside(u)[0]
            for loc in self.locations.all()
            for u in (loc.url, loc.source, *loc.origins)
            if u is not None
        }
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
        (the ping is a round trip in every restore's pause). A server lost since
        then fails the restore's first command instead, and with it the worker;
        its restart plans again."""
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
    def open(
        self, store: str, partition: int, *, end: int | None = None, assigned_ms: int | None = None
    ) -> Restored:
        """Restore ``store[partition]``; ``end``: its changelog end offset, if known;
        ``assigned_ms``: when the task was assigned (default: now)."""
        return self._complete(self._move(store, partition, assigned_ms), end)

    def open_all(
        self, wanted: Sequence[tuple[str, int, int | None]], *, assigned_ms: int | None = None
    ) -> Generator[Restored, None, None]:
        """Restore several store partitions (``(store, partition, end)`` each), and
        yield each as soon as it is ready, in the order given.

        Their first steps (plan, claim, move: round trips to Redis servers, and
        for stop-and-copy the copy itself) run in up to ``RESTORE_THREADS``
        threads at once; their changelog tails, which share one consumer, are
        applied one after another in this thread. Close the iterator (e.g. with
        :func:`contextlib.closing`) when not reading it to the end: that waits
        for the restores under way and cancels those not started.
        """
        if len(wanted) <= 1:
            for store, partition, end in wanted:
                yield self.open(store, partition, end=end, assigned_ms=assigned_ms)
            return
        pool = ThreadPoolExecutor(
            max_workers=min(RESTORE_THREADS, len(wanted)), thread_name_prefix="keyshift-restore"
        )
        try:
            moving = [
                pool.submit(self._move, store, partition, assigned_ms)
                for store, partition, _ in wanted
            ]
            for future, (_, _, end) in zip(moving, wanted, strict=True):
                yield self._complete(future.result(), end)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _move(self, store: str, partition: int, assigned_ms: int | None) -> _Moved:
        """Plan, claim the local partition (fencing older owners), and move the
        state here (or, for progressive, begin to). Safe to run in several
        threads at once for different store partitions."""
        assigned = now_ms() if assigned_ms is None else assigned_ms
        clock = _Clock()
        app = self.settings.app_id
        location = self.locations.get(store, partition)
        decision: Plan = plan(
            location, self.local_url, self.settings.migration, self.resolve, self.reachable
        )
        move_tag = None if location is None else f"{location.instance}@{location.epoch}"
        if (
            location is not None
            and move_tag is not None
            and decision.source_url is not None
            and self._a_source_lost_it(decision, location, store, partition, move_tag)
        ):
            decision = replay_plan("a source of the copy no longer holds the state")
        clock.lap("plan")
        local = self.local.partition(app, store, partition)
        epoch = local.claim(self.instance, 0 if location is None else location.epoch + 1)
        if decision.clear_local:
            local.clear_data()
        if not decision.set_aside and not self._reads_local_aside(decision):
            self._stale_asides.append((store, partition))
        if decision.set_aside:
            # Tagged by the move (the location it starts from): a retry of this
            # restore after a crash keeps the aside copy instead of emptying it,
            # and another instance planning from the same location reads it.
            local.set_aside(move_tag or "")
        clock.lap("claim")
        event = MigrationEvent(
            app=app,
            store=store,
            partition=partition,
            strategy=decision.strategy,
            reason=decision.reason,
            from_instance=None if location is None else location.instance,
            from_url=None if location is None else location.url,
            to_instance=self.instance,
            to_url=self.local_url,
            assigned_ms=assigned,
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
            origins = [
                self._partition(url, store, partition, move_tag) for url in decision.origin_urls
            ]
            copy, stamp = ProgressiveCopy.begin(
                source,
                local,
                epoch,
                self.instance,
                resume=decision.resume,
                what=what,
                origins=origins,
            )
        else:
            stamp = local.read_stamp()
        if stamp is not None:
            event.previous_record_ms = stamp.ts_ms
        clock.lap("move")
        return _Moved(store, partition, local, decision, epoch, stamp, copy, event, clock)

    def _complete(self, moved: _Moved, end: int | None) -> Restored:
        """Apply the changelog tail beyond the moved stamp and publish the location."""
        store, partition, local, epoch = moved.store, moved.partition, moved.local, moved.epoch
        decision, event, copy, clock = moved.decision, moved.event, moved.copy, moved.clock
        clock.lap("wait")  # for the restores before it in the same assignment
        result = replay_changelog(
            self.restore_consumer(),
            self.changelog_topic(store),
            partition,
            local,
            moved.stamp,
            epoch,
            end=end,
            read_committed=self.settings.exactly_once,
        )
        event.tail_records = result.records
        if copy is not None and result.deleted:
            # Deleted in the tail: delete at the sources too, or the on-demand
            # fetch and the background copy would bring the old values back.
            copy.forget(sorted(result.deleted))
        clock.lap("tail")
        if result.stamp is not None:
            event.previous_record_ms = max(event.previous_record_ms, result.stamp.ts_ms)
        table = Table(
            local,
            max_entries=self.settings.cache_max_entries,
            max_record_bytes=self.max_record_bytes,
        )
        table.adopt(result.stamp, epoch)
        table.source = copy
        if result.orphans:
            # Changelog records no marker covers: write those keys again with
            # their restored values, so no later marker can cover the orphans.
            table.recommit(result.orphans)
        self.locations.publish(
            Location(
                store,
                partition,
                self.instance,
                self.local_url,
                epoch,
                complete=copy is None,
                source=None
                if copy is None or decision.source_url is None
                else redact(decision.source_url),
                origins=() if copy is None else tuple(redact(u) for u in decision.origin_urls),
            ),
            flush=False,
        )
        if copy is None:
            event.finish()
        log.info(
            "task state ready",
            extra={
                "task": f"{store}[{partition}]",
                "strategy": decision.strategy,
                "reason": decision.reason,
                "tail_records": result.records,
                **clock.laps,
            },
        )
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
        self.locations.publish(
            Location(store, partition, self.instance, self.local_url, restored.table.epoch)
        )

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
