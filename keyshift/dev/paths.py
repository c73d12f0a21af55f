"""Where the sandbox keeps its files.

``$KEYSHIFT_HOME`` (default ``~/.cache/keyshift``) holds the Kafka jars
(``kafka-<version>/libs``) and the run directory ``sandbox/`` with PID files,
configs, data, logs, ``state.json`` and the ``env`` file.
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


def run_dir() -> Path:
    """The sandbox run directory (PID files, configs, logs, data)."""
    return keyshift_home() / "sandbox"


def env_file() -> Path:
    """Shell file with ``export KEYSHIFT_...`` lines, written by ``up``."""
    return run_dir() / "env"


def kafka_dist_dir(version: str) -> Path:
    """Directory holding ``libs/`` with the jars of one Kafka version."""
    return keyshift_home() / f"kafka-{version}"
