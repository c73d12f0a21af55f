"""The operations endpoint over real HTTP on 127.0.0.1, fed by a Metrics object:
the Prometheus scrape parses and carries the worker's numbers; health and
readiness follow the worker's state and its loop."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import ManualClock
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.ops import OpsServer

pytestmark = pytest.mark.unit


class Served:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.state = "running"
        self.clock = ManualClock(1000.0)
        self.server = OpsServer(
            self.metrics,
            lambda: self.state,
            info={"app": "wc", "instance": "w1", "guarantee": "exactly_once"},
            stall_s=10.0,
            clock=self.clock,
        ).start()

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.server.stop()


def test_the_scrape_parses_and_carries_the_workers_numbers(served: Served) -> None:
    m = served.metrics
    m.records_in_by_topic.update({"words": 120, "clicks": 3})
    m.records_out_by_topic["counts"] = 118
    m.dead_letters_by_topic["words"] = 2
    m.processing_seconds = 1.5
    m.commits, m.aborted_transactions, m.rebalances, m.rejoins = 7, 1, 2, 1
    for took in (0.004, 0.03, 0.2):
        m.commit_durations.observe(took)
    m.observe_migration("progressive", 80, 2500)
    m.observe_migration("handoff", 20, None)
    m.lag["words[3]"] = 42
    m.state_keys["counts[3]"] = 17
    got = served.samples()
    assert got[("keyshift_records_in_total", (("topic", "words"),))] == 120
    assert got[("keyshift_records_in_total", (("topic", "clicks"),))] == 3
    assert got[("keyshift_records_out_total", (("topic", "counts"),))] == 118
    assert got[("keyshift_dead_letters_total", (("topic", "words"),))] == 2
    assert got[("keyshift_busy_seconds_total", ())] == 1.5
    assert got[("keyshift_commits_total", ())] == 7
    assert got[("keyshift_aborted_transactions_total", ())] == 1
    assert got[("keyshift_rebalances_total", ())] == 2
    assert got[("keyshift_rejoins_total", ())] == 1
    assert got[("keyshift_commit_duration_seconds_count", ())] == 3
    assert got[("keyshift_commit_duration_seconds_sum", ())] == pytest.approx(0.234)
    assert got[("keyshift_commit_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("keyshift_commit_duration_seconds_bucket", (("le", "0.05"),))] == 2
    assert got[("keyshift_commit_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    pause = "keyshift_migration_pause_seconds"
    assert got[(f"{pause}_count", (("strategy", "progressive"),))] == 1
    assert got[(f"{pause}_sum", (("strategy", "handoff"),))] == pytest.approx(0.02)
    duration = "keyshift_migration_duration_seconds"
    assert got[(f"{duration}_sum", (("strategy", "progressive"),))] == pytest.approx(2.5)
    assert (f"{duration}_count", (("strategy", "handoff"),)) not in got
    assert got[("keyshift_consumer_lag", (("partition", "3"), ("topic", "words")))] == 42
    assert got[("keyshift_state_keys", (("partition", "3"), ("store", "counts")))] == 17
    assert got[("keyshift_worker_state", (("state", "running"),))] == 1
    info = (("app", "wc"), ("guarantee", "exactly_once"), ("instance", "w1"))
    assert got[("keyshift_worker_info", info)] == 1


def test_health_fails_once_the_loop_stops_turning_and_recovers(served: Served) -> None:
    served.metrics.last_turn = served.clock.now
    assert served.get("/healthz") == (200, "processing\n")
    served.clock.now += 11  # a record stuck in user code
    status, reason = served.get("/healthz")
    assert status == 503 and "has not turned for 11s" in reason
    served.metrics.restoring = True  # a long replay is progress
    assert served.get("/healthz") == (200, "restoring\n")
    served.metrics.restoring = False
    served.metrics.last_turn = served.clock.now
    assert served.get("/healthz")[0] == 200
    served.state = "failed"
    assert served.get("/healthz") == (503, "worker failed\n")


def test_a_starting_worker_is_alive_but_not_ready(served: Served) -> None:
    served.state = "joining"
    assert served.get("/healthz")[0] == 200
    assert served.get("/readyz") == (503, "worker joining\n")


def test_ready_once_assigned_restored_and_turning(served: Served) -> None:
    assert served.get("/readyz") == (503, "no assignment from the group yet\n")
    served.metrics.rebalances = 1
    served.metrics.restoring = True
    assert served.get("/readyz") == (503, "restoring assigned tasks\n")
    served.metrics.restoring = False
    assert served.get("/readyz") == (503, "the processing loop has not started\n")
    served.metrics.last_turn = served.clock.now
    assert served.get("/readyz") == (200, "ready\n")
    served.clock.now += 30
    assert served.get("/readyz")[0] == 503
    served.state = "leaving"
    served.metrics.last_turn = served.clock.now
    assert served.get("/readyz") == (503, "worker leaving\n")


def test_other_paths_are_not_found_and_the_default_address_is_loopback(served: Served) -> None:
    assert served.get("/")[0] == 404
    assert served.server.address[0] == "127.0.0.1"
