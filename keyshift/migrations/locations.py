"""Where each task's state lives: the compacted ``<app>--state-locations`` topic.

Key ``<store>:<partition>``; value a :class:`Location` (instance, Redis URL
without secrets, owner epoch, whether a progressive copy is still running and
from where). Every worker keeps a live view; credentials for another
instance's Redis are never published, only matched from local configuration.

Anyone who can write the topic can publish any bytes, so a record is checked
before it is used (:meth:`Location.decode`, :func:`parse_record`): a record
that breaks the schema is refused with :class:`BadLocation`, never with
whatever error the bad value happens to trigger further on.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from keyshift.errors import BrokerError
from keyshift.polling import consume_available
from keyshift.retry import DEFAULT_RETRY

log = logging.getLogger("keyshift.migrations.locations")

#: Marks a chain entry that names a Redis's *aside copy* of the task's data
#: (``StorePartition.set_aside``) instead of its live data.
ASIDE = "#aside"


def aside_of(url: str) -> str:
    """The chain entry for ``url``'s aside copy."""
    return url + ASIDE


def split_aside(url: str) -> tuple[str, bool]:
    """``(url without the marker, whether it names an aside copy)``."""
    if url.endswith(ASIDE):
        return url[: -len(ASIDE)], True
    return url, False


#: Location URLs must use one of these schemes (what ``state`` and ``peers`` take).
URL_SCHEMES = ("redis://", "rediss://", "unix://", "memory://")
#: Partitions are below this: far above any topic's partition count, it bounds
#: what a record may name.
MAX_PARTITION = 1_000_000
#: Epochs are below this: the Redis claim script does arithmetic on the epoch in
#: Lua, whose numbers are doubles, exact only for integers below 2**53.
MAX_EPOCH = 2**53
#: The longest ``instance`` and ``aside_tag``.
MAX_NAME_CHARS = 200
#: The most entries in ``origins``.
MAX_ORIGINS = 64

_STORE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class BadLocation(ValueError):
    """A state-locations record that does not follow the :class:`Location` schema."""


def _show(value: object) -> str:
    """A short, printable form of a rejected value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(fields: dict[str, Any], name: str, low: int, high: int | None) -> int:
    value = fields[name]
    # bool is an int subclass; a float (even 1.0) is not an epoch or an offset.
    if type(value) is not int or value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise BadLocation(f"{name}: expected an integer {bound}, got {_show(value)}")
    return value


def _name(fields: dict[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise BadLocation(
            f"{name}: expected a string of 1-{MAX_NAME_CHARS} characters, got {_show(value)}"
        )
    return value


def _url(name: str, value: object, *, aside: bool = False) -> str:
    """``value`` if it is a URL string with a known scheme (``aside``: optionally
    ending in :data:`ASIDE`)."""
    if isinstance(value, str) and (split_aside(value)[0] if aside else value).startswith(
        URL_SCHEMES
    ):
        return value
    raise BadLocation(
        f"{name}: expected a URL starting with {', '.join(URL_SCHEMES)}, got {_show(value)}"
    )


@dataclass(frozen=True, slots=True)
class Location:
    store: str
    partition: int
    instance: str
    url: str
    epoch: int
    complete: bool = True
    source: str | None = None
    updated_ms: int = 0
    #: During a chained copy: the earlier sources, newest first, holding the
    #: keys that are not at ``source`` yet (an entry ending in ``#aside`` names
    #: that Redis's aside copy).
    origins: tuple[str, ...] = ()
    #: The move under which an aside copy was made (see
    #: ``StorePartition.set_aside``), if any.
    aside_tag: str | None = None

    def key(self) -> bytes:
        return f"{self.store}:{self.partition}".encode()

    def encode(self) -> bytes:
        """The record value. ``aside_tag`` is left out while it is None: a reader
        without that field (an older worker during a rolling upgrade) still
        reads the records that do not use it."""
        fields = asdict(self)
        if fields["aside_tag"] is None:
            del fields["aside_tag"]
        return orjson.dumps(fields)

    @classmethod
    def decode(cls, data: bytes) -> Location:
        """Parse and check a record value; :class:`BadLocation` if it breaks the schema.

        Rules: a JSON object with ``store`` (1+ characters of ``[A-Za-z0-9._-]``,
        so the record key ``<store>:<partition>`` is unambiguous), ``partition``
        (integer in [0, :data:`MAX_PARTITION`)), ``instance`` (1-200 characters),
        ``url`` (a :data:`URL_SCHEMES` URL), ``epoch`` (integer in [0, 2**53):
        the claim script adds to it in Lua doubles), and optionally ``complete``
        (bool, default True), ``source`` (None or a URL), ``updated_ms``
        (integer >= 0, default 0), ``origins`` (up to 64 URLs, each optionally
        ending in ``#aside``, default none), ``aside_tag`` (None or 1-200
        characters). Integers are never bools or floats. Other fields are
        ignored, so a later version may add fields that this one reads past.
        """
        try:
            fields = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadLocation(f"not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise BadLocation(f"expected a JSON object, got {type(fields).__name__}")
        missing = [
            name
            for name in ("store", "partition", "instance", "url", "epoch")
            if name not in fields
        ]
        if missing:
            raise BadLocation(f"missing field(s): {', '.join(missing)}")
        store = fields["store"]
        if not isinstance(store, str) or not _STORE_NAME.fullmatch(store):
            raise BadLocation(
                f"store: expected 1+ characters of [A-Za-z0-9._-], got {_show(store)}"
            )
        complete = fields.get("complete", True)
        if not isinstance(complete, bool):
            raise BadLocation(f"complete: expected true or false, got {_show(complete)}")
        source = fields.get("source")
        origins = fields.get("origins", [])
        if not isinstance(origins, list) or len(origins) > MAX_ORIGINS:
            raise BadLocation(
                f"origins: expected a list of at most {MAX_ORIGINS} URLs, got {_show(origins)}"
            )
        aside_tag = fields.get("aside_tag")
        return cls(
            store=store,
            partition=_int(fields, "partition", 0, MAX_PARTITION),
            instance=_name(fields, "instance"),
            url=_url("url", fields["url"]),
            epoch=_int(fields, "epoch", 0, MAX_EPOCH),
            complete=complete,
            source=None if source is None else _url("source", source),
            updated_ms=_int(fields, "updated_ms", 0, None) if "updated_ms" in fields else 0,
            origins=tuple(_url(f"origins[{i}]", url, aside=True) for i, url in enumerate(origins)),
            aside_tag=None if aside_tag is None else _name(fields, "aside_tag"),
        )


def parse_record(key: bytes | None, value: bytes | None) -> Location | None:
    """The location a record of the topic publishes; None for a tombstone.

    :class:`BadLocation` if the key is missing, the value breaks the schema
    (:meth:`Location.decode`), or the key is not the value's
    ``<store>:<partition>``: a value filed under another task's key is not
    trusted for either task.
    """
    if key is None:
        raise BadLocation("record without a key")
    if value is None:
        return None
    location = Location.decode(value)
    if location.key() != key:
        raise BadLocation(f"key {_show(key)} does not match the value's {_show(location.key())}")
    return location


class LocationsView:
    """A live, local copy of the locations topic plus a way to publish to it."""

    def __init__(
        self,
        topic: str,
        consumer_conf: dict[str, object],
        producer_conf: dict[str, object],
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
    ) -> None:
        self.topic = topic
        self._consumer = consumer if consumer is not None else Consumer(consumer_conf)
        self._consumer.assign([TopicPartition(topic, 0, 0)])
        self._producer = producer if producer is not None else Producer(producer_conf)
        self._locations: dict[bytes, Location] = {}
        self._next_offset = 0
        #: Malformed records skipped (see :meth:`_apply`).
        self.skipped = 0
        self._last_skipped_offset = -1

    def catch_up(self, end: int | None = None, timeout_s: float = 10.0) -> None:
        """Read the topic up to ``end`` (default: the end it has now)."""
        high = end
        if high is None:
            tp = TopicPartition(self.topic, 0)
            _, high = DEFAULT_RETRY.call(
                lambda: self._consumer.get_watermark_offsets(tp, timeout=timeout_s),
                f"offsets of {self.topic}",
            )
        deadline = time.monotonic() + timeout_s
        while self._next_offset < high:
            if time.monotonic() > deadline:
                log.warning("state locations not fully read in time", extra={"topic": self.topic})
                return
            for msg in consume_available(self._consumer, 1000, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {self.topic}: {err}")
                    continue
                self._next_offset = msg.offset() + 1
                self._apply(msg.key(), msg.value(), msg.offset())

    def _apply(self, key: bytes | None, value: bytes | None, offset: int | None = None) -> None:
        """Take one record into the view; never raises.

        A tombstone removes the key's location. A malformed record
        (:func:`parse_record`) is skipped, logged and counted in
        :attr:`skipped` once per offset, and also removes the key's earlier
        location: that one is superseded by the bad record, compaction
        will drop it (so keeping it would make workers disagree depending
        on when they read the topic), and without a location the planner
        replays the task from its changelog, which is always correct.
        """
        try:
            location = parse_record(key, value)
        except BadLocation as exc:
            if key is not None:
                self._locations.pop(key, None)
            if offset is None or offset > self._last_skipped_offset:
                if offset is not None:
                    self._last_skipped_offset = offset
                self.skipped += 1
                log.warning(
                    "skipping a malformed state location",
                    extra={
                        "topic": self.topic,
                        "offset": offset,
                        "key": None if key is None else _show(key),
                        "error": str(exc),
                    },
                )
            return
        assert key is not None  # parse_record refuses a record without one
        if location is None:
            self._locations.pop(key, None)
        else:
            self._locations[key] = location

    def get(self, store: str, partition: int) -> Location | None:
        return self._locations.get(f"{store}:{partition}".encode())

    def all(self) -> list[Location]:
        return list(self._locations.values())

    def publish(self, location: Location, *, flush: bool = True) -> None:
        """Record where a task's state lives (``flush=False`` batches until :meth:`flush`)."""
        location = replace(location, updated_ms=int(time.time() * 1000))
        self._producer.produce(self.topic, location.encode(), location.key())
        self._locations[location.key()] = location
        if flush:
            self.flush()

    def flush(self) -> None:
        if self._producer.flush(15):
            raise BrokerError(f"could not publish state locations to {self.topic}")

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(5)
