"""Local development sandbox: a KRaft Kafka cluster and Redis servers on 127.0.0.1.

Used by ``keyshift dev up | down | status | env`` and by the test suite::

    from keyshift.dev import up, down, status
    sandbox = up(brokers=1, redis_instances=2)
    sandbox.brokers      # "127.0.0.1:9092"
    sandbox.redis_urls   # ["redis://127.0.0.1:6379/0", ...]
"""

from __future__ import annotations

from keyshift.dev.kafka import DEFAULT_VERSION as DEFAULT_KAFKA_VERSION
from keyshift.dev.sandbox import (
    Sandbox,
    Service,
    down,
    read_env_file,
    status,
    stop_kafka_node,
    up,
)

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "Sandbox",
    "Service",
    "down",
    "read_env_file",
    "status",
    "stop_kafka_node",
    "up",
]
