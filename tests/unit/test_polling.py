"""consume_available: take what is ready, wait only while nothing is."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift.polling import consume_available


class _Queue:
    """A consumer stand-in over a fixed queue; records each consume() call."""

    def __init__(self, ready: list[str], later: list[str]) -> None:
        self.ready, self.later = ready, later
        self.calls: list[tuple[int, float]] = []

    def consume(self, num: int, timeout: float) -> list[str]:
        self.calls.append((num, timeout))
        if not self.ready and timeout > 0:
            self.ready, self.later = self.later, []
        taken, self.ready = self.ready[:num], self.ready[num:]
        return taken


@pytest.mark.unit
def test_ready_messages_are_taken_without_waiting() -> None:
    q: Any = _Queue(["a", "b", "c"], [])
    assert consume_available(q, 2, 5.0) == ["a", "b"]
    assert q.calls == [(2, 0)]


@pytest.mark.unit
def test_waits_for_the_first_only_then_drains() -> None:
    q: Any = _Queue([], ["a", "b", "c"])
    assert consume_available(q, 10, 5.0) == ["a", "b", "c"]
    # Never a blocking call for more than one message.
    assert q.calls == [(10, 0), (1, 5.0), (9, 0)]


@pytest.mark.unit
def test_nothing_arrives() -> None:
    q: Any = _Queue([], [])
    assert consume_available(q, 10, 0.5) == []
    assert consume_available(q, 10, 0) == []
    assert q.calls == [(10, 0), (1, 0.5), (10, 0)]
