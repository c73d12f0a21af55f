"""Rate reports: their wire form (read from a topic anyone may write), when a
worker publishes one, and the processing rate the autoscaler derives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from keyshift.orchestration.autoscaler import RateWindow
from keyshift.runtime.rates import RateReport, RateReporter

pytestmark = pytest.mark.unit


def test_a_report_round_trips() -> None:
    report = RateReport("w1", "abc", 1_000, 42, 0.5, {"in[0]": 40, "in[1]": 2})
    assert RateReport.decode(report.encode()) == report


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"instance": "w1", "incarnation": "a", "ts_ms": 1.5, "records": 1, "busy_s": 1},
        {"instance": "w1", "incarnation": "a", "ts_ms": 1, "records": -1, "busy_s": 1},
        {"instance": "w1", "incarnation": "a", "ts_ms": 1, "records": 1, "busy_s": -0.1},
        {"instance": "w1", "incarnation": "a", "ts_ms": 1, "records": 1, "busy_s": "1"},
        {"instance": 7, "incarnation": "a", "ts_ms": 1, "records": 1, "busy_s": 1},
        {"instance": "w1", "incarnation": "a", "ts_ms": 1, "records": 1, "busy_s": 1, "tasks": []},
        {
            "instance": "w1",
            "incarnation": "a",
            "ts_ms": 1,
            "records": 1,
            "busy_s": 1,
            "tasks": {"in[0]": "x"},
        },
    ],
)
def test_malformed_reports_are_refused(doc: dict[str, Any]) -> None:
    assert RateReport.decode(orjson.dumps(doc)) is None


def test_undecodable_bytes_are_refused() -> None:
    assert RateReport.decode(b"\xff{") is None
    assert RateReport.decode(None) is None
    assert RateReport.decode(b"[1, 2]") is None


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.records.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0


def test_a_worker_reports_once_per_interval_with_its_cumulative_counts() -> None:
    now = [100.0]
    counts = {"in[0]": 10}
    sent = Sent()
    reporter = RateReporter(
        "app--rates",
        sent,  # type: ignore[arg-type]
        instance="w1",
        incarnation="i1",
        counts=lambda: (dict(counts), 2.5),
        every_s=5.0,
        clock=lambda: now[0],
    )
    assert not reporter.tick()
    now[0] += 5.0
    assert reporter.tick() and not reporter.tick()
    counts["in[1]"] = 5
    now[0] += 5.0
    assert reporter.tick()
    reports = [RateReport.decode(value) for _, value, _ in sent.records]
    assert [(r.records, r.tasks) for r in reports if r] == [
        (10, {"in[0]": 10}),
        (15, {"in[0]": 10, "in[1]": 5}),
    ]
    assert {topic for topic, _, _ in sent.records} == {"app--rates"}
    assert {key for _, _, key in sent.records} == {b"w1"}


def test_the_processing_rate_is_records_per_busy_second_over_fresh_reports() -> None:
    window = RateWindow()
    # w1: 1,000 records in 2 busy seconds; w2: 600 in 1; an old report is ignored.
    for report in (
        RateReport("w1", "a", 1_000, 0, 0.0),
        RateReport("w1", "a", 6_000, 1_000, 2.0),
        RateReport("w2", "b", 500, 10_000, 100.0),
        RateReport("w2", "b", 2_000, 10_000, 100.0),
        RateReport("w2", "b", 7_000, 10_600, 101.0),
    ):
        window.add(report)
    assert window.processing_rate(since_ms=1_000) == pytest.approx(1_600 / 3.0)
    assert window.reported_since("w2", 7_000) and not window.reported_since("w1", 7_000)
    # One report per process since then: nothing to measure yet.
    assert window.processing_rate(since_ms=6_000) == 0.0
    # An idle process (no records, no busy time) does not dilute the rate.
    window.add(RateReport("w3", "c", 1_000, 0, 0.0))
    window.add(RateReport("w3", "c", 7_000, 0, 0.0))
    assert window.processing_rate(since_ms=1_000) == pytest.approx(1_600 / 3.0)
