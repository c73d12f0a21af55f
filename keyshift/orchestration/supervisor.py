"""A local supervisor: N worker processes of one app, restarted when they crash.

``keyshift run`` starts it; ``keyshift scale`` changes its instance count live
by writing the wanted count next to the run file and sending SIGHUP. Slot ``i``
runs ``keyshift worker`` with instance id ``<app>-<host>-<i>`` and the
``i``-th state URL when several are given (every one of them is a peer of
every worker). The supervisor only starts and stops processes: the workers
one step starts join the group together, and those one step stops leave it
together, by the same protocol over Kafka that independent containers use
(:mod:`keyshift.runtime.coordinator`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from keyshift.errors import InstanceConflict, KeyshiftError
from keyshift.paths import keyshift_home
from keyshift.procs import is_ours
from keyshift.urls import redact

log = logging.getLogger("keyshift.supervisor")

STOP_GRACE_S = 60.0
STACK_DUMP_WAIT_S = 0.5
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def slot_instance_id(app_id: str, index: int) -> str:
    """Slot ``index``'s instance id: unique per host, so that supervisors of one
    app on several hosts never share one (instance ids name transactional ids,
    and two producers with one id fence each other)."""
    host = (
        "".join(
            c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in socket.gethostname()
        )[:60].strip("-.")
        or "host"
    )
    return f"{app_id}-{host}-{index}"


def run_file(app_id: str) -> Path:
    return keyshift_home() / "run" / f"{app_id}.json"


def scale_file(app_id: str) -> Path:
    return keyshift_home() / "run" / f"{app_id}.scale"


def find_supervisor(app_id: str) -> dict[str, object]:
    """The run record of a live supervisor of ``app_id``; raises if none runs.

    The record's pid counts only while that process is a ``keyshift run`` of
    ``app_id`` (its command line says so): a pid reused by another process after
    the supervisor died is never signalled."""
    path = run_file(app_id)
    try:
        record: dict[str, object] = orjson.loads(path.read_bytes())
        pid = int(str(record["pid"]))
        app_ref = str(record["app_ref"])
    except (FileNotFoundError, KeyError, ValueError, TypeError, orjson.JSONDecodeError):
        pid, app_ref = 0, ""
    if not pid or not is_ours(pid, ["run", app_ref]):
        raise KeyshiftError(
            f"no supervisor of app {app_id!r} is running (no live run file {path}); "
            f"start one with `keyshift run MODULE:APP --instances N`"
        )
    return record


def request_scale(app_id: str, instances: int) -> int:
    """Ask the running supervisor to run ``instances`` workers; returns its pid."""
    record = find_supervisor(app_id)
    pid = int(str(record["pid"]))
    scale_file(app_id).write_text(str(instances))
    os.kill(pid, signal.SIGHUP)
    return pid


@dataclass
class Slot:
    index: int
    instance_id: str
    state: str | None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    retired: bool = False
    history: list[int] = field(default_factory=list)


class Supervisor:
    """Keeps ``instances`` worker processes running."""

    def __init__(
        self,
        app_ref: str,
        app_id: str,
        instances: int,
        states: list[str],
        worker_args: list[str],
        *,
        echo: bool = True,
    ) -> None:
        if instances < 0:
            raise KeyshiftError("--instances must be >= 0")
        if len(states) > 1 and len(states) < instances:
            raise KeyshiftError(
                f"{len(states)} --state URLs for {instances} instances: give one shared URL "
                f"or one per instance"
            )
        self.app_ref = app_ref
        self.app_id = app_id
        self.states = states
        self.worker_args = worker_args
        self.echo = echo
        self.wanted = instances
        self.slots: dict[int, Slot] = {}
        self._stopping = False
        self._rescale = False

    def state_for(self, index: int) -> str | None:
        if not self.states:
            return None
        return self.states[index] if len(self.states) > 1 else self.states[0]

    # -- control ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def rescale(self) -> None:
        self._rescale = True

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    # -- processes ---------------------------------------------------------------
    def command(self, slot: Slot) -> list[str]:
        """The worker's command line (no secrets: see :meth:`environment`)."""
        return [
            sys.executable,
            "-m",
            "keyshift",
            "worker",
            self.app_ref,
            "--instance-id",
            slot.instance_id,
            *self.worker_args,
        ]

    def environment(self, slot: Slot) -> dict[str, str]:
        """The worker's environment: its state URL and, as peers, every slot's
        (migrations copy between them), in variables rather than on the command
        line, where any local user could read their passwords."""
        env = dict(os.environ)
        if slot.state:
            env["KEYSHIFT_STATE"] = slot.state
        if len(self.states) > 1:
            given = [p for p in env.get("KEYSHIFT_PEERS", "").split(",") if p]
            env["KEYSHIFT_PEERS"] = ",".join(dict.fromkeys([*given, *self.states]))
        return env

    def _start(self, slot: Slot) -> None:
        slot.proc = subprocess.Popen(self.command(slot), env=self.environment(slot))
        slot.started_at = time.monotonic()
        slot.history.append(slot.proc.pid)
        where = f" state={redact(slot.state)}" if slot.state else ""
        self._say(f"instance {slot.instance_id} pid={slot.proc.pid}{where}")

    def _terminate(self, slots: list[Slot]) -> None:
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Workers dump every thread's stack on SIGUSR1 (faulthandler, to their
                # log): where a stuck worker hangs is then on record before the kill.
                slot.proc.send_signal(signal.SIGUSR1)
                time.sleep(STACK_DUMP_WAIT_S)
                log.warning(
                    "worker did not stop in time; its stacks are in its log; killing",
                    extra={"pid": slot.proc.pid},
                )
                slot.proc.kill()
                slot.proc.wait()

    def _apply_scale(self) -> None:
        path = scale_file(self.app_id)
        try:
            self.wanted = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        self._say(f"scaling to {self.wanted} instances")

    def _reconcile(self) -> None:
        live = sorted(i for i, s in self.slots.items() if not s.retired)
        for index in range(self.wanted):
            if index not in self.slots or self.slots[index].retired:
                if len(self.states) > 1 and index >= len(self.states):
                    log.error("no --state URL for slot", extra={"slot": index})
                    continue
                slot = Slot(index, slot_instance_id(self.app_id, index), self.state_for(index))
                self.slots[index] = slot
                self._start(slot)
        extra = [self.slots[i] for i in live if i >= self.wanted]
        if extra:
            self._terminate(extra)
            for slot in extra:
                slot.retired = True
                self._say(f"instance {slot.instance_id} stopped (scale-in)")

    def _watch(self) -> None:
        for slot in self.slots.values():
            if slot.retired or slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            if code == InstanceConflict.exit_code:
                # Another process uses this instance id: restarting would only
                # fence it (and be fenced by it) in turn.
                slot.retired = True
                log.error(
                    "worker stopped: its instance id is in use by another process; "
                    "not restarting it",
                    extra={"instance": slot.instance_id},
                )
                self._say(
                    f"instance {slot.instance_id} exited: its instance id is in use "
                    f"elsewhere; not restarted"
                )
                continue
            backoff = RESTART_BACKOFF_S[min(slot.restarts, len(RESTART_BACKOFF_S) - 1)]
            if time.monotonic() - slot.started_at > 30:
                slot.restarts = 0
            slot.restarts += 1
            self._say(f"instance {slot.instance_id} exited with {code}; restarting in {backoff}s")
            time.sleep(backoff)
            if not self._stopping:
                self._start(slot)

    def run(self) -> int:
        path = run_file(self.app_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(path.with_suffix(".lock"), self.app_id)
        try:
            return self._run(path)
        finally:
            lock.close()

    def _run(self, path: Path) -> int:
        staged = path.with_name(path.name + ".tmp")
        staged.write_bytes(
            orjson.dumps(
                {
                    "pid": os.getpid(),
                    "app": self.app_id,
                    "app_ref": self.app_ref,
                    "instances": self.wanted,
                }
            )
        )
        staged.replace(path)  # readers see a whole record or none
        scale_file(self.app_id).unlink(missing_ok=True)
        try:
            self._reconcile()
            while not self._stopping:
                if self._rescale:
                    self._rescale = False
                    self._apply_scale()
                    self._reconcile()
                self._watch()
                time.sleep(0.2)
            self._say("stopping all instances")
            self._terminate([s for s in self.slots.values() if not s.retired])
        finally:
            path.unlink(missing_ok=True)
            scale_file(self.app_id).unlink(missing_ok=True)
        return 0


def _lock(path: Path, app_id: str) -> IO[bytes]:
    """Hold an exclusive lock on ``path`` for as long as the returned file is open;
    one supervisor per app and ``KEYSHIFT_HOME`` (a second one would overwrite
    the first one's files)."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise KeyshiftError(
            f"another `keyshift run` of app {app_id!r} is running on this host (lock "
            f"{path}); stop it, or scale it with `keyshift scale`"
        ) from None
    return handle
