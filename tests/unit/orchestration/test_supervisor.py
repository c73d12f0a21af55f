"""The supervisor's stop path with a worker that does not stop (real processes)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import orjson
import pytest

from fakes import wait_for
from keyshift.orchestration import supervisor
from keyshift.orchestration.supervisor import Slot, Supervisor

pytestmark = pytest.mark.unit

#: A worker stuck in its close: it ignores SIGTERM, and records each signal it
#: gets (with the functions on its stack when it got it) as a JSON line.
STUCK = """
import json, signal, sys, time, traceback
record = sys.argv[1]
def note(name, frame):
    stack = [f.name for f in traceback.extract_stack(frame)]
    with open(record, "a") as out:
        out.write(json.dumps({"signal": name, "stack": stack}) + "\\n")
signal.signal(signal.SIGTERM, lambda n, f: note("SIGTERM", f))
signal.signal(signal.SIGUSR1, lambda n, f: note("SIGUSR1", f))
def stuck_in_close():
    with open(record, "a") as out:
        out.write(json.dumps({"ready": True}) + "\\n")
    while True:
        time.sleep(600)
stuck_in_close()
"""


class _Stuck(Supervisor):
    """Its workers are stuck ones, recording what they get in ``record``."""

    def __init__(self, record: Path) -> None:
        super().__init__("examples.wc:app", "wc", 1, [], [], echo=False)
        self.record = record

    def command(self, slot: Slot) -> list[str]:
        return [sys.executable, "-c", STUCK, str(self.record)]


def lines(record: Path) -> list[dict[str, object]]:
    """The records written so far (a line still being written is left out)."""
    if not record.exists():
        return []
    return [
        orjson.loads(line)
        for line in record.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]


def test_a_worker_that_does_not_stop_dumps_its_stacks_then_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 1.0)
    record = tmp_path / "signals.jsonl"
    sup = _Stuck(record)
    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        assert wait_for(lambda: {"ready": True} in lines(record), 30), "the worker did not start"
    finally:
        sup.stop()  # the public stop path: SIGTERM, the grace, SIGUSR1, then SIGKILL
        runner.join(30)
    assert not runner.is_alive()
    (slot,) = sup.slots.values()
    assert slot.proc is not None and slot.proc.returncode == -signal.SIGKILL
    got = [line for line in lines(record) if "signal" in line]
    # Asked to stop first; past the grace, asked for its stacks (a worker dumps
    # them on SIGUSR1), where it hung; then killed.
    assert [line["signal"] for line in got] == ["SIGTERM", "SIGUSR1"], got
    stack = got[1]["stack"]
    assert isinstance(stack, list) and "stuck_in_close" in stack, got
