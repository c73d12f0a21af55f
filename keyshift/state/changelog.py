"""Changelog record conventions shared by the writer (runtime) and readers (restore).

Each commit writes, per changed key, the key and its latest encoded value (None
= deleted), followed by one *marker* record per changelog partition carrying
the :class:`~keyshift.state.base.Stamp` the state reached. A replay applies
records only up to a marker, so a commit cut short by a crash is never
half-applied.

Markers cannot be forged from input: a marker is a record with key
:data:`MARKER_KEY` *and* the header :data:`MARKER_HEADER`, and the reserved key
is refused as a state key (:func:`check_state_key`), so no input record can put
a record with that key into a changelog. Changelogs written before markers had
the header stay readable: a header-less record with the marker key counts as a
(legacy) marker only until the first marker with the header, and only if its
value decodes as a stamp.

Under at-least-once, a marker's stamp also carries ``first_offset``: the
offset of its commit's first changelog record on that partition. Records
between an earlier marker and that offset belong to a commit whose marker never
landed (the writer crashed between its records and its marker): a replay drops
them instead of applying them with the next marker.
"""

from __future__ import annotations

from keyshift.errors import SerializationError

MARKER_KEY = b"\x00keyshift.stamp"
"""Key of marker records; reserved, refused as a state key."""

MARKER_HEADER = "ks.marker"
"""Header that makes a record with :data:`MARKER_KEY` a marker; its value is the format."""

MARKER_FORMAT = b"2"

MARKER_HEADERS: list[tuple[str, bytes]] = [(MARKER_HEADER, MARKER_FORMAT)]
"""Headers of every marker record this version writes."""

ORIGIN_HEADER = "ks.o"
"""Header on repartition records: upstream partition, offset, index (struct ``>iqi``)."""


def has_marker_header(headers: list[tuple[str, bytes]] | None) -> bool:
    """Whether a record's headers mark it as a marker written by keyshift."""
    return bool(headers) and any(name == MARKER_HEADER for name, _ in headers or ())


def check_state_key(key: bytes) -> None:
    """Refuse the reserved marker key as a state key (it would forge a marker).

    Raises:
        SerializationError: ``key`` is :data:`MARKER_KEY`.
    """
    if key == MARKER_KEY:
        raise SerializationError(
            f"the key {key!r} is reserved for keyshift's changelog markers and cannot be "
            f"used as a state key"
        )
