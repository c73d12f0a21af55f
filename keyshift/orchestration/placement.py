"""Where an app's state lives, read from outside the app (status, export, import).

The locations topic names each task's Redis without its credentials; a reader
connects only to servers its own configuration names (``state`` and
``peers``), matched by their redacted form.
"""

from __future__ import annotations

from collections.abc import Iterable

from keyshift.config import Settings
from keyshift.migrations.locations import BadLocation, Location, parse_record
from keyshift.urls import redact


def latest_locations(
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> tuple[dict[bytes, Location], int]:
    """The current location per key of the locations topic's ``(key, value)``
    records, in log order, and how many records were malformed.

    Same rules as the workers' view (``LocationsView._apply``): a tombstone
    removes the key; a malformed record is skipped and removes the key's
    earlier location, which it supersedes.
    """
    latest: dict[bytes, Location] = {}
    skipped = 0
    for key, value in records:
        try:
            location = parse_record(key, value)
        except BadLocation:
            skipped += 1
            if key is not None:
                latest.pop(key, None)
            continue
        assert key is not None  # parse_record refuses a record without one
        if location is None:
            latest.pop(key, None)
        else:
            latest[key] = location
    return latest, skipped


def connectable(url: str, settings: Settings) -> str | None:
    """The URL, with credentials, under which a published location's Redis may
    be read: only this configuration's ``state`` or one of its ``peers``,
    matched by their redacted form. A location names any server its writer
    likes; a reader never connects to one it was not configured with."""
    known = {redact(u): u for u in (*settings.peers, settings.state)}
    connect = known.get(url)
    if connect is None or not connect.startswith(("redis://", "rediss://", "unix://")):
        return None
    return connect


def redis_urls(settings: Settings) -> list[str]:
    """Every Redis this configuration names (``state``, then ``peers``), once each;
    ``memory://`` stores are left out (they live inside a worker process)."""
    out: list[str] = []
    for url in (settings.state, *settings.peers):
        if url.startswith(("redis://", "rediss://", "unix://")) and url not in out:
            out.append(url)
    return out
