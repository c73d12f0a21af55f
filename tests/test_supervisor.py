"""The supervisor's stop path with a worker that does not stop (real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keyshift.orchestration import supervisor
from keyshift.orchestration.supervisor import Slot, Supervisor

pytestmark = pytest.mark.unit

STUCK = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
def stuck_in_close():
    time.sleep(600)
stuck_in_close()
"""


def test_a_worker_that_does_not_stop_dumps_its_stacks_then_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 1.0)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    slot = Slot(index=0, instance_id="w0", state=None, proc=proc)
    Supervisor._terminate(object.__new__(Supervisor), [slot])
    assert proc.returncode == -signal.SIGKILL
    text = log.read_text()
    assert "most recent call first" in text, text
    assert "stuck_in_close" in text, text
