"""The runtime: app, worker loop, tasks, Kafka clients, rebalance hooks, supervisor."""

from keyshift.app.app import App
from keyshift.app.worker import Worker

__all__ = ["App", "Worker"]
