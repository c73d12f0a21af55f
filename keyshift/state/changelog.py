"""Changelog record conventions shared by the writer (runtime) and readers (restore).

Each commit writes, per changed key, the key and its latest encoded value (None
= deleted), followed by one *marker* record carrying the :class:`Stamp` the
state reached. A replay applies records only up to the last marker, so a
commit cut short by a crash is never half-applied.
"""

from __future__ import annotations

MARKER_KEY = b"\x00keyshift.stamp"
"""Key of marker records (a user key never starts with NUL in practice)."""

ORIGIN_HEADER = "ks.o"
"""Header on repartition records: upstream partition, offset, index (struct ``>iqi``)."""
