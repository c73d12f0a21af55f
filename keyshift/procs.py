"""Process helpers: PID files, /proc checks, detached spawn, stop (sandbox and supervisor).

A process counts as *ours* only when its PID file names a live process whose
command line contains the expected markers (so a recycled PID or someone
else's broker is never signalled). Nothing is ever found or killed by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from keyshift.errors import SandboxError

log = logging.getLogger("keyshift.procs")

_PROC = Path("/proc")

# `sh` starts the command in the background with output to the log and prints its
# PID; `sh` then exits, so the service is not a child of the caller (no zombie,
# no ResourceWarning, no leaked child in tests) and lives in its own session.
_SPAWN_SCRIPT = 'log=$1; shift; "$@" </dev/null >"$log" 2>&1 & echo $!'


def read_pid(path: Path) -> int | None:
    """The PID stored in ``path``, or None if the file is missing or garbled."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid(path: Path, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str] | None:
    """Command line of ``pid`` split into words, or None if it is gone."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").split()


def is_ours(pid: int, markers: Sequence[str]) -> bool:
    """True if ``pid`` is alive and its command line holds every marker word."""
    if not process_alive(pid):
        return False
    words = cmdline(pid)
    return words is not None and all(marker in words for marker in markers)


def owned_pid(pid_file: Path, markers: Sequence[str]) -> int | None:
    """The PID from ``pid_file`` if that process is alive and ours, else None."""
    pid = read_pid(pid_file)
    if pid is None or not is_ours(pid, markers):
        return None
    return pid


def spawn_detached(
    cmd: Sequence[str], log_file: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start ``cmd`` detached (new session, not our child), output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", _SPAWN_SCRIPT, "sh", str(log_file), *cmd],
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"could not start {cmd[0]}: {exc}") from exc
    out = done.stdout.strip()
    if done.returncode != 0 or not out.isdigit():
        raise SandboxError(f"could not start {cmd[0]}: {done.stderr.strip() or out}")
    pid = int(out)
    # Until the forked shell has exec'd the command, /proc shows the shell's command
    # line; wait for the exec so callers can recognise the process as theirs.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        words = cmdline(pid)
        if not words or Path(words[0]).name == Path(cmd[0]).name:
            break
        time.sleep(0.01)
    return pid


def stop_pids(pids: Iterable[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM every PID, wait up to ``timeout``, then SIGKILL the rest.

    Returns the PIDs that had to be killed. Callers pass only verified PIDs.
    """
    pending = [pid for pid in pids if process_alive(pid)]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    killed = []
    if not _wait_gone(pending, timeout):
        for pid in pending:
            if process_alive(pid):
                log.warning("process did not stop on SIGTERM, killing pid=%d", pid)
                killed.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pending, 10.0):
            alive = [pid for pid in pending if process_alive(pid)]
            raise SandboxError(f"processes {alive} survived SIGKILL")
    return killed


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def child_pids(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (zombies included), from a /proc scan."""
    children = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(entry.name))
    return sorted(children)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
