"""Choose how a newly assigned task's state reaches this instance.

``auto`` (the default) prefers, in order:

* **handoff** - the state already lives where this instance reads it (shared
  Redis, or this instance's own Redis): take ownership, replay the tail;
* **progressive** transfer - another reachable Redis holds it: resume at once,
  fetch keys on demand, copy the rest in the background; when that Redis is
  itself mid-copy, the copy is *chained*: keys come from it first, then from
  its own source (one level deep);
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
    #: Chained copy: the source's own source, for keys not at the source yet.
    origin_url: str | None = None


def _replay(reason: str) -> Plan:
    """Rebuild from the changelog, from scratch.

    Whatever this instance's Redis holds for the task is not trusted: it may be
    a progressive copy cut short, whose stamp is current while keys are missing.
    Only handoff reads local state as it is.
    """
    return Plan("replay", clear_local=True, reason=reason)


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
        source = location.source and resolve(location.source)
        origin = location.origin and resolve(location.origin)
        if (source and reachable(source) and location.origin != local_url
                and (not location.origin or (origin and reachable(origin)))):
            return Plan("progressive", source, resume=True, origin_url=origin or None,
                        reason="finishing an interrupted progressive copy")
        return _replay("interrupted copy whose source is gone")
    if mode == "replay":
        return _replay("migration=replay")
    source = resolve(location.url)
    if source is None:
        return _replay(f"no credentials configured for {location.url}")
    if not reachable(source):
        return _replay(f"{location.url} is unreachable")
    if not location.complete:
        chained = None
        # Not when the earlier source is this instance's own Redis: its keys are
        # older than the source's, and a chained copy would clear them at the end.
        if (mode != "stop-and-copy" and location.source and not location.origin
                and location.source != local_url):
            chained = resolve(location.source)
        if chained and reachable(chained):
            return Plan("progressive", source, origin_url=chained,
                        reason=f"chained: {location.url} is still copying from {location.source}")
        return _replay("the source itself holds an incomplete copy")
    if mode == "stop-and-copy":
        return Plan("stop-and-copy", source, reason="migration=stop-and-copy")
    return Plan("progressive", source, reason=f"state lives in {location.url}")
