"""Choose how a newly assigned task's state reaches this instance.

``auto`` (the default) prefers, in order:

* **handoff** - the state already lives where this instance reads it (shared
  Redis, or this instance's own Redis): take ownership, replay the tail;
* **progressive** transfer - another reachable Redis holds it: resume at once,
  fetch keys on demand, copy the rest in the background; when that Redis is
  itself mid-copy, the copy is *chained*: keys come from it first, then from
  its own sources, newest first;
* **replay** - nothing reachable holds it: clear what this instance's Redis
  holds for the task and rebuild it from the changelog.

A forced mode (``progressive``, ``stop-and-copy``, ``replay``) replaces the
transfer step; handoff is still used when the state is already local.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from keyshift.migrations.locations import Location

Strategy = Literal["handoff", "progressive", "stop-and-copy", "replay"]


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: Strategy
    source_url: str | None = None
    resume: bool = False
    clear_local: bool = False
    reason: str = ""
    #: Chained copy: the source's own sources, newest first (connectable URLs).
    origin_urls: tuple[str, ...] = ()


def _replay(reason: str) -> Plan:
    """Rebuild from the changelog, from scratch.

    Whatever this instance's Redis holds for the task is not trusted: it may be
    a progressive copy cut short, whose stamp is current while keys are missing.
    Only handoff reads local state as it is.
    """
    return Plan("replay", clear_local=True, reason=reason)


def _connect(
    location: Location, local_url: str, resolve: Callable[[str], str | None],
    reachable: Callable[[str], bool],
) -> tuple[str, ...] | None:
    """Connectable URLs of the copy chain behind ``location`` (its source, then its
    origins), or None if any link is missing.

    A chain through this instance's own Redis is refused too: its keys there are
    older than the sources after it, and the copy would clear them at the end.
    """
    urls = [location.source or "", *location.origins]
    if local_url in urls:
        return None
    out = []
    for url in urls:
        connect = url and resolve(url)
        if not connect or not reachable(connect):
            return None
        out.append(connect)
    return tuple(out)


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
        return _replay("no recorded location")
    if location.url == local_url:
        if location.complete:
            return Plan("handoff", reason="state is already in this instance's Redis")
        chain = _connect(location, local_url, resolve, reachable)
        if chain is None:
            return _replay("interrupted copy whose source is gone")
        return Plan("progressive", chain[0], resume=True, origin_urls=chain[1:],
                    reason="finishing an interrupted progressive copy")
    if mode == "replay":
        return _replay("migration=replay")
    source = resolve(location.url)
    if source is None:
        return _replay(f"no credentials configured for {location.url}")
    if not reachable(source):
        return _replay(f"{location.url} is unreachable")
    if not location.complete:
        chain = None
        if mode != "stop-and-copy":
            chain = _connect(location, local_url, resolve, reachable)
        if chain is None:
            return _replay("the source itself holds an incomplete copy")
        return Plan("progressive", source, origin_urls=chain,
                    reason=f"chained: {location.url} is still copying from {location.source}")
    if mode == "stop-and-copy":
        return Plan("stop-and-copy", source, reason="migration=stop-and-copy")
    return Plan("progressive", source, reason=f"state lives in {location.url}")
