"""PID files and processes: liveness, ownership, detached children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import wait_for
from keyshift.procs import (
    child_pids,
    is_ours,
    owned_pid,
    process_alive,
    read_pid,
    spawn_detached,
    stop_pids,
    write_pid,
)

pytestmark = pytest.mark.unit


def test_pid_file_round_trip(tmp_path: Path) -> None:
    pid_file = tmp_path / "sub" / "x.pid"
    assert read_pid(pid_file) is None
    write_pid(pid_file, 1234)
    assert read_pid(pid_file) == 1234
    for garbage in ("", "abc", "-5", "0", "12 34"):
        pid_file.write_text(garbage)
        assert read_pid(pid_file) is None


def test_owned_pid_checks_liveness_and_command_line(tmp_path: Path) -> None:
    pid_file = tmp_path / "me.pid"
    write_pid(pid_file, os.getpid())
    assert owned_pid(pid_file, [sys.executable]) == os.getpid()
    assert owned_pid(pid_file, [sys.executable, "kafka.Kafka"]) is None

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_pid(pid_file, dead.pid)
    assert not process_alive(dead.pid)
    assert owned_pid(pid_file, [sys.executable]) is None


def test_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not yet waited for: a zombie.
        assert wait_for(lambda: not process_alive(child.pid), 5)
        assert child.pid in child_pids(os.getpid())
    finally:
        child.wait()


def test_spawn_detached_is_not_our_child_and_stops(tmp_path: Path) -> None:
    log_file = tmp_path / "sleep.log"
    pid = spawn_detached(["sleep", "300"], log_file, cwd=tmp_path)
    try:
        assert is_ours(pid, ["sleep", "300"])
        assert pid not in child_pids(os.getpid())
        assert os.getsid(pid) != os.getsid(0)
    finally:
        assert stop_pids([pid], timeout=10) == []
    assert not process_alive(pid)


def test_spawn_detached_writes_output_to_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "echo.log"
    pid = spawn_detached(["sh", "-c", "echo hello; echo oops >&2"], log_file, cwd=tmp_path)
    assert wait_for(lambda: not process_alive(pid), 10)
    stop_pids([pid], timeout=5)
    assert log_file.read_text().split() == ["hello", "oops"]
