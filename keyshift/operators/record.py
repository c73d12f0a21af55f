"""The record type handed to user code that asks for the whole record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Record:
    """One Kafka record, decoded."""

    key: Any
    value: Any
    timestamp: int
    headers: list[tuple[str, bytes]] | None
    topic: str
    partition: int
    offset: int
