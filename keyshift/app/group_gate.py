"""Instances started together join the group together; stopped together, leave together.

**Joining.** Instances started by one scaling step would otherwise join one by
one, as each finishes starting up (seconds apart on a busy machine). Every join
is then a rebalance of its own: the old owners revoke in waves, and a
partition may move twice (old owner -> first new member -> second new member).
The supervisor hands each worker it starts in one step the same gate. A worker
gets ready (clients, state store, locations read), reports it, and subscribes
only once the gate opens. The supervisor opens it when every worker of the step
has reported ready, or has exited, or after :data:`GATE_TIMEOUT_S`.

**Leaving.** Instances stopped by one step would otherwise leave one by one,
as each finishes its last batch and commit. A partition of the first to leave
may then be given to another that is itself about to leave, and moves twice.
A stopping worker commits, reports that it is ready to leave, and leaves the
group once the supervisor says so: when every worker stopped in that step is
ready (or has exited), or after :data:`LEAVE_TIMEOUT_S`.

A stopping worker goes on processing while it waits, and commits once more
before it leaves: the records it processes meanwhile are not held up. Then it
waits for the others' last commits (:meth:`GroupGate.leave_together`, at most
:data:`LAST_COMMIT_TIMEOUT_S`), so that all leave the group at once.

**Committing ahead of a rebalance.** A join takes partitions from the running
workers, and each commits the changes of those tasks since its last commit
before it lets them go: that commit is part of every moved partition's pause,
and so is a regular commit it may be in the middle of. Likewise a worker that
takes over a leaving worker's partitions does so only between its batches and
commits. Before opening a join gate, and before letting stopped workers leave,
the supervisor asks the running workers (those that stay) to commit at once
(:class:`Checkpoints`); the rebalance then finds them with a fraction of a
second of changes to commit and no regular commit under way (the next is an
interval away).

The gate is a few files next to the supervisor's run file: ``<gate>`` once
open, and per worker ``<gate>.<instance>.ready`` (ready to join),
``.leaving`` (ready to leave), ``.leave`` (may leave now; it lists the others
to leave with) and ``.committed`` (last commit made). A worker whose supervisor
is gone goes on alone after the timeout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("keyshift.group_gate")

#: Longest a worker waits at a gate to join (and a supervisor for its workers to be ready).
GATE_TIMEOUT_S = 60.0
#: Longest a stopping worker, committed, waits for the others stopping with it.
LEAVE_TIMEOUT_S = 5.0
#: Longest a stopping worker, after its last commit, waits for the others' last commits.
LAST_COMMIT_TIMEOUT_S = 1.0
#: Longest the supervisor waits for the running workers to commit ahead of a rebalance.
CHECKPOINT_TIMEOUT_S = 5.0
#: How often both sides look at the gate's files.
POLL_S = 0.005


def _touch(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("cannot write a group gate file; going on alone",
                    extra={"path": str(path), "error": str(exc)})
        return False
    return True


def _wait_for(path: Path, timeout_s: float, stopped: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if stopped() or time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


@dataclass(frozen=True)
class GroupGate:
    """One scaling step's gate: ``path`` exists once it is open for joining."""

    path: Path

    def _file(self, instance: str, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{instance}.{suffix}")

    def ready_file(self, instance: str) -> Path:
        return self._file(instance, "ready")

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
        """Report ``instance`` ready to join, then wait for the gate to open.

        Returns True once it opened; False after ``timeout_s``, as soon as
        ``stopped()`` is true, or at once if the gate's files cannot be written
        (the caller then joins anyway, or stops).
        """
        if not _touch(self.ready_file(instance)):
            return False
        return _wait_for(self.path, timeout_s, stopped)

    # -- leaving -------------------------------------------------------------
    def is_leaving(self, instance: str) -> bool:
        return self._file(instance, "leaving").exists()

    def let_leave(self, instance: str, together: Iterable[Path] = ()) -> None:
        """Let ``instance`` leave once it has made its last commit and the others
        stopped in the same step (``together``: their :meth:`last_commit_file`)
        have made theirs, so that all leave the group at the same moment."""
        leave = self._file(instance, "leave")
        staged = leave.with_name(leave.name + ".tmp")
        staged.write_text("".join(f"{path}\n" for path in together))
        staged.replace(leave)  # readers see the whole list or no file

    def last_commit_file(self, instance: str) -> Path:
        return self._file(instance, "committed")

    def leave_together(self, instance: str, *,
                       timeout_s: float = LAST_COMMIT_TIMEOUT_S) -> bool:
        """Report ``instance``'s last commit made, then wait until the others it
        may leave with have made theirs, or have exited (True), or ``timeout_s``
        passed (False).

        Each worker's last commit takes its own time (50 to 160 ms apart in one
        benchmark step); one leaving the group earlier than another that is
        about to leave may have a partition given to that other, which then
        moves twice."""
        if not _touch(self.last_commit_file(instance)):
            return False
        try:
            listed = self._file(instance, "leave").read_text().split()
        except OSError:
            return False
        others = [Path(p) for p in listed]
        deadline = time.monotonic() + timeout_s
        # An exited worker's files are deleted (forget): its "leaving" file is gone.
        while not all(p.exists() or not p.with_suffix(".leaving").exists() for p in others):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def report_leaving(self, instance: str) -> bool:
        """Report ``instance`` ready to leave (False if the file cannot be written)."""
        return _touch(self._file(instance, "leaving"))

    def may_leave(self, instance: str) -> bool:
        return self._file(instance, "leave").exists()

    def wait_to_leave(self, instance: str, *, timeout_s: float = LEAVE_TIMEOUT_S) -> bool:
        """Report ``instance`` ready to leave, then wait until it may (True) or
        ``timeout_s`` passed or the gate's files cannot be written (False)."""
        if not self.report_leaving(instance):
            return False
        return _wait_for(self._file(instance, "leave"), timeout_s, lambda: False)

    @property
    def checkpoints(self) -> Checkpoints:
        """The supervisor's commit requests (they live next to its gates)."""
        return Checkpoints(self.path.parent)

    def forget(self, instance: str) -> None:
        """Delete ``instance``'s files (it has exited)."""
        for suffix in ("ready", "leaving", "leave", "committed"):
            self._file(instance, suffix).unlink(missing_ok=True)

    def remove(self, instances: Iterable[str]) -> None:
        """Delete the gate's joining files (once no worker can still be waiting to
        join); a worker's leaving files go when it has exited (:meth:`forget`)."""
        for instance in instances:
            self.ready_file(instance).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoints:
    """The supervisor's requests to its running workers: commit now (a join or a
    leave follows).

    ``<dir>/checkpoint`` holds the number of the latest request, then the
    instances asked, one per line (not the ones being stopped: a stopping worker
    may see the request before its stop signal); a worker that has committed
    for request ``n`` creates ``<dir>/checkpoint-<n>.<instance>``.
    """

    dir: Path

    @property
    def request_file(self) -> Path:
        return self.dir / "checkpoint"

    def request(self, instances: Iterable[str]) -> int:
        """Ask ``instances`` to commit; returns the request's number."""
        number = self.latest() + 1
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self.dir / "checkpoint.tmp"
        temporary.write_text("\n".join([str(number), *instances]))
        os.replace(temporary, self.request_file)  # workers never read half a request
        return number

    def read(self) -> tuple[int, frozenset[str]]:
        """The latest request: its number (0 if none) and the instances asked."""
        try:
            number, *instances = self.request_file.read_text().split("\n")
            return int(number), frozenset(instances)
        except (OSError, ValueError):
            return 0, frozenset()

    def latest(self) -> int:
        return self.read()[0]

    def _done_file(self, number: int, instance: str) -> Path:
        return self.dir / f"checkpoint-{number}.{instance}"

    def done(self, number: int, instance: str) -> None:
        _touch(self._done_file(number, instance))

    def is_done(self, number: int, instance: str) -> bool:
        return self._done_file(number, instance).exists()

    def forget(self, number: int, instances: Iterable[str]) -> None:
        for instance in instances:
            self._done_file(number, instance).unlink(missing_ok=True)


class CheckpointWatch:
    """A worker's watch for new commit requests to ``instance``: one ``stat()`` per look."""

    def __init__(self, checkpoints: Checkpoints, instance: str) -> None:
        self.checkpoints = checkpoints
        self.instance = instance
        self._mtime = self._stat()
        self._seen = checkpoints.latest()  # requests from before this worker ran are moot

    def _stat(self) -> int:
        try:
            return os.stat(self.checkpoints.request_file).st_mtime_ns
        except OSError:
            return 0

    def new_request(self) -> int | None:
        """The number of a request to this instance made since the last look, if any."""
        mtime = self._stat()
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        latest, instances = self.checkpoints.read()
        if latest <= self._seen:
            return None
        self._seen = latest
        return latest if self.instance in instances else None
