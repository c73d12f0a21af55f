"""Unit tests of ``keyshift status``'s handling of the locations and events topics.

Both topics can be written by anyone with access to the cluster: status skips
malformed records instead of crashing, and reads only the Redis servers it is
configured with, never one a location merely names.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from keyshift.cli.status_report import (
    AppStatus,
    connectable,
    latest_locations,
    parse_events,
    render,
    summarize_locations,
)
from keyshift.config import Settings
from keyshift.migrations.locations import Location
from keyshift.urls import redact

pytestmark = pytest.mark.unit

LOCAL = "redis://:localpw@local:6379/0"
PEER = "redis://:peerpw@peer:6379/0"
SETTINGS = Settings("app", state=LOCAL, peers=(PEER,))
#: As workers publish them: without secrets.
LOCAL_PUBLISHED = redact(LOCAL)
PEER_PUBLISHED = redact(PEER)


class ReportedStore:
    """A Redis as status sees it; records every URL opened."""

    def __init__(self, opened: list[str], url: str, *, fail: bool = False) -> None:
        opened.append(url)
        self.url = url
        self.fail = fail
        self.closed = False

    def partition(self, app_id: str, store: str, partition: int) -> ReportedStore:
        self.where = f"{app_id}:{store}:{partition}"
        return self

    def usage(self) -> dict[str, int]:
        if self.fail:
            raise OSError(f"cannot read {self.where}")
        return {"keys": 3, "bytes": 120}

    def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self, *, failing: tuple[str, ...] = ()) -> None:
        self.opened: list[str] = []
        self.stores: list[ReportedStore] = []
        self.failing = failing

    def __call__(self, url: str) -> ReportedStore:
        store = ReportedStore(self.opened, url, fail=url in self.failing)
        self.stores.append(store)
        return store


def record(url: str, partition: int = 0, **kw: Any) -> tuple[bytes, bytes]:
    location = Location("counts", partition, f"inst-{partition}", url, 4, **kw)
    return location.key(), location.encode()


# -- which Redis status reads ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://evil:6379/0",
        "unix:///tmp/evil.sock",
        "rediss://evil:6380/0",
        "redis://***@evil:6379/0",
    ],
)
def test_unknown_url_is_never_connected_to(url: str) -> None:
    factory = Factory()
    entries, skipped = summarize_locations([record(url)], SETTINGS, open_store=factory)
    assert factory.opened == [] and skipped == 0
    [entry] = entries
    assert entry["note"] == "not a configured peer" and "keys" not in entry
    assert entry["url"] == url and entry["task"] == "counts[0]"


def test_configured_peer_and_own_state_are_read_with_their_credentials() -> None:
    factory = Factory()
    entries, _ = summarize_locations(
        [record(PEER_PUBLISHED, 0), record(LOCAL_PUBLISHED, 1), record(PEER_PUBLISHED, 2)],
        SETTINGS,
        open_store=factory,
    )
    assert factory.opened == [PEER, LOCAL]  # one connection per server
    assert [e["keys"] for e in entries] == [3, 3, 3]
    assert not any("note" in e for e in entries)
    assert all(store.closed for store in factory.stores)


def test_configured_peer_without_password_is_read() -> None:
    factory = Factory()
    settings = Settings("app", state=LOCAL, peers=("redis://open:6379/0",))
    entries, _ = summarize_locations([record("redis://open:6379/0")], settings, open_store=factory)
    assert factory.opened == ["redis://open:6379/0"] and entries[0]["keys"] == 3


def test_memory_location_is_not_read_and_has_no_note() -> None:
    factory = Factory()
    entries, _ = summarize_locations([record("memory://inst-0")], SETTINGS, open_store=factory)
    assert factory.opened == [] and "note" not in entries[0] and "keys" not in entries[0]


def test_connectable() -> None:
    assert connectable(PEER_PUBLISHED, SETTINGS) == PEER
    assert connectable(LOCAL_PUBLISHED, SETTINGS) == LOCAL
    assert connectable("redis://peer:6379/0", SETTINGS) is None  # not the redacted form
    assert connectable("redis://evil:6379/0", SETTINGS) is None
    assert connectable("memory://", Settings("app", state="memory://")) is None


def test_read_error_is_reported_per_task() -> None:
    factory = Factory(failing=(PEER,))
    entries, _ = summarize_locations(
        [record(PEER_PUBLISHED, 0), record(LOCAL_PUBLISHED, 1)], SETTINGS, open_store=factory
    )
    assert "cannot read" in entries[0]["error"] and entries[1]["keys"] == 3


# -- malformed location records --------------------------------------------------------


def test_malformed_location_records_are_skipped_and_counted() -> None:
    good = record(PEER_PUBLISHED, 1)
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"counts:0", b"junk"),
        (b"counts:2", b"[]"),
        (b"counts:3", b"{}"),
        (
            b"counts:4",
            orjson.dumps(
                {
                    "store": "counts",
                    "partition": 4,
                    "instance": "i",
                    "url": "redis://x/0",
                    "epoch": 1.5,
                }
            ),
        ),
        (b"counts:5", record("redis://x/0", 6)[1]),  # key/value mismatch
        (None, good[1]),
        good,
    ]
    factory = Factory()
    entries, skipped = summarize_locations(records, SETTINGS, open_store=factory)
    assert skipped == 6
    assert [e["task"] for e in entries] == ["counts[1]"]


def test_bad_record_and_tombstone_remove_the_earlier_location() -> None:
    records: list[tuple[bytes | None, bytes | None]] = [
        record("memory://a", 0),
        record("memory://a", 1),
        record("memory://a", 2),
        (b"counts:0", b"junk"),
        (b"counts:1", None),
    ]
    latest, skipped = latest_locations(records)
    assert list(latest) == [b"counts:2"] and skipped == 1


# -- events ------------------------------------------------------------------------------


def test_events_that_are_not_json_objects_are_skipped() -> None:
    event = {"task": "counts[0]", "strategy": "replay"}
    values = [b"junk", b"[]", b"1", b"null", None, b"", orjson.dumps(event), b'"x"']
    assert parse_events(values) == [event]


def test_autoscale_decisions_on_the_events_topic_are_not_migrations() -> None:
    migration = {"task": "counts[0]", "strategy": "progressive"}
    decision = {"kind": "autoscale", "policy": "ds2", "instances": 3, "reason": "load"}
    values = [orjson.dumps(decision), orjson.dumps(migration)]
    assert parse_events(values) == [migration]


# -- render / to_dict --------------------------------------------------------------------


def test_render_and_to_dict_report_skipped_records_and_notes() -> None:
    entries, skipped = summarize_locations(
        [record("redis://evil:6379/0"), (b"counts:1", b"junk")], SETTINGS, open_store=Factory()
    )
    status = AppStatus(
        "app",
        "Stable",
        locations=entries,
        skipped_locations=skipped,
        migrations=[{"task": "counts[0]"}],
    )  # fields missing: still rendered
    text = render(status)
    assert "skipped 1 malformed location records" in text
    assert "(not a configured peer)" in text
    assert status.to_dict()["skipped_locations"] == 1
    assert "skipped" not in render(AppStatus("app", "Stable"))
    assert AppStatus("app", "Stable").to_dict()["skipped_locations"] == 0
