"""Changelog replay bounds without a broker: a known empty tail reads nothing."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift.migrations.replay import replay_changelog
from keyshift.state.base import Stamp
from keyshift.state.memory import MemoryStore

pytestmark = pytest.mark.unit


class _NoBroker:
    """A consumer stand-in that fails on any use: proves no broker work is done."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"consumer.{name} called")


def test_known_empty_tail_needs_no_broker() -> None:
    part = MemoryStore().partition("app", "s", 0)
    stamp = Stamp(10, 42, epoch=1)
    consumer: Any = _NoBroker()
    # Nothing beyond the stamp.
    result = replay_changelog(consumer, "t", 0, part, stamp, 2, end=42)
    assert (result.stamp, result.records) == (stamp, 0)
    # Under read_committed one offset before the stable end is a commit marker.
    result = replay_changelog(consumer, "t", 0, part, stamp, 2, end=43, read_committed=True)
    assert (result.stamp, result.records) == (stamp, 0)
