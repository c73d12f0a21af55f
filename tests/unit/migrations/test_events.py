"""Migration events: the pause and resume times, when an event is ready, its
published form."""

from __future__ import annotations

import orjson
import pytest

from keyshift.migrations.events import MigrationEvent, now_ms

pytestmark = pytest.mark.unit

LOCAL = "redis://local:6379/0"
REMOTE = "redis://remote:6379/0"


def event(**kw: object) -> MigrationEvent:
    base: dict[str, object] = dict(
        app="app",
        store="counts",
        partition=3,
        strategy="progressive",
        reason="r",
        from_instance="a",
        from_url=REMOTE,
        to_instance="b",
        to_url=LOCAL,
        assigned_ms=now_ms(),
    )
    base.update(kw)
    return MigrationEvent(**base)  # type: ignore[arg-type]


def test_record_first_computes_pause_once() -> None:
    ev = event(previous_record_ms=1_000)
    ev.record_first(1_250)
    assert ev.first_record_ms == 1_250 and ev.pause_ms == 250
    ev.record_first(9_999)  # only the first record counts
    assert ev.first_record_ms == 1_250 and ev.pause_ms == 250


def test_record_received_splits_resume_into_fetch_and_processing() -> None:
    ev = event(assigned_ms=1_000, previous_record_ms=600)
    ev.record_received(1_030)
    ev.record_received(1_090)  # only the first batch counts
    ev.record_first(1_100)
    assert (ev.fetch_ms, ev.resume_ms, ev.pause_ms) == (30, 100, 500)


def test_record_first_without_previous_commit_has_no_pause() -> None:
    ev = event()
    ev.record_first(5_000)
    assert ev.first_record_ms == 5_000 and ev.pause_ms is None


def test_record_first_clock_skew_never_negative() -> None:
    ev = event(previous_record_ms=2_000)
    ev.record_first(1_500)
    assert ev.pause_ms == 0


def test_ready_needs_duration() -> None:
    ev = event(assigned_ms=now_ms() - 60_000)
    ev.record_first(now_ms())
    assert not ev.ready()
    ev.finish()
    assert ev.duration_ms is not None and ev.duration_ms >= 60_000
    assert ev.ready()


def test_ready_waits_for_first_record_or_idle_timeout() -> None:
    ev = event()
    ev.finish()
    assert not ev.ready(idle_s=60)  # finished, but no record yet, not idle long enough
    ev.record_first(now_ms())
    assert ev.ready(idle_s=60)

    idle = event(assigned_ms=now_ms() - 10_000)
    idle.finish()
    assert not idle.ready(idle_s=60)
    assert idle.ready(idle_s=5)


def test_not_ready_once_emitted() -> None:
    ev = event()
    ev.finish()
    ev.record_first(now_ms())
    ev.emitted = True
    assert not ev.ready()


def test_to_dict() -> None:
    ev = event(keys=10, bytes=200)
    ev.finish()
    doc = ev.to_dict()
    assert doc["task"] == "counts[3]" == ev.task
    assert "emitted" not in doc
    assert doc["keys"] == 10 and doc["bytes"] == 200 and doc["strategy"] == "progressive"
    assert doc["duration_ms"] == ev.duration_ms
    orjson.dumps(doc)  # serializable as published
