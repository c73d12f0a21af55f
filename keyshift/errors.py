"""The keyshift exception hierarchy.

Every error raised by keyshift derives from :class:`KeyshiftError`::

    KeyshiftError
    ├── ConfigError          a setting is missing or invalid (names the setting)
    ├── TopologyError        the pipeline cannot be built or run as written
    ├── SerializationError   a key or value cannot be encoded/decoded
    ├── ProcessingError      user code raised while processing a record
    │   └── RecordRejected   Kafka refused one record (too large, invalid): dead-lettered
    ├── BrokerError          Kafka refused or failed an operation
    │   ├── TransactionAbortable  the open transaction must be aborted (exactly-once)
    │   └── InstanceConflict      another process runs with this instance id
    ├── StateError           the state backend failed
    │   └── FencedError      another owner took the task over (zombie fencing)
    ├── MigrationError       moving a task's state to its new owner failed
    └── SandboxError         the local Kafka/Redis sandbox could not start or stop

Messages say what happened and what the operator can do about it.
"""

from __future__ import annotations


class KeyshiftError(Exception):
    """Root of all keyshift errors."""


class ConfigError(KeyshiftError):
    """A setting is missing or invalid. The message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"invalid setting {setting!r}: {problem}")


class TopologyError(KeyshiftError):
    """The pipeline definition cannot be built or does not match the cluster."""


class SerializationError(KeyshiftError):
    """A key or value could not be serialized or deserialized."""


class ProcessingError(KeyshiftError):
    """User code raised an exception while processing a record."""


class RecordRejected(ProcessingError):
    """Kafka refused one record for what it is (too large for its topic, invalid),
    not because of the cluster's state: the record goes to the dead-letter topic."""


class BrokerError(KeyshiftError):
    """Kafka refused or failed an operation."""


class InstanceConflict(BrokerError):
    """Another process runs with this instance id (its transactions fenced ours).

    A supervisor must not restart a worker that failed with it: the two would
    fence each other in turn. ``keyshift worker`` exits with :attr:`exit_code`."""

    exit_code = 3


class TransactionAbortable(BrokerError):
    """The open transaction can no longer commit and must be aborted (exactly-once)."""


class StateError(KeyshiftError):
    """The state backend failed."""


class FencedError(StateError):
    """A newer owner holds the task: this instance must drop it."""


class StateLostError(StateError):
    """The task's state vanished from the store under its owner (the server
    restarted empty or was flushed): the owner epoch it claimed is gone.

    The worker stops rather than carry on from empty state; the task's next
    owner finds no stamp and replays the changelog."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(
            f"{where}: {detail}: the task's state is gone from the store "
            "(restarted empty or flushed); the worker stops and the task's "
            "next owner replays its changelog"
        )


class MigrationError(KeyshiftError):
    """Bringing a task's state to its new owner failed."""


class SandboxError(KeyshiftError):
    """The local Kafka/Redis sandbox could not be started, found or stopped."""
