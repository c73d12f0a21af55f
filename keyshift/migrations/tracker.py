"""One owner for every migration of a worker, from plan to event.

The :class:`MigrationTracker` asks the :class:`~keyshift.migrations.restore.Restorer`
to bring newly assigned tasks' state here (plan, claim, move, changelog tail,
location), keeps each migration while it is in flight, hears from the worker
when the moved task receives and processes its first records, steps progressive
copies in the worker's idle turns, and emits each migration's event once it is
finished and its pause is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence

from keyshift.migrations.events import EventLog, now_ms
from keyshift.migrations.restore import Restored, Restorer

log = logging.getLogger("keyshift.migrations")

TaskKey = tuple[str, int]

#: Longest stretch a background copy works before processing gets its turn.
COPY_TURN_S = 0.02
#: Background copies wait until every newly assigned task has processed its first
#: record (the end of its pause), or this long after its assignment.
RESUME_FIRST_S = 1.0


class MigrationTracker:
    """In-flight migrations of one worker, by task (topic, partition).

    Args:
        restorer: plans and runs restores.
        events: where finished migrations are published.
        copy_share: the most of the worker's time background copies may take.
    """

    def __init__(self, restorer: Restorer, events: EventLog, *, copy_share: float = 1.0) -> None:
        self.restorer = restorer
        self.events = events
        self.copy_share = copy_share
        self._moving: dict[TaskKey, list[Restored]] = {}
        #: Whether some progressive copy still has keys to copy.
        self.copying = False
        #: Monotonic time the next background-copy turn may start.
        self.next_copy_turn = 0.0

    def __bool__(self) -> bool:
        return bool(self._moving)

    def __contains__(self, key: object) -> bool:
        return key in self._moving

    # -- restoring -------------------------------------------------------------------
    def restore(
        self, wanted: Sequence[tuple[str, int, int | None]], *, assigned_ms: int
    ) -> Generator[Restored, None, None]:
        """Restore ``(store, partition, changelog end)`` each, yielding each as it is
        ready (see :meth:`Restorer.open_all`); close the generator when not reading
        it to the end."""
        return self.restorer.open_all(wanted, assigned_ms=assigned_ms)

    def started(self, key: TaskKey, restored: list[Restored]) -> None:
        """The task ``key`` runs over these restored tables from now on."""
        if restored:
            self._moving[key] = restored

    def publish(self) -> None:
        """Make the locations of this assignment's restores durable."""
        self.restorer.flush()

    def warm_up(self) -> int:
        return self.restorer.warm_up()

    # -- the moved tasks' first records ----------------------------------------------
    def received(self, keys: Sequence[TaskKey], when_ms: int) -> None:
        for key in keys:
            for item in self._moving.get(key, ()):
                item.event.record_received(when_ms)

    def processed_first(self, key: TaskKey) -> None:
        items = self._moving.get(key)
        if items:
            when = now_ms()
            for item in items:
                item.event.record_first(when)

    def resuming(self) -> bool:
        """Some newly assigned task has not processed a record yet (and was
        assigned less than ``RESUME_FIRST_S`` ago)."""
        oldest = now_ms() - RESUME_FIRST_S * 1000
        return any(
            item.event.first_record_ms is None and item.event.assigned_ms > oldest
            for items in self._moving.values()
            for item in items
        )

    # -- background copies and events ---------------------------------------------------
    def tick(self, *, copy: bool) -> None:
        """Emit finished migrations and, if ``copy``, give background copies a turn.

        A copy turn lasts at most ``COPY_TURN_S``; the next one comes after enough
        time that copying takes at most ``copy_share`` of this worker's time.
        """
        started = time.monotonic()
        deadline = started + COPY_TURN_S
        copying = False
        for (_, partition), items in list(self._moving.items()):
            for item in items:
                task_copy = item.copy
                while (
                    copy
                    and task_copy is not None
                    and not task_copy.done
                    and time.monotonic() < deadline
                ):
                    if task_copy.step():
                        self.restorer.copy_finished(item.event.store, partition, item)
                copying = copying or (task_copy is not None and not task_copy.done)
                if item.event.ready():
                    self.events.emit(item.event)
        self._moving = {
            key: items
            for key, items in self._moving.items()
            if not all(i.event.emitted for i in items)
        }
        self.copying = copying
        if copy:
            ended = time.monotonic()
            share = self.copy_share
            self.next_copy_turn = ended + (ended - started) * (1 - share) / share

    def dropped(self, key: TaskKey) -> None:
        """The task left this worker: emit its finished migrations, forget the rest."""
        for item in self._moving.pop(key, []):
            event = item.event
            if not event.emitted and event.duration_ms is not None:
                self.events.emit(event)

    def close(self) -> None:
        self.restorer.close()
        self.events.close()
