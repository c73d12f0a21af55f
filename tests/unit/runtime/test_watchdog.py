"""The watchdog that ends a process whose Kafka client call outlives its timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from keyshift.runtime.watchdog import STUCK_EXIT_CODE, Watchdog

pytestmark = pytest.mark.unit


def recording() -> tuple[Watchdog, list[tuple[str, float]], threading.Event]:
    stuck: list[tuple[str, float]] = []
    fired = threading.Event()

    def on_stuck(call: str, timeout_s: float) -> None:
        stuck.append((call, timeout_s))
        fired.set()

    return Watchdog(grace_s=0.1, on_stuck=on_stuck, check_every_s=0.02), stuck, fired


def test_a_call_that_runs_past_its_timeout_and_grace_is_reported_once() -> None:
    watchdog, stuck, fired = recording()
    with watchdog.watch("send_offsets_to_transaction", 0.1):
        assert fired.wait(5)
        time.sleep(0.2)  # still stuck: reported once only
    assert stuck == [("send_offsets_to_transaction", 0.1)]


def test_calls_that_return_in_time_are_never_reported() -> None:
    watchdog, stuck, fired = recording()
    for _ in range(20):
        with watchdog.watch("commit_transaction", 0.1):
            time.sleep(0.01)
    assert not fired.wait(0.5)
    assert stuck == []
    watchdog.stop()


def test_a_call_that_raises_is_no_longer_watched() -> None:
    watchdog, stuck, fired = recording()
    with pytest.raises(RuntimeError), watchdog.watch("abort_transaction", 0.05):
        raise RuntimeError("the call failed")
    assert not fired.wait(0.4)
    watchdog.stop()


def test_by_default_a_stuck_call_ends_the_process_with_its_stacks_on_stderr() -> None:
    script = textwrap.dedent(
        """
        import logging, time
        from keyshift.runtime.watchdog import Watchdog
        logging.basicConfig()
        with Watchdog(grace_s=0.1, check_every_s=0.05).watch("init_transactions", 0.1):
            time.sleep(30)
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == STUCK_EXIT_CODE
    assert time.monotonic() - started < 25  # ended, not slept out
    assert "did not return within its timeout" in done.stderr
    # every thread's stack, the stuck main thread's among them
    assert "most recent call first" in done.stderr and 'File "<string>", line 6' in done.stderr
