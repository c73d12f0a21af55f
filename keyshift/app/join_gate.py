"""Instances started together join the consumer group together.

Instances started by one scaling step would otherwise join one by one, as each
finishes starting up (seconds apart on a busy machine). Every join is then a
rebalance of its own: the old owners revoke in waves, and a partition may move
twice (old owner -> first new member -> second new member). The supervisor
hands each worker it starts in one step the same gate. A worker gets ready
(clients, state store, locations read), reports it, and subscribes only once
the gate opens. The supervisor opens it when every worker of the step has
reported ready, or has exited, or after :data:`GATE_TIMEOUT_S`.

The gate is a few files next to the supervisor's run file: ``<gate>.<instance>.ready``
per worker, and ``<gate>`` itself once open. A worker whose supervisor is gone
joins anyway after :data:`GATE_TIMEOUT_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Longest a worker waits at a gate (and a supervisor for its workers to be ready).
GATE_TIMEOUT_S = 60.0
#: How often both sides look at the gate's files.
POLL_S = 0.005


@dataclass(frozen=True)
class JoinGate:
    """One scaling step's gate: ``path`` exists once the gate is open."""

    path: Path

    def ready_file(self, instance: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{instance}.ready")

    def report_ready(self, instance: str) -> None:
        self.ready_file(instance).touch()

    def is_ready(self, instance: str) -> bool:
        return self.ready_file(instance).exists()

    def is_open(self) -> bool:
        return self.path.exists()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def wait(
        self,
        instance: str,
        *,
        timeout_s: float = GATE_TIMEOUT_S,
        stopped: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Report ``instance`` ready, then wait for the gate to open.

        Returns True once it opened; False after ``timeout_s`` or as soon as
        ``stopped()`` is true (the caller then joins anyway, or stops).
        """
        self.report_ready(instance)
        deadline = time.monotonic() + timeout_s
        while not self.is_open():
            if stopped() or time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def remove(self, instances: Iterable[str]) -> None:
        """Delete the gate's files (once no worker can still be waiting at it)."""
        for instance in instances:
            self.ready_file(instance).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
