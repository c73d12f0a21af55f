"""The state-locations schema, the aside marker of chain URLs, and the workers' view
of the locations topic.

Anyone who can write the compacted locations topic can publish any bytes: a
record that breaks the schema must be refused with :class:`BadLocation` and
skipped by the view, never crash the worker that reads it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from fakes import FakeCluster, FakeConsumer, FakeProducer
from keyshift.migrations.locations import (
    ASIDE,
    BadLocation,
    Location,
    LocationsView,
    aside_of,
    parse_record,
    split_aside,
)
from keyshift.urls import redact

pytestmark = pytest.mark.unit

URL = "redis://remote:6379/0"
TOPIC = "app--state-locations"
LOCAL = "redis://local:6379/0"
REMOTE = URL
REMOTE_CONNECT = "redis://:secret@remote:6379/0"
THIRD = "redis://third:6379/0"


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "store": "counts",
        "partition": 2,
        "instance": "inst-1",
        "url": URL,
        "epoch": 7,
    }
    base.update(changes)
    return base


def raw(**changes: Any) -> bytes:
    return orjson.dumps(fields(**changes))


class LocationsTopic:
    """The locations topic on an in-memory cluster, and a view reading it."""

    def __init__(self) -> None:
        self.cluster = FakeCluster()
        self.cluster.create_topic(TOPIC, 1)
        self.consumer = FakeConsumer(self.cluster, {})
        self.view = LocationsView(
            TOPIC,
            {},
            {},
            consumer=self.consumer,  # type: ignore[arg-type]
            producer=FakeProducer(self.cluster, {}),
        )  # type: ignore[arg-type]

    def write(self, *records: tuple[bytes | None, bytes | None]) -> None:
        """Append records (key, value) to the topic, as anyone with access can."""
        producer = FakeProducer(self.cluster, {})
        for key, value in records:
            producer.produce(TOPIC, value, key, partition=0)
        producer.flush()

    def read(self, *records: tuple[bytes | None, bytes | None]) -> LocationsView:
        """Write ``records``, then let the view catch up with the topic."""
        self.write(*records)
        self.view.catch_up()
        return self.view


# -- Location.decode -------------------------------------------------------------------


def test_bad_location_is_a_value_error() -> None:
    assert issubclass(BadLocation, ValueError)


@pytest.mark.parametrize("data", [b"junk", b"\xff\xfe\x00", b"", b"{", b"NaN"])
def test_garbage_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(BadLocation, match="not JSON"):
        Location.decode(data)


@pytest.mark.parametrize(
    "data", [b"[]", b"null", b"1", b'"counts:2"', b"true", orjson.dumps([fields()])]
)
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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("store", 1),
        ("store", ""),
        ("store", None),
        ("store", "a:b"),
        ("store", "a b"),
        ("store", ["counts"]),
        ("partition", True),
        ("partition", False),
        ("partition", "2"),
        ("partition", 2.0),
        ("partition", -1),
        ("partition", 1_000_000),
        ("partition", None),
        ("instance", ""),
        ("instance", 5),
        ("instance", None),
        ("instance", "x" * 201),
        ("url", 5),
        ("url", None),
        ("url", ""),
        ("url", "http://remote/"),
        ("url", "remote:6379"),
        ("url", ["redis://remote"]),
        ("epoch", 1.5),
        ("epoch", 1.0),
        ("epoch", -1),
        ("epoch", 2**53),
        ("epoch", 2**60),
        ("epoch", True),
        ("epoch", "7"),
        ("epoch", None),
        ("complete", "yes"),
        ("complete", 1),
        ("complete", None),
        ("source", 5),
        ("source", ""),
        ("source", "ftp://remote"),
        ("source", ["redis://x"]),
        ("updated_ms", -1),
        ("updated_ms", 1.5),
        ("updated_ms", True),
        ("updated_ms", None),
        ("origins", "redis://x:1/0"),
        ("origins", None),
        ("origins", {"a": 1}),
        ("origins", [5]),
        ("origins", ["http://x"]),
        ("origins", [ASIDE]),
        ("origins", [None]),
        ("origins", [URL] * 65),
        ("aside_tag", 5),
        ("aside_tag", ""),
        ("aside_tag", "x" * 201),
        ("aside_tag", False),
    ],
)
def test_wrong_field_is_refused(name: str, value: Any) -> None:
    with pytest.raises(BadLocation, match=name):
        Location.decode(raw(**{name: value}))


@pytest.mark.parametrize("epoch", [1.5, -1, 2**60])
def test_epoch_refusal_names_the_bound(epoch: float) -> None:
    with pytest.raises(BadLocation, match=r"epoch: expected an integer \[0, 9007199254740992\)"):
        Location.decode(raw(epoch=epoch))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epoch", 0),
        ("epoch", 2**53 - 1),
        ("partition", 0),
        ("partition", 999_999),
        ("url", "rediss://:***@remote:6380/1"),
        ("url", "unix:///run/redis.sock"),
        ("url", "memory://inst-1"),
        ("source", None),
        ("source", "redis://src:1/0"),
        ("origins", []),
        ("origins", [URL, URL + ASIDE, "memory://x"]),
        ("origins", [URL] * 64),
        ("instance", "x" * 200),
        ("store", "A-z_0.9"),
        ("updated_ms", 2**62),
        ("aside_tag", None),
        ("aside_tag", "inst-1@7"),
        ("aside_tag", "x" * 200),
        ("complete", False),
    ],
)
def test_edge_values_are_accepted(name: str, value: Any) -> None:
    decoded = Location.decode(raw(**{name: value}))
    expected = tuple(value) if name == "origins" else value
    assert getattr(decoded, name) == expected


def test_unknown_extra_fields_are_ignored() -> None:
    decoded = Location.decode(raw(shard="b", future={"x": [1, 2]}))
    assert decoded == Location("counts", 2, "inst-1", URL, 7)


def test_defaults_of_optional_fields() -> None:
    decoded = Location.decode(raw())
    assert (
        decoded.complete,
        decoded.source,
        decoded.updated_ms,
        decoded.origins,
        decoded.aside_tag,
    ) == (True, None, 0, (), None)


def test_round_trip_with_every_field() -> None:
    value = Location(
        "counts",
        7,
        "inst-1",
        URL,
        42,
        False,
        "redis://src:1/0",
        1234,
        origins=("redis://x:1/0", URL + ASIDE),
        aside_tag="inst-0@41",
    )
    assert Location.decode(value.encode()) == value
    assert orjson.loads(value.encode())["aside_tag"] == "inst-0@41"


def test_without_aside_tag_the_encoding_has_no_such_field() -> None:
    """A reader without the field (a worker of the previous version, mid-upgrade)
    still reads every record that does not use it."""
    value = Location("counts", 7, "inst-1", URL, 42)
    assert "aside_tag" not in orjson.loads(value.encode())
    assert Location.decode(value.encode()) == value


_URLS = st.sampled_from(["redis://", "rediss://", "unix://", "memory://"]).flatmap(
    lambda scheme: st.text(max_size=30).map(lambda rest: scheme + rest)
)
_NAMES = st.text(min_size=1, max_size=200)


@given(
    st.from_regex(r"[A-Za-z0-9._-]+", fullmatch=True),
    st.integers(0, 999_999),
    _NAMES,
    _URLS,
    st.integers(0, 2**53 - 1),
    st.booleans(),
    st.none() | _URLS,
    st.integers(0, 2**62),
    st.lists(
        st.tuples(_URLS, st.booleans()).map(lambda u: u[0] + ASIDE if u[1] else u[0]), max_size=64
    ).map(tuple),
    st.none() | _NAMES,
)
def test_every_valid_location_round_trips(
    store: str,
    partition: int,
    instance: str,
    url: str,
    epoch: int,
    complete: bool,
    source: str | None,
    updated: int,
    origins: tuple[str, ...],
    aside_tag: str | None,
) -> None:
    value = Location(
        store, partition, instance, url, epoch, complete, source, updated, origins, aside_tag
    )
    assert Location.decode(value.encode()) == value
    assert parse_record(value.key(), value.encode()) == value


# -- round trips and the aside marker --------------------------------------------------


def test_location_round_trip() -> None:
    value = Location("counts", 7, "inst-1", REMOTE, 42, False, "redis://src:1/0", 1234)
    assert Location.decode(value.encode()) == value
    assert value.key() == b"counts:7"
    raw = orjson.loads(value.encode())
    assert raw["complete"] is False and raw["source"] == "redis://src:1/0"


def test_location_origins_round_trip() -> None:
    value = Location("s", 0, "i", REMOTE, 5, False, THIRD, origins=(LOCAL, "redis://x:1/0"))
    decoded = Location.decode(value.encode())
    assert decoded == value and decoded.origins == (LOCAL, "redis://x:1/0")
    # Records written before chains existed have no origins.
    legacy = {k: v for k, v in orjson.loads(value.encode()).items() if k != "origins"}
    assert Location.decode(orjson.dumps(legacy)).origins == ()


def test_location_defaults_round_trip() -> None:
    value = Location("s", 0, "i", "memory://i", 1)
    decoded = Location.decode(value.encode())
    assert decoded == value
    assert decoded.complete is True and decoded.source is None and decoded.updated_ms == 0


def test_aside_marker_round_trips() -> None:
    assert split_aside(aside_of(REMOTE_CONNECT)) == (REMOTE_CONNECT, True)
    assert split_aside(REMOTE) == (REMOTE, False)
    # Published chains carry no secrets, and keep the marker.
    assert redact(aside_of(REMOTE_CONNECT)) == aside_of(redact(REMOTE_CONNECT))
    assert "secret" not in redact(aside_of(REMOTE_CONNECT))


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


# -- LocationsView.catch_up --------------------------------------------------------------


BAD_VALUES = [
    b"junk",
    b"[]",
    b"{}",
    raw(partition=True),
    raw(epoch=1.5),
    raw(epoch=-1),
    raw(epoch=2**60),
    raw(url="http://evil/"),
    raw(origins=["gopher://x"]),
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_view_skips_a_malformed_record(value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    topic = LocationsTopic()
    topic.write(*[(b"counts:9", None)] * 5)  # tombstones of an unknown key: offsets 0-4
    with caplog.at_level(logging.WARNING, "keyshift.migrations.locations"):
        locations = topic.read((b"counts:2", value))
    assert locations.get("counts", 2) is None and locations.all() == []
    assert locations.skipped == 1
    # Which record was skipped is only in the warning's structured fields.
    [record] = caplog.records
    assert record.topic == TOPIC and record.offset == 5  # type: ignore[attr-defined]
    assert "counts:2" in record.key and record.error  # type: ignore[attr-defined]


def test_view_skips_a_key_value_mismatch() -> None:
    locations = LocationsTopic().read((b"counts:3", raw(partition=2)))
    assert locations.get("counts", 2) is None and locations.get("counts", 3) is None
    assert locations.skipped == 1


def test_view_skips_a_record_without_a_key() -> None:
    locations = LocationsTopic().read((None, raw()))
    assert locations.all() == [] and locations.skipped == 1


def test_bad_record_removes_the_earlier_location_of_its_key() -> None:
    """The bad record supersedes the earlier one (and compaction will drop that
    one): the task is left without a location, so the planner replays it."""
    topic = LocationsTopic()
    locations = topic.read((b"counts:2", raw()), (b"counts:1", raw(partition=1)))
    assert locations.get("counts", 2) is not None
    topic.read((b"counts:2", b"junk"))
    assert locations.get("counts", 2) is None
    assert locations.get("counts", 1) == Location("counts", 1, "inst-1", URL, 7)
    assert locations.skipped == 1


def test_mismatched_record_removes_its_key_but_not_the_named_task() -> None:
    locations = LocationsTopic().read(
        (b"counts:2", raw()),
        (b"counts:1", raw(partition=1)),
        (b"counts:1", raw(partition=2, epoch=99)),  # forged: says counts:2
    )
    assert locations.get("counts", 1) is None
    assert locations.get("counts", 2) == Location("counts", 2, "inst-1", URL, 7)


def test_good_record_after_a_bad_one_is_taken() -> None:
    locations = LocationsTopic().read((b"counts:2", b"junk"), (b"counts:2", raw(epoch=8)))
    assert locations.get("counts", 2) == Location("counts", 2, "inst-1", URL, 8)


def test_tombstone_removes_the_location() -> None:
    topic = LocationsTopic()
    locations = topic.read((b"counts:2", raw()), (b"counts:2", None))
    assert locations.get("counts", 2) is None and locations.skipped == 0
    topic.read((b"counts:9", None))  # a tombstone for an unknown key is fine
    assert locations.all() == []


def test_skipped_record_is_counted_once_per_offset() -> None:
    topic = LocationsTopic()
    locations = topic.read((b"counts:2", b"junk"))
    assert locations.skipped == 1
    # The same record read again (the view's consumer rewound), then a new one.
    topic.consumer.seek(TopicPartition(TOPIC, 0, 0))
    topic.read((b"counts:2", b"[]"))
    assert locations.skipped == 2


def test_publish_keeps_aside_tag_and_stamps_the_time() -> None:
    topic = LocationsTopic()
    value = Location("counts", 2, "inst-1", URL, 7, aside_tag="inst-0@6")
    topic.view.publish(value)
    [record] = topic.cluster.records(TOPIC)
    published = Location.decode(record.value())
    assert record.topic() == TOPIC and record.key() == b"counts:2"
    assert published.aside_tag == "inst-0@6" and published.updated_ms > 0
    assert topic.view.get("counts", 2) == published
