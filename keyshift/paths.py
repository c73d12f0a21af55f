"""Where keyshift keeps local files: ``$KEYSHIFT_HOME`` (default ``~/.cache/keyshift``).

The sandbox keeps its jars and run directory there (:mod:`keyshift.dev.paths`),
``keyshift run`` its run file and lock (``run/<app>.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "KEYSHIFT_HOME"


def keyshift_home() -> Path:
    """``$KEYSHIFT_HOME`` or ``~/.cache/keyshift``."""
    given = os.environ.get(HOME_ENV)
    if given:
        return Path(given).expanduser()
    return Path.home() / ".cache" / "keyshift"
