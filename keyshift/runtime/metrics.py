"""In-process metrics of a worker (read by the operations endpoint, see
:mod:`keyshift.runtime.ops`, and logged when the worker stops)."""

from __future__ import annotations

import bisect
import gc
import time
from collections import Counter
from dataclasses import dataclass, field

#: Histogram bucket upper bounds, in seconds: commits take milliseconds; pauses
#: and migrations from milliseconds (handoff) to minutes (a long replay).
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MIGRATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class Histogram:
    """Counts of observations per bucket (upper bounds ``bounds``, then +Inf), and
    their sum: what a Prometheus histogram exposes, without a lock (one writer)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class Metrics:
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    dead_letters_dropped: int = 0  # refused even by the dead-letter topic
    fenced_tasks: int = 0
    duplicates_dropped: int = 0
    commits: int = 0
    aborted_transactions: int = 0
    flushed_keys: int = 0
    processing_seconds: float = 0.0
    commit_seconds: float = 0.0
    commit_max_seconds: float = 0.0
    # Where commits spend their time: "produce" (changelog records and markers),
    # "flush" (waiting for the broker), "write" (Redis), "offsets" (group offsets).
    commit_phases: dict[str, float] = field(default_factory=dict)
    restores: int = 0
    restored_records: int = 0
    gc_seconds: float = 0.0  # in the garbage collector (while tracking, see GcClock)
    gc_max_seconds: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    state_keys: dict[str, int] = field(default_factory=dict)
    #: Per topic: records taken from each source, produced to each sink, and
    #: dead-lettered by the source they came from.
    records_in_by_topic: Counter[str] = field(default_factory=Counter)
    #: Records taken per task (``topic[partition]``), kept after the task leaves.
    records_in_by_task: Counter[str] = field(default_factory=Counter)
    records_out_by_topic: Counter[str] = field(default_factory=Counter)
    dead_letters_by_topic: Counter[str] = field(default_factory=Counter)
    commit_durations: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    #: By migration strategy: the pause of a moved task (the previous owner's
    #: last record to the new owner's first) and the migration's duration.
    migration_pauses: dict[str, Histogram] = field(default_factory=dict)
    migration_durations: dict[str, Histogram] = field(default_factory=dict)
    #: Assignments received (a member gets one per rebalance it takes part in).
    rebalances: int = 0
    #: Times this worker left and joined the group again because the group
    #: coordinator's revocation never reached it (see ``runtime.lost_revocation``).
    rejoins: int = 0
    #: Whether an assignment's state is being restored now (the loop waits).
    restoring: bool = False
    #: Monotonic time the processing loop last turned (0: not yet).
    last_turn: float = 0.0

    def observe_migration(
        self, strategy: str, pause_ms: int | None, duration_ms: int | None
    ) -> None:
        if pause_ms is not None:
            self.migration_pauses.setdefault(strategy, Histogram(MIGRATION_BUCKETS)).observe(
                pause_ms / 1000
            )
        if duration_ms is not None:
            self.migration_durations.setdefault(strategy, Histogram(MIGRATION_BUCKETS)).observe(
                duration_ms / 1000
            )

    def snapshot(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dead_letters": self.dead_letters,
            "dead_letters_dropped": self.dead_letters_dropped,
            "fenced_tasks": self.fenced_tasks,
            "rejoins": self.rejoins,
            "duplicates_dropped": self.duplicates_dropped,
            "commits": self.commits,
            "aborted_transactions": self.aborted_transactions,
            "flushed_keys": self.flushed_keys,
            "processing_seconds": round(self.processing_seconds, 3),
            "commit_seconds": round(self.commit_seconds, 3),
            "commit_max_seconds": round(self.commit_max_seconds, 3),
            "commit_phases": {k: round(v, 3) for k, v in self.commit_phases.items()},
            "restores": self.restores,
            "restored_records": self.restored_records,
            "gc_seconds": round(self.gc_seconds, 3),
            "gc_max_seconds": round(self.gc_max_seconds, 3),
            "lag": dict(self.lag),
            "state_keys": dict(self.state_keys),
        }

    def add_phase(self, phase: str, seconds: float) -> None:
        self.commit_phases[phase] = self.commit_phases.get(phase, 0.0) + seconds


class GcClock:
    """Adds the time the garbage collector runs to ``metrics`` (between start and stop)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began:
            took = time.perf_counter() - self._began
            self._began = 0.0
            self.metrics.gc_seconds += took
            self.metrics.gc_max_seconds = max(self.metrics.gc_max_seconds, took)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
