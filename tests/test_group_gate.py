"""The group gate: the workers one scaling step starts join the group together,
and those one step stops leave it together.

Real supervisor, real processes; the workers are stand-ins that only use the gate
(the real worker's use of it is covered by the scale tests in test_migrations).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from keyshift.app import group_gate, supervisor
from keyshift.app.group_gate import GroupGate
from keyshift.app.supervisor import Slot, Supervisor

pytestmark = pytest.mark.unit

# A stand-in worker: becomes ready after DELAY seconds (or exits with 3 first if
# DELAY < 0), passes the gate and writes the time it did so. Asked to commit
# ahead of a join, it "commits" for LEAVE_DELAY seconds and writes when it was
# done. On SIGTERM it "commits" for LEAVE_DELAY seconds, waits to leave, writes
# when it may, makes its last "commit" (LAST_COMMIT seconds), waits for the others'
# last commits, writes when it leaves, exits.
STAND_IN = """
import signal, sys, time
from pathlib import Path
from keyshift.app.group_gate import CheckpointWatch, GroupGate
gate, instance = GroupGate(Path(sys.argv[1])), sys.argv[2]
delay, out, leave_delay = float(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5])
last_commit = float(sys.argv[6])
if delay < 0:
    sys.exit(3)
time.sleep(delay)
opened = gate.wait(instance, timeout_s=30)
stopping = []  # from here on, SIGTERM means: commit, then leave with the others
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
out.write_text(f"{time.time()} {opened}")
watch = CheckpointWatch(gate.checkpoints, instance)
deadline = time.monotonic() + 60
while not stopping and time.monotonic() < deadline:
    request = watch.new_request()
    if request is not None:
        time.sleep(leave_delay)
        Path(f"{out}.checkpoint").write_text(f"{time.time()} True")
        gate.checkpoints.done(request, instance)
    time.sleep(0.01)
time.sleep(leave_delay)
Path(f"{out}.leaving").write_text(f"{time.time()} True")
allowed = gate.wait_to_leave(instance, timeout_s=30)
Path(f"{out}.left").write_text(f"{time.time()} {allowed}")
time.sleep(last_commit)
together = gate.leave_together(instance, timeout_s=30)
Path(f"{out}.together").write_text(f"{time.time()} {together}")
"""


def test_wait_returns_once_the_gate_opens(tmp_path: Path) -> None:
    gate = GroupGate(tmp_path / "gate")
    timer = threading.Timer(0.2, gate.open)
    timer.start()
    assert gate.wait("w0", timeout_s=30) is True
    assert gate.is_ready("w0") and gate.is_open()
    timer.join()


def test_wait_gives_up_after_its_timeout_or_when_stopped(tmp_path: Path) -> None:
    gate = GroupGate(tmp_path / "gate")
    assert gate.wait("w0", timeout_s=0.05) is False
    assert gate.is_ready("w0")
    stopped = threading.Event()
    threading.Timer(0.1, stopped.set).start()
    assert gate.wait("w1", timeout_s=30, stopped=stopped.is_set) is False
    assert not gate.is_open()
    gate.remove(["w0", "w1"])
    assert list(tmp_path.iterdir()) == []
    gate.let_leave("w0")
    gate.remove(["w0"])
    assert list(tmp_path.iterdir()) != []  # leaving files stay until the worker exits
    gate.forget("w0")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path / "home"))
    supervisor.gate_dir("gated").mkdir(parents=True)
    return tmp_path


def _supervisor(home: Path, delays: dict[int, float],
                leave_delays: dict[int, float] | None = None,
                last_commits: dict[int, float] | None = None) -> Supervisor:
    sup = Supervisor("m:app", "gated", len(delays), [], [], echo=False)

    def command(slot: Slot, gate: GroupGate | None = None) -> list[str]:
        assert gate is not None
        leave = (leave_delays or {}).get(slot.index, 0.0)
        last = (last_commits or {}).get(slot.index, 0.0)
        return [sys.executable, "-c", STAND_IN, str(gate.path), slot.instance_id,
                str(delays[slot.index]), str(home / f"passed-{slot.index}"), str(leave),
                str(last)]

    sup._command = command  # type: ignore[method-assign]
    return sup


def _passed(home: Path, index: int, what: str = "passed-{}") -> tuple[float, bool]:
    path = home / what.format(index)
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"worker {index} never passed the gate"
        time.sleep(0.02)
    when, opened = path.read_text().split()
    return float(when), opened == "True"


def test_workers_started_together_pass_the_gate_after_the_slowest_is_ready(home: Path) -> None:
    delays = {0: 0.0, 1: 0.8, 2: 1.6}
    sup = _supervisor(home, delays)
    try:
        sup._reconcile()
        gate = GroupGate(supervisor.gate_dir("gated") / "gate-1")
        slowest_ready = gate.ready_file("gated-2").stat().st_mtime
        passes = [_passed(home, i) for i in delays]
        assert all(opened for _, opened in passes)
        # Nobody joined before the last of them was ready.
        assert min(when for when, _ in passes) >= slowest_ready
    finally:
        sup._terminate(list(sup.slots.values()))


def test_a_worker_that_exits_before_it_is_ready_does_not_hold_the_gate(home: Path) -> None:
    sup = _supervisor(home, {0: 0.0, 1: -1.0})
    try:
        sup._reconcile()
        assert _passed(home, 0)[1] is True
        assert sup.slots[1].proc is not None and sup.slots[1].proc.wait(10) == 3
    finally:
        sup._terminate(list(sup.slots.values()))


def test_a_gate_that_nobody_reports_to_opens_after_its_timeout(home: Path) -> None:
    sup = _supervisor(home, {0: 600.0})
    gate = GroupGate(supervisor.gate_dir("gated") / "gate-x")
    slot = Slot(0, "gated-0", None)
    sup.slots[0] = slot
    try:
        sup._start(slot, gate)
        sup._open_gate(gate, [slot], timeout_s=0.3)
        assert gate.is_open()
        assert not gate.is_ready("gated-0")
        assert slot.proc is not None and slot.proc.poll() is None
    finally:
        sup._terminate([slot])


@pytest.mark.usefixtures("home")
def test_old_gates_are_deleted_once_nobody_can_wait_at_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = Supervisor("m:app", "gated", 0, [], [], echo=False)
    first = GroupGate(supervisor.gate_dir("gated") / "gate-1")
    first.ready_file("gated-0").touch()
    sup._open_gate(first, [Slot(0, "gated-0", None)])
    clock = [time.monotonic() + 2 * group_gate.GATE_TIMEOUT_S + 1]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])
    second = GroupGate(supervisor.gate_dir("gated") / "gate-2")
    sup._open_gate(second, [])
    assert not first.is_open() and not first.is_ready("gated-0")
    assert second.is_open()


def test_wait_to_leave_returns_once_let_leave_or_after_its_timeout(tmp_path: Path) -> None:
    gate = GroupGate(tmp_path / "gate")
    assert gate.wait_to_leave("w0", timeout_s=0.05) is False
    assert gate.is_leaving("w0")
    threading.Timer(0.1, gate.let_leave, args=("w1",)).start()
    assert gate.wait_to_leave("w1", timeout_s=30) is True
    gate.forget("w0")
    gate.forget("w1")
    assert list(tmp_path.iterdir()) == []


def test_workers_stopped_together_leave_after_the_slowest_has_committed(home: Path) -> None:
    delays = {0: 0.0, 1: 0.0, 2: 0.0}
    sup = _supervisor(home, delays, leave_delays={0: 0.0, 1: 0.5, 2: 1.2},
                      last_commits={0: 0.0, 1: 0.3, 2: 0.6})
    sup._reconcile()
    for i in delays:
        _passed(home, i)
    gate = GroupGate(supervisor.gate_dir("gated") / "gate-1")
    sup._terminate(list(sup.slots.values()))
    may = [_passed(home, i, "passed-{}.left") for i in delays]
    went = [_passed(home, i, "passed-{}.together") for i in delays]
    assert all(allowed for _, allowed in may) and all(together for _, together in went)
    assert all(s.proc is not None and s.proc.returncode == 0 for s in sup.slots.values())
    # Nobody was let go before the slowest was ready to leave.
    slowest_ready = max(_passed(home, i, "passed-{}.leaving")[0] for i in delays)
    assert min(when for when, _ in may) >= slowest_ready
    # Nobody left before the slowest last commit (0.6 s from when worker 2 could
    # go) was made: all left at about the same moment.
    assert min(when for when, _ in went) >= may[2][0] + 0.6
    assert max(when for when, _ in went) - min(when for when, _ in went) < 0.3
    assert list(gate.path.parent.glob("gate-1.*")) == []  # exited: files gone


def test_leave_together_waits_for_the_others_or_their_exit_at_most_its_timeout(
    tmp_path: Path,
) -> None:
    gate = GroupGate(tmp_path / "gate")
    for instance in ("w0", "w1", "w2"):
        gate.report_leaving(instance)
    gate.let_leave("w0", [gate.last_commit_file("w1"), gate.last_commit_file("w2")])
    assert gate.leave_together("w0", timeout_s=0.05) is False  # neither has committed
    threading.Timer(0.1, gate.leave_together, args=("w1",), kwargs={"timeout_s": 0}).start()
    threading.Timer(0.2, gate.forget, args=("w2",)).start()  # w2 exited meanwhile
    gate.let_leave("w1")  # (w1 leaves with nobody)
    began = time.monotonic()
    assert gate.leave_together("w0", timeout_s=30) is True
    assert 0.15 < time.monotonic() - began < 5
    assert gate.last_commit_file("w0").exists()


def test_a_gate_whose_files_cannot_be_written_lets_the_worker_go_on_alone(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    gate = GroupGate(blocker / "gate")  # its directory cannot be created
    assert gate.wait("w0", timeout_s=30) is False
    assert gate.wait_to_leave("w0", timeout_s=30) is False


def test_running_workers_commit_before_the_workers_of_a_new_step_join(home: Path) -> None:
    delays = {0: 0.0, 1: 0.0, 2: 0.3}
    sup = _supervisor(home, delays, leave_delays={0: 0.8, 1: 0.0, 2: 0.0})
    sup.wanted = 1
    try:
        sup._reconcile()
        _passed(home, 0)
        assert not (home / "passed-0.checkpoint").exists()  # nobody ran before it
        sup.wanted = 3
        sup._reconcile()
        committed, _ = _passed(home, 0, "passed-{}.checkpoint")
        joined = [_passed(home, i) for i in (1, 2)]
        assert all(opened for _, opened in joined)
        # The new workers joined only after the running one had committed.
        assert min(when for when, _ in joined) >= committed
        # The answers are deleted once read; the request stays for later workers.
        assert sorted(p.name for p in supervisor.gate_dir("gated").glob("checkpoint*")) == [
            "checkpoint"]
    finally:
        sup._terminate(list(sup.slots.values()))


def test_the_workers_that_stay_commit_before_the_stopped_ones_leave(home: Path) -> None:
    delays = {0: 0.0, 1: 0.0}
    sup = _supervisor(home, delays, leave_delays={0: 0.8, 1: 0.0})
    try:
        sup._reconcile()
        for i in delays:
            _passed(home, i)
        sup.wanted = 1
        sup._reconcile()  # stops worker 1
        committed, _ = _passed(home, 0, "passed-{}.checkpoint")
        left, allowed = _passed(home, 1, "passed-{}.left")
        assert allowed
        # Worker 1 left only after worker 0, which takes over its partitions, had
        # committed (so it is not in the middle of a commit when they arrive).
        assert left >= committed
    finally:
        sup._terminate([s for s in sup.slots.values() if not s.retired])
