"""The worker runtime: the loop and its lifecycle, tasks, commits, record sending,
rebalance callbacks and the Kafka clients (see ``docs/architecture.md``)."""

from keyshift.runtime.worker import Worker

__all__ = ["Worker"]
