"""Ends the process when a Kafka client call outlives its own timeout.

librdkafka's transactional calls take a timeout, but one of them can block past
it: ``send_offsets_to_transaction`` waits without end for a group coordinator
that went down (confluentinc/librdkafka#5456, #5511). A worker blocked there
holds its partitions without processing them and cannot honour SIGTERM either.
A worker must not hang: when a watched call runs past its timeout plus a grace
period, the watchdog logs the call, writes every thread's stack to stderr and
ends the process with exit code 1, which every supervisor restarts (``keyshift
run``, Kubernetes, compose). Nothing is lost: Redis holds only committed state,
and the open transaction is aborted by its coordinator (or fenced by the
restarted producer), so its records are processed again.
"""

from __future__ import annotations

import faulthandler
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("keyshift.watchdog")

#: How long past its own timeout a call may run before the process ends.
GRACE_S = 5.0

#: The exit code of a process the watchdog ended (a generic failure: restarted).
STUCK_EXIT_CODE = 1

OnStuck = Callable[[str, float], None]


def end_process(call: str, timeout_s: float) -> None:
    """The default reaction to a stuck call: log, dump the stacks, exit at once."""
    log.critical(
        "a Kafka client call did not return within its timeout; ending the process "
        "so that it is restarted",
        extra={"call": call, "timeout_s": timeout_s, "grace_s": GRACE_S},
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(STUCK_EXIT_CODE)


class Watchdog:
    """Watches calls (see :meth:`watch`) from one daemon thread, started on first use.

    Args:
        grace_s: how long past its timeout a call may run.
        on_stuck: called (from the watchdog's thread) with the call's name and
            timeout once one runs too long; the default ends the process. The
            watchdog stops watching after calling it.
        check_every_s: how often the deadlines are checked.
    """

    def __init__(
        self,
        *,
        grace_s: float = GRACE_S,
        on_stuck: OnStuck = end_process,
        check_every_s: float = 0.5,
    ) -> None:
        self.grace_s = grace_s
        self._on_stuck = on_stuck
        self._check_every_s = check_every_s
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._watched: dict[int, tuple[str, float, float]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @contextmanager
    def watch(self, call: str, timeout_s: float) -> Iterator[None]:
        """Run the ``with`` body as the call ``call`` with timeout ``timeout_s``."""
        token = next(self._tokens)
        deadline = time.monotonic() + timeout_s + self.grace_s
        with self._lock:
            self._watched[token] = (call, timeout_s, deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="keyshift-watchdog", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._watched[token]

    def _run(self) -> None:
        while not self._stopped.wait(self._check_every_s):
            now = time.monotonic()
            with self._lock:
                late = [(c, t) for c, t, deadline in self._watched.values() if deadline <= now]
            if late:
                self._stopped.set()
                self._on_stuck(*late[0])

    def stop(self) -> None:
        """Stop watching (tests)."""
        self._stopped.set()


#: The process's watchdog.
WATCHDOG = Watchdog()
