"""Choose how a newly assigned task's state reaches this instance.

``auto`` (the default) prefers, in order:

* **handoff** - the state already lives where this instance reads it (shared
  Redis, or this instance's own Redis): take ownership, replay the tail;
* **progressive** transfer - another reachable Redis holds it: resume at once,
  fetch keys on demand, copy the rest in the background; when that Redis is
  itself mid-copy, the copy is *chained*: keys come from it first, then from
  its own sources, newest first; when this instance's own Redis is one of
  those sources (the task comes back mid-copy), its stale data is *set aside*
  (an O(1) rename) and read as that source, so nothing is overwritten;
* **replay** - nothing reachable holds it: clear what this instance's Redis
  holds for the task and rebuild it from the changelog.

A forced mode (``progressive``, ``stop-and-copy``, ``replay``) replaces the
transfer step; handoff is still used when the state is already local.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from keyshift.migrations.locations import Location, aside_of, split_aside

Strategy = Literal["handoff", "progressive", "stop-and-copy", "replay"]


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: Strategy
    source_url: str | None = None
    resume: bool = False
    clear_local: bool = False
    reason: str = ""
    #: Chained copy: the source's own sources, newest first (connectable URLs;
    #: an entry ending in ``#aside`` names that Redis's aside copy).
    origin_urls: tuple[str, ...] = ()
    #: Move this instance's data for the task aside first: it is one of the
    #: (older) sources of the chain, read as ``<local>#aside``.
    set_aside: bool = False


def replay_plan(reason: str) -> Plan:
    """Rebuild from the changelog, from scratch.

    Whatever this instance's Redis holds for the task is not trusted: it may be
    a progressive copy cut short, whose stamp is current while keys are missing.
    Only handoff reads local state as it is.
    """
    return Plan("replay", clear_local=True, reason=reason)


def _connect(
    location: Location,
    local_url: str,
    resolve: Callable[[str], str | None],
    reachable: Callable[[str], bool],
) -> tuple[tuple[str, ...], bool] | None:
    """Connectable URLs of the copy chain behind ``location`` (its source, then its
    origins), and whether this instance's data must be set aside; None if any
    link is missing.

    When this instance's own Redis is a link, its keys there are older than
    the links before it: they are set aside and read from there. A chain that
    already holds an aside copy of this Redis is refused (one aside slot).
    """
    urls = [location.source or "", *location.origins]
    set_aside = local_url in urls
    if set_aside:
        if aside_of(local_url) in urls or location.url == local_url:
            return None
        urls = [aside_of(local_url) if url == local_url else url for url in urls]
    out = []
    for url in urls:
        base, aside = split_aside(url)
        connect = base and resolve(base)
        if not connect or not reachable(connect):
            return None
        out.append(aside_of(connect) if aside else connect)
    return tuple(out), set_aside


def plan(
    location: Location | None,
    local_url: str,
    mode: str,
    resolve: Callable[[str], str | None],
    reachable: Callable[[str], bool],
) -> Plan:
    """Decide the strategy for one store partition.

    Args:
        location: the last published location of the state, if any.
        local_url: this instance's state URL without secrets.
        mode: the ``migration`` setting.
        resolve: maps a URL without secrets to a connectable URL (local config only).
        reachable: whether a connectable URL answers.
    """
    if location is None:
        return replay_plan("no recorded location")
    if location.url == local_url:
        return _plan_local(location, local_url, resolve, reachable)
    if mode == "replay":
        return replay_plan("migration=replay")
    source = resolve(location.url)
    if source is None:
        return replay_plan(f"no credentials configured for {location.url}")
    if not reachable(source):
        return replay_plan(f"{location.url} is unreachable")
    if not location.complete:
        return _plan_chained(location, local_url, mode, source, resolve, reachable)
    if mode == "stop-and-copy":
        return Plan("stop-and-copy", source, reason="migration=stop-and-copy")
    return Plan("progressive", source, reason=f"state lives in {location.url}")


def _plan_local(
    location: Location,
    local_url: str,
    resolve: Callable[[str], str | None],
    reachable: Callable[[str], bool],
) -> Plan:
    """The state was last here: hand it over, or finish an interrupted copy."""
    if location.complete:
        return Plan("handoff", reason="state is already in this instance's Redis")
    connected = _connect(location, local_url, resolve, reachable)
    if connected is None:
        return replay_plan("interrupted copy whose source is gone")
    chain = connected[0]
    return Plan(
        "progressive",
        chain[0],
        resume=True,
        origin_urls=chain[1:],
        reason="finishing an interrupted progressive copy",
    )


def _plan_chained(
    location: Location,
    local_url: str,
    mode: str,
    source: str,
    resolve: Callable[[str], str | None],
    reachable: Callable[[str], bool],
) -> Plan:
    """The source is itself still copying: copy from it and its own sources."""
    connected = None
    if mode != "stop-and-copy":
        connected = _connect(location, local_url, resolve, reachable)
    if connected is None:
        return replay_plan("the source itself holds an incomplete copy")
    chain, set_aside = connected
    reason = f"chained: {location.url} is still copying from {location.source}"
    if set_aside:
        reason += "; this instance's older copy is set aside and read last"
    return Plan("progressive", source, origin_urls=chain, set_aside=set_aside, reason=reason)
