"""The topology a pipeline definition builds: sub-topologies split at ``key_by``.

Each sub-topology reads one topic (a user source or an internal repartition
topic) and runs a tree of operator nodes. Every partition of that topic is a
task; stores belong to the sub-topology whose tasks update them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keyshift.errors import TopologyError
from keyshift.operators.serdes import Serde

Fn = Callable[..., Any]


@dataclass(eq=False)
class Node:
    """One operator; ``children`` receive what it forwards."""

    kind: str
    fn: Fn | None = None
    params: dict[str, Any] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)


@dataclass(eq=False)
class SubTopology:
    """Operators applied to the records of one topic, one task per partition."""

    index: int
    topic: str
    key_serde: Serde
    value_serde: Serde
    internal: bool
    root: Node = field(default_factory=lambda: Node("source"))
    upstream: SubTopology | None = None
    partitions: int | None = None

    def stores(self) -> list[str]:
        return [n.params["store"] for n in walk(self.root) if n.kind == "stateful"]

    def sinks(self) -> list[str]:
        return [n.params["topic"] for n in walk(self.root) if n.kind == "to"]

    def repartition_topics(self) -> list[str]:
        return [n.params["topic"] for n in walk(self.root) if n.kind == "repartition"]


def walk(node: Node) -> list[Node]:
    """The node and all its descendants, depth first."""
    out = [node]
    for child in node.children:
        out.extend(walk(child))
    return out


class Topology:
    """All sub-topologies of one application."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.subtopologies: list[SubTopology] = []
        self._store_owner: dict[str, SubTopology] = {}
        self._keyby_count = 0
        #: ``MODULE:APP`` the app was loaded from (set by the CLI), for the
        #: commands that error messages name; None when not known.
        self.app_ref: str | None = None

    def add_source(
        self,
        topic: str,
        key_serde: Serde,
        value_serde: Serde,
        *,
        internal: bool = False,
        upstream: SubTopology | None = None,
        partitions: int | None = None,
    ) -> SubTopology:
        if any(s.topic == topic for s in self.subtopologies):
            raise TopologyError(f"topic {topic!r} is already a source of this app")
        sub = SubTopology(
            index=len(self.subtopologies),
            topic=topic,
            key_serde=key_serde,
            value_serde=value_serde,
            internal=internal,
            upstream=upstream,
            partitions=partitions,
        )
        self.subtopologies.append(sub)
        return sub

    def register_store(self, store: str, sub: SubTopology) -> None:
        if not store or not all((c.isascii() and c.isalnum()) or c in "._-" for c in store):
            raise TopologyError(f"store name {store!r} must be non-empty and use [A-Za-z0-9._-]")
        if store in self._store_owner:
            raise TopologyError(f"store {store!r} is used by two operators; names must be unique")
        self._store_owner[store] = sub

    # Internal topics are named ``<app>--<suffix>``. App ids contain no ``--`` and
    # do not end with ``-`` (Settings checks), so the first ``--`` of a name ends
    # its app id, and two apps never share an internal topic (with one dash,
    # app ``a`` + store ``b-c`` and app ``a-b`` + store ``c`` would). The
    # suffixes differ by their endings, so one app's topics never collide either.
    def internal_topic(self, suffix: str) -> str:
        return f"{self.app_id}--{suffix}"

    def next_repartition_topic(self, name: str | None) -> str:
        self._keyby_count += 1
        return self.internal_topic(f"{name or f'keyby-{self._keyby_count}'}-repartition")

    def changelog_topic(self, store: str) -> str:
        return self.internal_topic(f"{store}-changelog")

    @property
    def dlq_topic(self) -> str:
        return self.internal_topic("dlq")

    @property
    def locations_topic(self) -> str:
        return self.internal_topic("state-locations")

    @property
    def events_topic(self) -> str:
        return self.internal_topic("events")

    @property
    def control_topic(self) -> str:
        return self.internal_topic("control")

    @property
    def rates_topic(self) -> str:
        return self.internal_topic("rates")

    def store_names(self) -> list[str]:
        return list(self._store_owner)

    def subtopology_of_store(self, store: str) -> SubTopology:
        return self._store_owner[store]

    def by_topic(self) -> dict[str, SubTopology]:
        return {s.topic: s for s in self.subtopologies}

    def validate(self) -> None:
        if not self.subtopologies:
            raise TopologyError("the app defines no stream; call app.stream(topic) first")
        for sub in self.subtopologies:
            if not sub.root.children:
                raise TopologyError(f"stream on {sub.topic!r} has no operator and no sink")
