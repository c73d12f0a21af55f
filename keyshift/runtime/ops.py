"""A worker's operations endpoint: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

Off unless ``metrics_port`` is set; bound to ``metrics_host``, 127.0.0.1 unless
told otherwise (a container sets 0.0.0.0 so that its orchestrator reaches it).
A daemon thread serves it; every answer is computed from the worker's
:class:`~keyshift.runtime.metrics.Metrics` when asked, so the processing loop
does no work for it.

* ``/metrics``: Prometheus text format, through ``prometheus-client``.
* ``/healthz`` (liveness): 200 while the processing loop turns; 503 once it has
  not turned for ``stall_s`` (a record stuck in user code, a hung call) or the
  worker failed. Restoring an assignment's state counts as turning: a long
  replay is progress, not a hang.
* ``/readyz`` (readiness): 200 once the worker runs, has received an assignment
  from its group, has restored it, and its loop turns; 503 otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from keyshift.runtime.metrics import Histogram, Metrics

log = logging.getLogger("keyshift.ops")

#: How long the loop may go without turning before ``/healthz`` fails. A turn
#: takes at most one batch and one commit; a commit waits at most 30 s for Kafka.
DEFAULT_STALL_S = 60.0

#: Worker states in which it is alive but not (or no longer) processing.
_STARTING = frozenset({"created", "starting", "joining"})
_DEAD = frozenset({"failed", "stopped"})


def _split_task(name: str) -> tuple[str, str]:
    """``"topic[3]"`` -> ``("topic", "3")``."""
    base, _, rest = name.rpartition("[")
    return base, rest.rstrip("]")


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(labels, hist.cumulative(), hist.total)


class _WorkerCollector(Collector):
    def __init__(self, metrics: Metrics, state: Callable[[], str], info: dict[str, str]) -> None:
        self.metrics = metrics
        self.state = state
        self.info = info

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield InfoMetricFamily("keyshift_worker", "The worker's app and instance.", self.info)
        state = GaugeMetricFamily(
            "keyshift_worker_state", "1 for the worker's current state.", labels=["state"]
        )
        state.add_metric([self.state()], 1)
        yield state
        for name, doc, by_topic in (
            ("keyshift_records_in", "Records taken from each source topic.", m.records_in_by_topic),
            (
                "keyshift_records_out",
                "Records produced to each sink topic.",
                m.records_out_by_topic,
            ),
            (
                "keyshift_dead_letters",
                "Input records sent to the dead-letter topic, by source topic.",
                m.dead_letters_by_topic,
            ),
        ):
            per_topic = CounterMetricFamily(name, doc, labels=["topic"])
            for topic, count in sorted(by_topic.items()):
                per_topic.add_metric([topic], count)
            yield per_topic
        for name, doc, value in (
            (
                "keyshift_dead_letters_dropped",
                "Dead letters the dead-letter topic refused too.",
                m.dead_letters_dropped,
            ),
            ("keyshift_busy_seconds", "Time spent processing records.", m.processing_seconds),
            ("keyshift_commits", "Commits made.", m.commits),
            ("keyshift_aborted_transactions", "Transactions aborted.", m.aborted_transactions),
            ("keyshift_rebalances", "Assignments received from the group.", m.rebalances),
            (
                "keyshift_rejoins",
                "Rejoins after a revocation that never reached the consumer.",
                m.rejoins,
            ),
            ("keyshift_restores", "Task states restored.", m.restores),
            ("keyshift_restored_records", "Changelog records replayed.", m.restored_records),
            ("keyshift_fenced_tasks", "Tasks found claimed by another owner.", m.fenced_tasks),
            (
                "keyshift_duplicates_dropped",
                "Input records dropped as already processed.",
                m.duplicates_dropped,
            ),
            ("keyshift_gc_seconds", "Time in the garbage collector.", m.gc_seconds),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        commits = HistogramMetricFamily(
            "keyshift_commit_duration_seconds", "Duration of each commit."
        )
        _histogram(commits, [], m.commit_durations)
        yield commits
        for name, doc, by_strategy in (
            (
                "keyshift_migration_pause_seconds",
                "A moved task's pause: the previous owner's last record to the new owner's first.",
                m.migration_pauses,
            ),
            (
                "keyshift_migration_duration_seconds",
                "A migration's duration: assignment to state fully local.",
                m.migration_durations,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["strategy"])
            for strategy, hist in sorted(by_strategy.items()):
                _histogram(family, [strategy], hist)
            yield family
        lag = GaugeMetricFamily(
            "keyshift_consumer_lag",
            "Records behind the end of each source partition (as of the last commit).",
            labels=["topic", "partition"],
        )
        for task, value in sorted(m.lag.items()):
            lag.add_metric(list(_split_task(task)), value)
        yield lag
        keys = GaugeMetricFamily(
            "keyshift_state_keys",
            "Keys in each store partition (as of the last commit).",
            labels=["store", "partition"],
        )
        for task, value in sorted(m.state_keys.items()):
            keys.add_metric(list(_split_task(task)), value)
        yield keys


class OpsServer:
    """Serves the operations endpoint of one worker (see the module docstring).

    Args:
        metrics: the worker's metrics.
        state: the worker's state name (``WorkerState.value``).
        host, port: where to listen (port 0: any free port, see :attr:`port`).
        info: labels of ``keyshift_worker_info`` (app, instance, guarantee).
        stall_s: how long the loop may go without turning while alive (default
            :data:`DEFAULT_STALL_S`).
        clock: monotonic time (tests).
    """

    def __init__(
        self,
        metrics: Metrics,
        state: Callable[[], str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        info: dict[str, str] | None = None,
        stall_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.state = state
        self.stall_s = DEFAULT_STALL_S if stall_s is None else stall_s
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WorkerCollector(metrics, state, dict(info or {})))
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    # -- probes ------------------------------------------------------------------------
    def _stalled_s(self) -> float | None:
        """Seconds since the loop last turned, if it is overdue (None: fine)."""
        last = self.metrics.last_turn
        if not last or self.metrics.restoring:
            return None
        since = self._clock() - last
        return since if since > self.stall_s else None

    def health(self) -> tuple[bool, str]:
        state = self.state()
        if state in _DEAD:
            return False, f"worker {state}"
        if state in _STARTING:
            return True, f"worker {state}"
        stalled = self._stalled_s()
        if stalled is not None:
            return False, f"the processing loop has not turned for {stalled:.0f}s"
        return True, "restoring" if self.metrics.restoring else "processing"

    def readiness(self) -> tuple[bool, str]:
        state = self.state()
        if state != "running":
            return False, f"worker {state}"
        if self.metrics.rebalances == 0:
            return False, "no assignment from the group yet"
        if self.metrics.restoring:
            return False, "restoring assigned tasks"
        stalled = self._stalled_s()
        if stalled is not None:
            return False, f"the processing loop has not turned for {stalled:.0f}s"
        if not self.metrics.last_turn:
            return False, "the processing loop has not started"
        return True, "ready"

    # -- HTTP --------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(ops.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = ops.health() if path == "/healthz" else ops.readiness()
                    self._answer(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
                else:
                    self._answer(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("ops request", extra={"request": format % args})

        return Handler

    def start(self) -> OpsServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="keyshift-ops", daemon=True
        )
        self._thread.start()
        host, port = self.address
        log.info("operations endpoint listening", extra={"address": f"{host}:{port}"})
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
