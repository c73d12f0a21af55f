"""Where the sandbox keeps its files.

``$KEYSHIFT_HOME`` (default ``~/.cache/keyshift``) holds the Kafka jars
(``kafka-<version>/libs``) and the run directory ``sandbox/`` with PID files,
configs, data, logs, ``state.json`` and the ``env`` file.
"""

from __future__ import annotations

from pathlib import Path

from keyshift.paths import HOME_ENV, keyshift_home

__all__ = ["HOME_ENV", "env_file", "kafka_dist_dir", "keyshift_home", "run_dir"]


def run_dir() -> Path:
    """The sandbox run directory (PID files, configs, logs, data)."""
    return keyshift_home() / "sandbox"


def env_file() -> Path:
    """Shell file with ``export KEYSHIFT_...`` lines, written by ``up``."""
    return run_dir() / "env"


def kafka_dist_dir(version: str) -> Path:
    """Directory holding ``libs/`` with the jars of one Kafka version."""
    return keyshift_home() / f"kafka-{version}"
