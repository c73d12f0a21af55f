"""Turn a sub-topology's operator tree into one push function per task.

The runtime gives each task a :class:`ProcessorContext`; the compiled function
is called as ``push(key, value)`` for every decoded input record, after the
runtime has set ``ctx.offset`` and ``ctx.raw_key``. Within a sub-topology the
key never changes (``key_by`` starts a new one), so stores are addressed by the
input record's raw key bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from keyshift.errors import TopologyError
from keyshift.operators.record import Record
from keyshift.operators.topology import Node, SubTopology

Push = Callable[[Any, Any], None]


class Table(Protocol):
    """A task's view of one store (see :mod:`keyshift.state.table`)."""

    resume_offset: int

    def get(self, key: bytes | None) -> Any: ...

    def put(self, key: bytes | None, value: Any) -> None: ...


class ProcessorContext(Protocol):
    """What compiled operators need from the runtime task."""

    offset: int
    raw_key: bytes | None

    def record(self, key: Any, value: Any) -> Record:
        """The input record being processed, with the given decoded key and value."""
        ...

    def table(self, store: str) -> Table: ...

    def emit(self, topic: str, key: bytes | None, value: bytes | None) -> None: ...

    def emit_repartition(self, topic: str, key: bytes | None, value: bytes | None) -> None: ...


def _noop(key: Any, value: Any) -> None:
    return None


def _fanout(children: list[Push]) -> Push:
    if not children:
        return _noop
    if len(children) == 1:
        return children[0]

    def push(key: Any, value: Any) -> None:
        for child in children:
            child(key, value)

    return push


def compile_subtopology(sub: SubTopology, ctx: ProcessorContext) -> Push:
    """The push function running ``sub``'s operators for one task."""
    return _fanout([_compile(child, sub, ctx) for child in sub.root.children])


Builder = Callable[[Any, Node, SubTopology, "ProcessorContext", Push], Push]


def _compile(node: Node, sub: SubTopology, ctx: ProcessorContext) -> Push:
    down = _fanout([_compile(child, sub, ctx) for child in node.children])
    build = _BUILDERS.get(node.kind)
    if build is None:  # pragma: no cover - the DSL only creates the kinds below
        raise TopologyError(f"unknown operator kind {node.kind!r}")
    return build(node.fn, node, sub, ctx, down)


def _map(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    def push(key: Any, value: Any) -> None:
        down(key, fn(value))

    return push


def _map_record(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    record = ctx.record

    def push(key: Any, value: Any) -> None:
        down(key, fn(record(key, value)))

    return push


def _filter(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    def push(key: Any, value: Any) -> None:
        if fn(value):
            down(key, value)

    return push


def _flat_map(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    def push(key: Any, value: Any) -> None:
        for item in fn(value):
            down(key, item)

    return push


def _peek(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    def push(key: Any, value: Any) -> None:
        fn(value)
        down(key, value)

    return push


def _stateful(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    table = ctx.table(node.params["store"])
    get, put = table.get, table.put

    def push(key: Any, value: Any) -> None:
        raw = ctx.raw_key
        if raw is None or ctx.offset < table.resume_offset:
            # Null keys are dropped (as in Kafka Streams); lower offsets are
            # already reflected in this store's restored state.
            return
        new = fn(get(raw), value)
        put(raw, new)
        down(key, new)

    return push


def _to(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    topic = node.params["topic"]
    kser, vser = node.params["key_serde"], node.params["value_serde"]
    same_key = kser is sub.key_serde
    emit, vencode, kencode = ctx.emit, vser.serialize, kser.serialize

    def push(key: Any, value: Any) -> None:
        emit(topic, ctx.raw_key if same_key else kencode(key), vencode(value))
        down(key, value)

    return push


def _repartition(fn: Any, node: Node, sub: SubTopology, ctx: ProcessorContext, down: Push) -> Push:
    topic = node.params["topic"]
    kencode = node.params["key_serde"].serialize
    vencode = node.params["value_serde"].serialize
    emit_r = ctx.emit_repartition

    def push(key: Any, value: Any) -> None:
        emit_r(topic, kencode(fn(value)), vencode(value))

    return push


_BUILDERS: dict[str, Builder] = {
    "map": _map,
    "map_record": _map_record,
    "filter": _filter,
    "flat_map": _flat_map,
    "peek": _peek,
    "stateful": _stateful,
    "to": _to,
    "repartition": _repartition,
}
