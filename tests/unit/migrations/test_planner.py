"""The migration planner: which strategy moves a task's state, from where."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keyshift.migrations.locations import Location, aside_of
from keyshift.migrations.planner import Plan, plan

pytestmark = pytest.mark.unit

LOCAL = "redis://local:6379/0"
REMOTE = "redis://remote:6379/0"
REMOTE_CONNECT = "redis://:secret@remote:6379/0"
MODES = ["auto", "progressive", "stop-and-copy", "replay"]


def loc(
    url: str = REMOTE, *, complete: bool = True, source: str | None = None, epoch: int = 3
) -> Location:
    return Location("counts", 2, "other-instance", url, epoch, complete, source)


class Resolver:
    """A resolve() that maps known URLs and records what it was asked."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def __call__(self, url: str) -> str | None:
        self.asked.append(url)
        return self.known.get(url)


def reach(*urls: str) -> Callable[[str], bool]:
    return lambda url: url in urls


def never(url: str) -> Any:
    raise AssertionError(f"must not be called ({url})")


def check(
    result: Plan, strategy: str, source_url: str | None = None, *, resume: bool = False
) -> None:
    assert result.strategy == strategy
    assert result.source_url == source_url
    assert result.resume is resume
    # Every replay rebuilds from scratch; nothing else clears local state.
    assert result.clear_local is (strategy == "replay")
    assert result.reason.strip()


# -- plan -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_no_location_replays(mode: str) -> None:
    check(plan(None, LOCAL, mode, never, never), "replay")


@pytest.mark.parametrize("mode", MODES)
def test_same_url_complete_is_handoff(mode: str) -> None:
    # Even a forced mode uses handoff when the state is already local.
    check(plan(loc(LOCAL), LOCAL, mode, never, never), "handoff")


@pytest.mark.parametrize("mode", MODES)
def test_same_url_incomplete_resumes_progressive_copy(mode: str) -> None:
    resolve = Resolver({REMOTE: REMOTE_CONNECT})
    result = plan(
        loc(LOCAL, complete=False, source=REMOTE), LOCAL, mode, resolve, reach(REMOTE_CONNECT)
    )
    check(result, "progressive", REMOTE_CONNECT, resume=True)
    assert resolve.asked == [REMOTE]


def test_same_url_incomplete_source_unresolvable_replays_clearing_local() -> None:
    result = plan(loc(LOCAL, complete=False, source=REMOTE), LOCAL, "auto", Resolver({}), never)
    check(result, "replay")


def test_same_url_incomplete_source_unreachable_replays_clearing_local() -> None:
    result = plan(
        loc(LOCAL, complete=False, source=REMOTE),
        LOCAL,
        "auto",
        Resolver({REMOTE: REMOTE_CONNECT}),
        reach(),
    )
    check(result, "replay")


@pytest.mark.parametrize("source", [None, ""])
def test_same_url_incomplete_without_source_replays_clearing_local(source: str | None) -> None:
    result = plan(loc(LOCAL, complete=False, source=source), LOCAL, "auto", never, never)
    check(result, "replay")


def test_forced_replay() -> None:
    check(plan(loc(), LOCAL, "replay", never, never), "replay")
    assert "replay" in plan(loc(), LOCAL, "replay", never, never).reason


@pytest.mark.parametrize("mode", ["auto", "progressive", "stop-and-copy"])
def test_unresolvable_source_replays(mode: str) -> None:
    resolve = Resolver({})
    result = plan(loc(), LOCAL, mode, resolve, never)
    check(result, "replay")
    assert REMOTE in result.reason
    assert resolve.asked == [REMOTE]


@pytest.mark.parametrize("mode", ["auto", "progressive", "stop-and-copy"])
def test_unreachable_source_replays(mode: str) -> None:
    asked: list[str] = []

    def reachable(url: str) -> bool:
        asked.append(url)
        return False

    result = plan(loc(), LOCAL, mode, Resolver({REMOTE: REMOTE_CONNECT}), reachable)
    check(result, "replay")
    assert asked == [REMOTE_CONNECT]  # the connectable URL is probed
    assert "secret" not in result.reason


THIRD = "redis://third:6379/0"
THIRD_CONNECT = "redis://:pw@third:6379/0"


@pytest.mark.parametrize("mode", ["auto", "progressive", "stop-and-copy"])
def test_incomplete_source_with_unknown_origin_replays(mode: str) -> None:
    result = plan(
        loc(complete=False, source=THIRD),
        LOCAL,
        mode,
        Resolver({REMOTE: REMOTE_CONNECT}),
        reach(REMOTE_CONNECT),
    )
    check(result, "replay")


@pytest.mark.parametrize("mode", ["auto", "progressive"])
def test_incomplete_source_chains_to_its_origin(mode: str) -> None:
    resolve = Resolver({REMOTE: REMOTE_CONNECT, THIRD: THIRD_CONNECT})
    result = plan(
        loc(complete=False, source=THIRD),
        LOCAL,
        mode,
        resolve,
        reach(REMOTE_CONNECT, THIRD_CONNECT),
    )
    check(result, "progressive", REMOTE_CONNECT)
    assert result.origin_urls == (THIRD_CONNECT,)
    assert "chained" in result.reason and "pw" not in result.reason


def test_incomplete_source_unreachable_origin_replays() -> None:
    result = plan(
        loc(complete=False, source=THIRD),
        LOCAL,
        "auto",
        Resolver({REMOTE: REMOTE_CONNECT, THIRD: THIRD_CONNECT}),
        reach(REMOTE_CONNECT),
    )
    check(result, "replay")


def test_chains_extend_through_every_earlier_source() -> None:
    older = "redis://x:1/0"
    location = Location("counts", 2, "other", REMOTE, 3, False, THIRD, origins=(older,))
    known = {REMOTE: REMOTE_CONNECT, THIRD: THIRD_CONNECT, older: older}
    result = plan(
        location, LOCAL, "auto", Resolver(known), reach(REMOTE_CONNECT, THIRD_CONNECT, older)
    )
    check(result, "progressive", REMOTE_CONNECT)
    assert result.origin_urls == (THIRD_CONNECT, older)
    # Any missing link and the chain cannot be followed.
    check(
        plan(location, LOCAL, "auto", Resolver(known), reach(REMOTE_CONNECT, THIRD_CONNECT)),
        "replay",
    )


def test_same_url_incomplete_chained_copy_resumes_with_both_sources() -> None:
    location = Location("counts", 2, "me", LOCAL, 3, False, REMOTE, origins=(THIRD,))
    resolve = Resolver({REMOTE: REMOTE_CONNECT, THIRD: THIRD_CONNECT})
    result = plan(location, LOCAL, "auto", resolve, reach(REMOTE_CONNECT, THIRD_CONNECT))
    check(result, "progressive", REMOTE_CONNECT, resume=True)
    assert result.origin_urls == (THIRD_CONNECT,)
    gone = plan(location, LOCAL, "auto", resolve, reach(REMOTE_CONNECT))
    check(gone, "replay")


def test_forced_stop_and_copy() -> None:
    result = plan(
        loc(), LOCAL, "stop-and-copy", Resolver({REMOTE: REMOTE_CONNECT}), reach(REMOTE_CONNECT)
    )
    check(result, "stop-and-copy", REMOTE_CONNECT)


@pytest.mark.parametrize("mode", ["auto", "progressive"])
def test_auto_and_progressive_copy_progressively(mode: str) -> None:
    result = plan(loc(), LOCAL, mode, Resolver({REMOTE: REMOTE_CONNECT}), reach(REMOTE_CONNECT))
    check(result, "progressive", REMOTE_CONNECT)
    assert "secret" not in result.reason


def test_plan_defaults() -> None:
    assert Plan("replay") == Plan("replay", None, False, False, "")


def test_chain_back_to_this_instance_sets_local_data_aside() -> None:
    """The task moved away and back mid-copy: the old keys here are older than the
    source's, so they are set aside and read after it, never overwriting it."""
    resolver = Resolver({REMOTE: REMOTE_CONNECT, LOCAL: LOCAL})
    result = plan(
        loc(complete=False, source=LOCAL), LOCAL, "auto", resolver, reach(REMOTE_CONNECT, LOCAL)
    )
    check(result, "progressive", REMOTE_CONNECT)
    assert result.set_aside and result.origin_urls == (aside_of(LOCAL),)
    assert "set aside" in result.reason
    # Deeper: this Redis in the middle of the chain keeps its place in the order.
    location = Location("counts", 2, "other", REMOTE, 3, False, THIRD, origins=(LOCAL, "x"))
    result = plan(
        location,
        LOCAL,
        "auto",
        Resolver({REMOTE: REMOTE_CONNECT, THIRD: THIRD_CONNECT, LOCAL: LOCAL, "x": "x"}),
        reach(REMOTE_CONNECT, THIRD_CONNECT, LOCAL, "x"),
    )
    assert result.origin_urls == (THIRD_CONNECT, aside_of(LOCAL), "x") and result.set_aside
    # stop-and-copy does not chain.
    check(
        plan(
            loc(complete=False, source=LOCAL),
            LOCAL,
            "stop-and-copy",
            resolver,
            reach(REMOTE_CONNECT, LOCAL),
        ),
        "replay",
    )


def test_chain_with_this_instance_twice_replays() -> None:
    """One aside slot per Redis: a chain holding both this Redis and its aside copy
    (or an interrupted copy here listing itself) cannot be followed."""
    both = Location("counts", 2, "other", REMOTE, 3, False, LOCAL, origins=(aside_of(LOCAL),))
    check(
        plan(
            both,
            LOCAL,
            "auto",
            Resolver({REMOTE: REMOTE_CONNECT, LOCAL: LOCAL}),
            reach(REMOTE_CONNECT, LOCAL),
        ),
        "replay",
    )
    location = Location("counts", 2, "me", LOCAL, 3, False, REMOTE, origins=(LOCAL,))
    check(
        plan(location, LOCAL, "auto", Resolver({REMOTE: REMOTE_CONNECT}), reach(REMOTE_CONNECT)),
        "replay",
    )


def test_interrupted_copy_with_an_aside_origin_resumes() -> None:
    """The copy here was reading this Redis's aside copy when it stopped: resume it."""
    location = Location("counts", 2, "me", LOCAL, 3, False, REMOTE, origins=(aside_of(LOCAL),))
    result = plan(
        location,
        LOCAL,
        "auto",
        Resolver({REMOTE: REMOTE_CONNECT, LOCAL: LOCAL}),
        reach(REMOTE_CONNECT, LOCAL),
    )
    check(result, "progressive", REMOTE_CONNECT, resume=True)
    assert result.origin_urls == (aside_of(LOCAL),) and not result.set_aside
