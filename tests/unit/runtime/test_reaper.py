"""The reaper frees dropped caches a slice per turn (pure unit tests)."""

from __future__ import annotations

import weakref

import pytest

from keyshift.runtime.reaper import Reaper

pytestmark = pytest.mark.unit


def test_each_turn_frees_at_most_one_slice_until_nothing_is_left() -> None:
    first = {i: [i] for i in range(7)}
    second = {i: [i] for i in range(5)}
    reaper = Reaper(slice_entries=4)
    reaper.add([first, {}, second])
    assert reaper.pending() == 12 and reaper
    assert [reaper.reap() for _ in range(4)] == [4, 4, 4, 0]
    assert reaper.pending() == 0 and not reaper
    assert first == {} and second == {}


def test_the_freed_values_are_released_when_reaped_not_before() -> None:
    class Value:
        pass

    value = Value()
    alive = weakref.ref(value)
    reaper = Reaper(slice_entries=1)
    reaper.add([{b"k": value, b"j": Value()}])
    del value
    assert alive() is not None
    reaper.reap()  # frees the entry added last
    assert alive() is not None
    reaper.reap()
    assert alive() is None
