"""Progress lines of long operations (a changelog replay, a state copy, a
reset's deletion, state export and import): at most one every
``PROGRESS_EVERY_S``, so a long run shows that it moves without flooding its
log or stderr."""

from __future__ import annotations

import time
from collections.abc import Callable

#: How often a long operation reports its progress.
PROGRESS_EVERY_S = 1.0

Progress = Callable[[str], None]


class Ticker:
    """Says when the next progress line is due. Asking is cheap, so a loop asks
    on every turn and formats its line only when one is due."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return False
        self._last = now
        return True
