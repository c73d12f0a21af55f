"""The local supervisor's files: a recycled pid is never signalled, one supervisor
per app, and no secret on a worker's command line."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from fakes import wait_for
from keyshift.errors import KeyshiftError
from keyshift.orchestration.supervisor import (
    Slot,
    Supervisor,
    request_scale,
    run_file,
    slot_instance_id,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    return tmp_path


def test_scale_never_signals_a_process_that_is_not_the_apps_supervisor() -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        path = run_file("wc")
        path.parent.mkdir(parents=True)
        path.write_bytes(orjson.dumps({"pid": bystander.pid, "app_ref": "examples.wc:app"}))
        with pytest.raises(KeyshiftError, match="no supervisor of app 'wc' is running"):
            request_scale("wc", 3)
        # Not signalled: it is still running a moment later.
        assert not wait_for(lambda: bystander.poll() is not None, 0.2)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_second_supervisor_of_the_same_app_is_refused() -> None:
    first = Supervisor("examples.wc:app", "wc", 0, [], [], echo=False)
    runner = threading.Thread(target=first.run)
    runner.start()
    try:
        assert wait_for(lambda: run_file("wc").exists(), 10)
        second = Supervisor("examples.wc:app", "wc", 0, [], [], echo=False)
        with pytest.raises(KeyshiftError, match="another `keyshift run` of app 'wc'"):
            second.run()
        assert run_file("wc").exists()  # the first one's files are untouched
    finally:
        first.stop()
        runner.join(10)


def test_state_urls_reach_workers_in_their_environment_not_their_command_line() -> None:
    states = ["redis://:s3cret@h1:6379/0", "redis://:s3cret@h2:6379/0"]
    sup = Supervisor("examples.wc:app", "wc", 2, states, [], echo=False)
    slot = Slot(1, slot_instance_id("wc", 1), sup.state_for(1))
    command = sup.command(slot)
    environment = sup.environment(slot)
    assert not any("s3cret" in arg for arg in command)
    assert environment["KEYSHIFT_STATE"] == states[1]
    assert environment["KEYSHIFT_PEERS"].split(",") == states


def test_slot_instance_ids_are_unique_per_host() -> None:
    assert slot_instance_id("wc", 0) != slot_instance_id("wc", 1)
    assert slot_instance_id("wc", 0).startswith("wc-") and slot_instance_id("wc", 0) != "wc-0"


class _Conflicting(Supervisor):
    """Its workers stop as a worker does whose instance id another process holds."""

    def command(self, slot: Slot) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_a_worker_stopped_by_an_instance_id_conflict_is_not_restarted() -> None:
    sup = _Conflicting("examples.wc:app", "wc", 1, [], [], echo=False)
    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        assert wait_for(lambda: any(s.retired for s in sup.slots.values()), 10), (
            "the slot was not retired"
        )
        (slot,) = sup.slots.values()
        assert len(slot.history) == 1  # started once, never restarted
    finally:
        sup.stop()
        runner.join(10)
