"""In-process metrics of a worker."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field


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

    def snapshot(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dead_letters": self.dead_letters,
            "dead_letters_dropped": self.dead_letters_dropped,
            "fenced_tasks": self.fenced_tasks,
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
