"""Where a worker's Kafka clients and state stores come from.

The worker never constructs a client itself: it asks its :class:`Clients`. The
default makes real confluent-kafka clients and opens stores by URL; tests pass
factories of stand-ins (like Kafka Streams' ``KafkaClientSupplier``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from keyshift.state.base import Store
from keyshift.state.factory import open_store

Config = dict[str, Any]


@dataclass(frozen=True)
class Clients:
    """Factories of a worker's clients, each taking its configuration."""

    consumer: Callable[[Config], Consumer] = Consumer
    producer: Callable[[Config], Producer] = Producer
    admin: Callable[[Config], AdminClient] = AdminClient
    store: Callable[[str], Store] = open_store


KAFKA = Clients()
"""Real Kafka clients; stores opened by URL."""
