"""Unit tests of the state-locations schema and the workers' view of the topic.

Anyone who can write the compacted locations topic can publish any bytes: a
record that breaks the schema must be refused with :class:`BadLocation` and
skipped by the view, never crash the worker that reads it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshift.migrations.locations import (
    ASIDE,
    BadLocation,
    Location,
    LocationsView,
    parse_record,
)

pytestmark = pytest.mark.unit

URL = "redis://remote:6379/0"
TOPIC = "app--state-locations"


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"store": "counts", "partition": 2, "instance": "inst-1",
                            "url": URL, "epoch": 7}
    base.update(changes)
    return base


def raw(**changes: Any) -> bytes:
    return orjson.dumps(fields(**changes))


class FakeConsumer:
    """Takes the view's assignment; reads nothing (records go through ``_apply``)."""

    def __init__(self) -> None:
        self.assigned: list[Any] = []

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions


class FakeProducer:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.produced.append((topic, value, key))

    def flush(self, timeout: float) -> int:
        return 0


def view() -> LocationsView:
    return LocationsView(TOPIC, {}, {}, consumer=FakeConsumer(), producer=FakeProducer())


# -- Location.decode -------------------------------------------------------------------


def test_bad_location_is_a_value_error() -> None:
    assert issubclass(BadLocation, ValueError)


@pytest.mark.parametrize("data", [b"junk", b"\xff\xfe\x00", b"", b"{", b"NaN"])
def test_garbage_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(BadLocation, match="not JSON"):
        Location.decode(data)


@pytest.mark.parametrize("data", [b"[]", b"null", b"1", b'"counts:2"', b"true",
                                  orjson.dumps([fields()])])
def test_non_object_is_refused(data: bytes) -> None:
    with pytest.raises(BadLocation, match="JSON object"):
        Location.decode(data)


def test_empty_object_names_every_missing_field() -> None:
    with pytest.raises(BadLocation, match="store, partition, instance, url, epoch"):
        Location.decode(b"{}")


@pytest.mark.parametrize("name", ["store", "partition", "instance", "url", "epoch"])
def test_missing_required_field_is_refused(name: str) -> None:
    value = fields()
    del value[name]
    with pytest.raises(BadLocation, match=f"missing field.*{name}"):
        Location.decode(orjson.dumps(value))


@pytest.mark.parametrize(("name", "value"), [
    ("store", 1), ("store", ""), ("store", None), ("store", "a:b"), ("store", "a b"),
    ("store", ["counts"]),
    ("partition", True), ("partition", False), ("partition", "2"), ("partition", 2.0),
    ("partition", -1), ("partition", 1_000_000), ("partition", None),
    ("instance", ""), ("instance", 5), ("instance", None), ("instance", "x" * 201),
    ("url", 5), ("url", None), ("url", ""), ("url", "http://remote/"), ("url", "remote:6379"),
    ("url", ["redis://remote"]),
    ("epoch", 1.5), ("epoch", 1.0), ("epoch", -1), ("epoch", 2**53), ("epoch", 2**60),
    ("epoch", True), ("epoch", "7"), ("epoch", None),
    ("complete", "yes"), ("complete", 1), ("complete", None),
    ("source", 5), ("source", ""), ("source", "ftp://remote"), ("source", ["redis://x"]),
    ("updated_ms", -1), ("updated_ms", 1.5), ("updated_ms", True), ("updated_ms", None),
    ("origins", "redis://x:1/0"), ("origins", None), ("origins", {"a": 1}), ("origins", [5]),
    ("origins", ["http://x"]), ("origins", [ASIDE]), ("origins", [None]),
    ("origins", [URL] * 65),
    ("aside_tag", 5), ("aside_tag", ""), ("aside_tag", "x" * 201), ("aside_tag", False),
])
def test_wrong_field_is_refused(name: str, value: Any) -> None:
    with pytest.raises(BadLocation, match=name):
        Location.decode(raw(**{name: value}))


@pytest.mark.parametrize("epoch", [1.5, -1, 2**60])
def test_epoch_refusal_names_the_bound(epoch: float) -> None:
    with pytest.raises(BadLocation, match=r"epoch: expected an integer \[0, 9007199254740992\)"):
        Location.decode(raw(epoch=epoch))


@pytest.mark.parametrize(("name", "value"), [
    ("epoch", 0), ("epoch", 2**53 - 1), ("partition", 0), ("partition", 999_999),
    ("url", "rediss://:***@remote:6380/1"), ("url", "unix:///run/redis.sock"),
    ("url", "memory://inst-1"), ("source", None), ("source", "redis://src:1/0"),
    ("origins", []), ("origins", [URL, URL + ASIDE, "memory://x"]), ("origins", [URL] * 64),
    ("instance", "x" * 200), ("store", "A-z_0.9"), ("updated_ms", 2**62),
    ("aside_tag", None), ("aside_tag", "inst-1@7"), ("aside_tag", "x" * 200),
    ("complete", False),
])
def test_edge_values_are_accepted(name: str, value: Any) -> None:
    decoded = Location.decode(raw(**{name: value}))
    expected = tuple(value) if name == "origins" else value
    assert getattr(decoded, name) == expected


def test_unknown_extra_fields_are_ignored() -> None:
    decoded = Location.decode(raw(shard="b", future={"x": [1, 2]}))
    assert decoded == Location("counts", 2, "inst-1", URL, 7)


def test_defaults_of_optional_fields() -> None:
    decoded = Location.decode(raw())
    assert (decoded.complete, decoded.source, decoded.updated_ms, decoded.origins,
            decoded.aside_tag) == (True, None, 0, (), None)


def test_round_trip_with_every_field() -> None:
    value = Location("counts", 7, "inst-1", URL, 42, False, "redis://src:1/0", 1234,
                     origins=("redis://x:1/0", URL + ASIDE), aside_tag="inst-0@41")
    assert Location.decode(value.encode()) == value
    assert orjson.loads(value.encode())["aside_tag"] == "inst-0@41"


def test_without_aside_tag_the_encoding_has_no_such_field() -> None:
    """A reader without the field (a worker of the previous version, mid-upgrade)
    still reads every record that does not use it."""
    value = Location("counts", 7, "inst-1", URL, 42)
    assert "aside_tag" not in orjson.loads(value.encode())
    assert Location.decode(value.encode()) == value


_URLS = st.sampled_from(["redis://", "rediss://", "unix://", "memory://"]).flatmap(
    lambda scheme: st.text(max_size=30).map(lambda rest: scheme + rest))
_NAMES = st.text(min_size=1, max_size=200)


@given(
    st.from_regex(r"[A-Za-z0-9._-]+", fullmatch=True), st.integers(0, 999_999), _NAMES, _URLS,
    st.integers(0, 2**53 - 1), st.booleans(), st.none() | _URLS, st.integers(0, 2**62),
    st.lists(st.tuples(_URLS, st.booleans()).map(lambda u: u[0] + ASIDE if u[1] else u[0]),
             max_size=64).map(tuple),
    st.none() | _NAMES,
)
def test_every_valid_location_round_trips(
        store: str, partition: int, instance: str, url: str, epoch: int, complete: bool,
        source: str | None, updated: int, origins: tuple[str, ...], aside_tag: str | None,
) -> None:
    value = Location(store, partition, instance, url, epoch, complete, source, updated,
                     origins, aside_tag)
    assert Location.decode(value.encode()) == value
    assert parse_record(value.key(), value.encode()) == value


# -- parse_record ----------------------------------------------------------------------


def test_parse_record_checks_key_against_value() -> None:
    assert parse_record(b"counts:2", raw()) == Location("counts", 2, "inst-1", URL, 7)
    with pytest.raises(BadLocation, match="does not match"):
        parse_record(b"counts:3", raw())
    with pytest.raises(BadLocation, match="does not match"):
        parse_record(b"other:2", raw())


def test_parse_record_tombstone_and_missing_key() -> None:
    assert parse_record(b"counts:2", None) is None
    with pytest.raises(BadLocation, match="without a key"):
        parse_record(None, raw())


# -- LocationsView._apply --------------------------------------------------------------


BAD_VALUES = [b"junk", b"[]", b"{}", raw(partition=True), raw(epoch=1.5), raw(epoch=-1),
              raw(epoch=2**60), raw(url="http://evil/"), raw(origins=["gopher://x"])]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_view_skips_a_malformed_record(value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    locations = view()
    with caplog.at_level(logging.WARNING, "keyshift.migrations.locations"):
        locations._apply(b"counts:2", value, 5)
    assert locations.get("counts", 2) is None and locations.all() == []
    assert locations.skipped == 1
    [record] = caplog.records
    assert record.getMessage() == "skipping a malformed state location"
    assert record.topic == TOPIC and record.offset == 5  # type: ignore[attr-defined]
    assert "counts:2" in record.key and record.error  # type: ignore[attr-defined]


def test_view_skips_a_key_value_mismatch() -> None:
    locations = view()
    locations._apply(b"counts:3", raw(partition=2), 0)
    assert locations.get("counts", 2) is None and locations.get("counts", 3) is None
    assert locations.skipped == 1


def test_view_skips_a_record_without_a_key() -> None:
    locations = view()
    locations._apply(None, raw(), 0)
    assert locations.all() == [] and locations.skipped == 1


def test_bad_record_removes_the_earlier_location_of_its_key() -> None:
    """The bad record supersedes the earlier one (and compaction will drop that
    one): the task is left without a location, so the planner replays it."""
    locations = view()
    locations._apply(b"counts:2", raw(), 0)
    locations._apply(b"counts:1", raw(partition=1), 1)
    assert locations.get("counts", 2) is not None
    locations._apply(b"counts:2", b"junk", 2)
    assert locations.get("counts", 2) is None
    assert locations.get("counts", 1) == Location("counts", 1, "inst-1", URL, 7)
    assert locations.skipped == 1


def test_mismatched_record_removes_its_key_but_not_the_named_task() -> None:
    locations = view()
    locations._apply(b"counts:2", raw(), 0)
    locations._apply(b"counts:1", raw(partition=1), 1)
    locations._apply(b"counts:1", raw(partition=2, epoch=99), 2)  # forged: says counts:2
    assert locations.get("counts", 1) is None
    assert locations.get("counts", 2) == Location("counts", 2, "inst-1", URL, 7)


def test_good_record_after_a_bad_one_is_taken() -> None:
    locations = view()
    locations._apply(b"counts:2", b"junk", 0)
    locations._apply(b"counts:2", raw(epoch=8), 1)
    assert locations.get("counts", 2) == Location("counts", 2, "inst-1", URL, 8)


def test_tombstone_removes_the_location() -> None:
    locations = view()
    locations._apply(b"counts:2", raw(), 0)
    locations._apply(b"counts:2", None, 1)
    assert locations.get("counts", 2) is None and locations.skipped == 0
    locations._apply(b"counts:9", None, 2)  # a tombstone for an unknown key is fine
    assert locations.all() == []


def test_skipped_record_is_counted_and_logged_once_per_offset(
        caplog: pytest.LogCaptureFixture) -> None:
    locations = view()
    with caplog.at_level(logging.WARNING, "keyshift.migrations.locations"):
        locations._apply(b"counts:2", b"junk", 4)
        locations._apply(b"counts:2", b"junk", 4)  # the same record read again
        locations._apply(b"counts:2", b"[]", 5)
    assert locations.skipped == 2 and len(caplog.records) == 2


def test_publish_keeps_aside_tag_and_stamps_the_time() -> None:
    locations = view()
    value = Location("counts", 2, "inst-1", URL, 7, aside_tag="inst-0@6")
    locations.publish(value)
    producer = locations._producer
    assert isinstance(producer, FakeProducer)
    [(topic, encoded, key)] = producer.produced
    published = Location.decode(encoded)
    assert topic == TOPIC and key == b"counts:2"
    assert published.aside_tag == "inst-0@6" and published.updated_ms > 0
    assert locations.get("counts", 2) == published
