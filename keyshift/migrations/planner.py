"""Choose how a newly assigned task's state reaches this instance.

``auto`` (the default) prefers, in order:

* **handoff** - the state already lives where this instance reads it (shared
  Redis, or this instance's own Redis): take ownership, replay the tail;
* **progressive** transfer - another reachable Redis holds it: resume at once,
  fetch keys on demand, copy the rest in the background;
* **replay** - nothing reachable holds it: rebuild from the changelog.

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
        return Plan("replay", reason="no recorded location")
    if location.url == local_url:
        if location.complete:
            return Plan("handoff", reason="state is already in this instance's Redis")
        source = location.source and resolve(location.source)
        if source and reachable(source):
            return Plan("progressive", source, resume=True,
                        reason="finishing an interrupted progressive copy")
        return Plan("replay", clear_local=True, reason="interrupted copy whose source is gone")
    if mode == "replay":
        return Plan("replay", reason="migration=replay")
    source = resolve(location.url)
    if source is None:
        return Plan("replay", reason=f"no credentials configured for {location.url}")
    if not reachable(source):
        return Plan("replay", reason=f"{location.url} is unreachable")
    if not location.complete:
        return Plan("replay", reason="the source itself holds an incomplete copy")
    if mode == "stop-and-copy":
        return Plan("stop-and-copy", source, reason="migration=stop-and-copy")
    return Plan("progressive", source, reason=f"state lives in {location.url}")
