"""The DSL: ``app.stream(topic).map(...).key_by(...).count(store=...).to(topic)``.

A :class:`Stream` only records operators into the :class:`Topology`; it never
touches Kafka. User functions receive record *values* (like Faust and Quix);
keys change only through :meth:`Stream.key_by`, which repartitions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from keyshift.operators.record import Record
from keyshift.operators.serdes import Serde, get_serde
from keyshift.operators.topology import Node, SubTopology, Topology
from keyshift.state.base import MISSING

_IMMUTABLE = (int, float, str, bytes, bool, type(None))


class Stream:
    """A stream of records flowing through a chain of operators."""

    def __init__(self, topology: Topology, sub: SubTopology, node: Node) -> None:
        self._topology = topology
        self._sub = sub
        self._node = node

    def _add(self, kind: str, fn: Callable[..., Any] | None = None, **params: Any) -> Stream:
        node = Node(kind, fn, params)
        self._node.children.append(node)
        return Stream(self._topology, self._sub, node)

    # -- stateless -----------------------------------------------------------
    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value with ``fn(value)``."""
        return self._add("map", fn)

    def map_record(self, fn: Callable[[Record], Any]) -> Stream:
        """Replace each value with ``fn(record)``; the :class:`Record` carries the key,
        value, timestamp, headers, topic, partition and offset of the input record."""
        return self._add("map_record", fn)

    def filter(self, fn: Callable[[Any], bool]) -> Stream:
        """Keep the records whose value satisfies ``fn``."""
        return self._add("filter", fn)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Replace each value with zero or more values."""
        return self._add("flat_map", fn)

    def peek(self, fn: Callable[[Any], object]) -> Stream:
        """Call ``fn(value)`` for its side effect; forward the record unchanged."""
        return self._add("peek", fn)

    def key_by(
        self,
        fn: Callable[[Any], Any],
        *,
        key_serde: str | Serde = "str",
        value_serde: str | Serde = "json",
        name: str | None = None,
        partitions: int | None = None,
    ) -> Stream:
        """Re-key by ``fn(value)``; records go through an internal repartition topic.

        The topic is ``<app>--<name>-repartition`` (``name`` defaults to
        ``keyby-<n>``) with as many partitions as this stream's source unless
        ``partitions`` is given.
        """
        topic = self._topology.next_repartition_topic(name)
        kser, vser = get_serde(key_serde), get_serde(value_serde)
        self._add("repartition", fn, topic=topic, key_serde=kser, value_serde=vser)
        sub = self._topology.add_source(
            topic, kser, vser, internal=True, upstream=self._sub, partitions=partitions
        )
        return Stream(self._topology, sub, sub.root)

    # -- stateful ------------------------------------------------------------
    def _stateful(self, store: str, update: Callable[[Any, Any], Any], op: str) -> Stream:
        self._topology.register_store(store, self._sub)
        return self._add("stateful", update, store=store, op=op)

    def aggregate(self, initial: Any, fn: Callable[[Any, Any], Any], *, store: str) -> Stream:
        """Fold values per key: ``acc = fn(acc, value)``, starting from ``initial``.

        ``initial`` may be a value or a zero-argument callable; mutable values
        are copied for each new key. Forwards the new aggregate.
        """
        if callable(initial):
            make = initial
        elif isinstance(initial, _IMMUTABLE):
            make = lambda: initial  # noqa: E731
        else:
            make = lambda: copy.deepcopy(initial)  # noqa: E731

        def update(acc: Any, value: Any) -> Any:
            return fn(make() if acc is MISSING else acc, value)

        return self._stateful(store, update, "aggregate")

    def reduce(self, fn: Callable[[Any, Any], Any], *, store: str) -> Stream:
        """Combine values per key: the first value, then ``fn(acc, value)``."""

        def update(acc: Any, value: Any) -> Any:
            return value if acc is MISSING else fn(acc, value)

        return self._stateful(store, update, "reduce")

    def count(self, *, store: str) -> Stream:
        """Count records per key; forwards the running count."""

        def update(acc: Any, value: Any) -> Any:
            return 1 if acc is MISSING else acc + 1

        return self._stateful(store, update, "count")

    def sum(self, fn: Callable[[Any], Any] = lambda v: v, *, store: str) -> Stream:
        """Sum ``fn(value)`` per key; forwards the running sum."""

        def update(acc: Any, value: Any) -> Any:
            return fn(value) if acc is MISSING else acc + fn(value)

        return self._stateful(store, update, "sum")

    # -- sinks ---------------------------------------------------------------
    def to(
        self,
        topic: str,
        *,
        key_serde: str | Serde | None = None,
        value_serde: str | Serde = "json",
    ) -> Stream:
        """Produce every record to ``topic`` (key with the stream's key serde)."""
        kser = self._sub.key_serde if key_serde is None else get_serde(key_serde)
        self._add("to", None, topic=topic, key_serde=kser, value_serde=get_serde(value_serde))
        return self
