"""Where the sandbox keeps its files.

``$KEYSHIFT_HOME`` (default ``~/.cache/keyshift``) holds the Kafka jars
(``kafka-<version>/libs``) and the run directory ``sandbox/`` with PID files,
configs, data, logs, ``state.json`` and the ``env`` file.
"""

from __future__ import annotations

from pathlib import Path

from keyshift.paths import HOME_ENV, keyshift_home

__all__ = [
    "HOME_ENV",
    "env_file",
    "kafka_dir",
    "kafka_dist_dir",
    "kafka_log",
    "kafka_pid_file",
    "kafka_props",
    "keyshift_home",
    "redis_dir",
    "redis_log",
    "redis_pid_file",
    "run_dir",
]


def run_dir() -> Path:
    """The sandbox run directory (PID files, configs, logs, data)."""
    return keyshift_home() / "sandbox"


def env_file() -> Path:
    """Shell file with ``export KEYSHIFT_...`` lines, written by ``up``."""
    return run_dir() / "env"


def kafka_dist_dir(version: str) -> Path:
    """Directory holding ``libs/`` with the jars of one Kafka version."""
    return keyshift_home() / f"kafka-{version}"


# The files of broker node or Redis ``index`` in the run directory ``run``.
def kafka_dir(run: Path, index: int) -> Path:
    return run / f"kafka-{index}"


def kafka_pid_file(run: Path, index: int) -> Path:
    return run / f"kafka-{index}.pid"


def kafka_props(run: Path, index: int) -> Path:
    return kafka_dir(run, index) / "server.properties"


def kafka_log(run: Path, index: int) -> Path:
    return kafka_dir(run, index) / "kafka.log"


def redis_dir(run: Path, index: int) -> Path:
    return run / f"redis-{index}"


def redis_pid_file(run: Path, index: int) -> Path:
    return run / f"redis-{index}.pid"


def redis_log(run: Path, index: int) -> Path:
    return redis_dir(run, index) / "redis.log"
