"""The operator DSL (Stream) and its compilation into push functions."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift.errors import TopologyError
from keyshift.operators.compile import compile_subtopology
from keyshift.operators.record import Record
from keyshift.operators.serdes import get_serde
from keyshift.operators.stream import MISSING, Stream
from keyshift.operators.topology import SubTopology, Topology
from keyshift.state.base import Stamp
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit


class FakeContext:
    """A ProcessorContext recording what the compiled operators emit."""

    def __init__(self) -> None:
        self.offset = 0
        self.raw_key: bytes | None = None
        self.tables: dict[str, Table] = {}
        self.emitted: list[tuple[str, bytes | None, bytes | None]] = []
        self.repartitioned: list[tuple[str, bytes | None, bytes | None]] = []

    def record(self, key: Any, value: Any) -> Record:
        return Record(key, value, 1234, [("h", b"v")], "in", 3, self.offset)

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(MemoryPartition())
        return self.tables[name]

    def emit(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.emitted.append((topic, key, value))

    def emit_repartition(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.repartitioned.append((topic, key, value))


def make(app: str = "app") -> tuple[Topology, SubTopology, Stream]:
    topo = Topology(app)
    sub = topo.add_source("in", get_serde("str"), get_serde("json"))
    return topo, sub, Stream(topo, sub, sub.root)


def run(
    sub: SubTopology,
    records: list[tuple[str | None, Any]],
    ctx: FakeContext | None = None,
    *,
    start_offset: int = 0,
) -> FakeContext:
    ctx = ctx or FakeContext()
    push = compile_subtopology(sub, ctx)
    for i, (key, value) in enumerate(records):
        ctx.offset = start_offset + i
        ctx.raw_key = None if key is None else key.encode()
        push(key, value)
    return ctx


def values(ctx: FakeContext, topic: str = "out") -> list[Any]:
    json = get_serde("json")
    return [json.deserialize(v) for t, _, v in ctx.emitted if t == topic]


# -- stateless ---------------------------------------------------------------


def test_map() -> None:
    _, sub, s = make()
    s.map(lambda v: v * 2).to("out")
    ctx = run(sub, [("a", 1), ("b", 2)])
    assert values(ctx) == [2, 4]
    assert [k for _, k, _ in ctx.emitted] == [b"a", b"b"]


def test_filter() -> None:
    _, sub, s = make()
    s.filter(lambda v: v % 2 == 0).to("out")
    ctx = run(sub, [("a", i) for i in range(6)])
    assert values(ctx) == [0, 2, 4]


def test_flat_map() -> None:
    _, sub, s = make()
    s.flat_map(lambda v: [v] * v).to("out")
    ctx = run(sub, [("a", 0), ("b", 2), ("c", 3)])
    assert values(ctx) == [2, 2, 3, 3, 3]
    assert [k for _, k, _ in ctx.emitted] == [b"b", b"b", b"c", b"c", b"c"]


def test_flat_map_generator() -> None:
    _, sub, s = make()
    s.flat_map(lambda v: (c for c in v.split())).to("out")
    ctx = run(sub, [("a", "x y z")])
    assert values(ctx) == ["x", "y", "z"]


def test_peek_forwards_unchanged() -> None:
    seen: list[Any] = []
    _, sub, s = make()
    s.peek(seen.append).to("out")
    ctx = run(sub, [("a", {"n": 1}), ("b", {"n": 2})])
    assert seen == [{"n": 1}, {"n": 2}]
    assert values(ctx) == [{"n": 1}, {"n": 2}]


def test_fan_out_two_children() -> None:
    _, sub, s = make()
    base = s.map(lambda v: v + 1)
    base.filter(lambda v: v > 2).to("big")
    base.map(lambda v: -v).to("neg")
    ctx = run(sub, [("a", 1), ("b", 2), ("c", 3)])
    assert values(ctx, "big") == [3, 4]
    assert values(ctx, "neg") == [-2, -3, -4]
    # children run in definition order for each record
    assert [t for t, _, _ in ctx.emitted] == ["neg", "big", "neg", "big", "neg"]


def test_fan_out_at_source() -> None:
    _, sub, s = make()
    s.to("x")
    s.to("y")
    ctx = run(sub, [("a", 1)])
    assert [t for t, _, _ in ctx.emitted] == ["x", "y"]


def test_to_chained_returns_same_stream() -> None:
    _, sub, s = make()
    s.to("x").map(lambda v: v * 10).to("y")
    ctx = run(sub, [("a", 1)])
    assert values(ctx, "x") == [1]
    assert values(ctx, "y") == [10]


def test_no_operators_is_noop() -> None:
    _, sub, _ = make()
    ctx = run(sub, [("a", 1)])
    assert ctx.emitted == [] and ctx.repartitioned == []


# -- key_by --------------------------------------------------------------------


def test_key_by_creates_repartition_subtopology() -> None:
    topo, sub, s = make("shop")
    rekeyed = s.key_by(lambda v: v["user"])
    rekeyed.count(store="per-user").to("counts")
    assert len(topo.subtopologies) == 2
    sub2 = topo.subtopologies[1]
    assert sub2.topic == "shop--keyby-1-repartition"
    assert sub2.internal is True
    assert sub2.upstream is sub
    assert sub.repartition_topics() == ["shop--keyby-1-repartition"]
    assert sub2.stores() == ["per-user"]
    assert sub.stores() == []
    assert topo.subtopology_of_store("per-user") is sub2
    assert sub2.sinks() == ["counts"]
    topo.validate()

    ctx = run(sub, [("k", {"user": "u1", "n": 1}), ("k", {"user": "u2", "n": 2})])
    assert ctx.emitted == []
    assert ctx.repartitioned == [
        ("shop--keyby-1-repartition", b"u1", b'{"user":"u1","n":1}'),
        ("shop--keyby-1-repartition", b"u2", b'{"user":"u2","n":2}'),
    ]

    # the downstream sub-topology counts by the new key
    ctx2 = run(sub2, [("u1", {}), ("u2", {}), ("u1", {})])
    assert values(ctx2, "counts") == [1, 1, 2]
    assert [k for _, k, _ in ctx2.emitted] == [b"u1", b"u2", b"u1"]


def test_key_by_numbering_name_and_serdes() -> None:
    topo, sub, s = make("a")
    s.key_by(lambda v: v).key_by(lambda v: v, name="custom", key_serde="json", partitions=3)
    s.key_by(lambda v: v)
    topics = [t.topic for t in topo.subtopologies]
    assert topics == [
        "in",
        "a--keyby-1-repartition",
        "a--custom-repartition",
        "a--keyby-3-repartition",
    ]
    custom = topo.by_topic()["a--custom-repartition"]
    assert custom.partitions == 3
    assert custom.key_serde is get_serde("json")
    assert custom.upstream is topo.subtopologies[1]

    ctx = run(topo.subtopologies[1], [("x", 7)])
    assert ctx.repartitioned == [("a--custom-repartition", b"7", b"7")]


def test_key_by_same_name_twice_rejected() -> None:
    _, _, s = make()
    s.key_by(lambda v: v, name="dup")
    with pytest.raises(TopologyError):
        s.key_by(lambda v: v, name="dup")


# -- stateful ------------------------------------------------------------------


def test_aggregate_mutable_initial_copied_per_key() -> None:
    initial: dict[str, list[Any]] = {"items": []}

    def add(acc: dict[str, list[Any]], v: Any) -> dict[str, list[Any]]:
        acc["items"].append(v)
        return acc

    _, sub, s = make()
    s.aggregate(initial, add, store="agg").to("out")
    ctx = run(sub, [("a", 1), ("b", 2), ("a", 3)])
    assert values(ctx) == [{"items": [1]}, {"items": [2]}, {"items": [1, 3]}]
    assert initial == {"items": []}
    table = ctx.tables["agg"]
    assert table.get(b"a") == {"items": [1, 3]}
    assert table.get(b"b") == {"items": [2]}
    assert table.get(b"a") is not table.get(b"b")


def test_aggregate_callable_and_immutable_initial() -> None:
    _, sub, s = make()
    s.aggregate(list, lambda acc, v: [*acc, v], store="lists").to("l")
    s.aggregate(100, lambda acc, v: acc - v, store="nums").to("n")
    ctx = run(sub, [("a", 1), ("b", 2), ("a", 3)])
    assert values(ctx, "l") == [[1], [2], [1, 3]]
    assert values(ctx, "n") == [99, 98, 96]


def test_reduce() -> None:
    _, sub, s = make()
    s.reduce(max, store="max").to("out")
    ctx = run(sub, [("a", 3), ("a", 1), ("b", 0), ("a", 7)])
    assert values(ctx) == [3, 3, 0, 7]


def test_count() -> None:
    _, sub, s = make()
    s.count(store="c").to("out")
    ctx = run(sub, [("a", None), ("b", "x"), ("a", 1), ("a", 2)])
    assert values(ctx) == [1, 1, 2, 3]
    assert ctx.tables["c"].take_changes() == {b"a": b"3", b"b": b"1"}


def test_sum_default_and_projection() -> None:
    _, sub, s = make()
    s.sum(store="s1").to("plain")
    _, sub2, s2 = make()
    s2.sum(lambda v: v["n"], store="s2").to("proj")
    ctx = run(sub, [("a", 1), ("a", 2), ("b", 5)])
    assert values(ctx, "plain") == [1, 3, 5]
    ctx2 = run(sub2, [("a", {"n": 1.5}), ("a", {"n": 2})])
    assert values(ctx2, "proj") == [1.5, 3.5]


def test_stateful_uses_existing_backend_state() -> None:
    _, sub, s = make()
    s.count(store="c").to("out")
    ctx = FakeContext()
    part = MemoryPartition()
    part.data[b"a"] = b"41"
    ctx.tables["c"] = Table(part)
    run(sub, [("a", "x")], ctx)
    assert values(ctx) == [42]


def test_stateful_skips_input_before_resume_offset() -> None:
    _, sub, s = make()
    s.count(store="c").to("out")
    ctx = FakeContext()
    table = ctx.table("c")
    table.adopt(Stamp(input_offset=12, changelog_offset=0), epoch=table.backend.claim("w"))
    run(sub, [("a", 1)] * 5, ctx, start_offset=10)  # offsets 10..14
    # offsets 10 and 11 are already reflected: not applied, not forwarded
    assert values(ctx) == [1, 2, 3]


def test_skip_is_per_store() -> None:
    _, sub, s = make()
    s.count(store="c1").to("o1")
    s.count(store="c2").to("o2")
    s.to("raw")
    ctx = FakeContext()
    ctx.table("c1").adopt(Stamp(2, 0), ctx.table("c1").backend.claim("w"))
    ctx.table("c2").adopt(None, ctx.table("c2").backend.claim("w"))
    run(sub, [("a", 1)] * 3, ctx)
    assert values(ctx, "o1") == [1]
    assert values(ctx, "o2") == [1, 2, 3]
    assert values(ctx, "raw") == [1, 1, 1]


def test_stateful_drops_null_keyed_records() -> None:
    _, sub, s = make()
    s.count(store="c").to("out")
    ctx = run(sub, [(None, 1), (None, 2), ("a", 3)])
    table = ctx.tables["c"]
    assert table.take_changes() == {b"a": b"1"}
    assert table.get(None) is MISSING
    # Null-keyed records are dropped by stateful operators, as in Kafka Streams.
    assert values(ctx) == [1]


# -- sinks ---------------------------------------------------------------------


def test_to_reuses_key_bytes_when_serde_unchanged() -> None:
    _, sub, s = make()
    s.to("out")
    s.to("explicit", key_serde="str")  # same registered instance as the source's
    ctx = FakeContext()
    push = compile_subtopology(sub, ctx)
    ctx.raw_key = b"raw-bytes"
    push("decoded", {"v": 1})
    assert ctx.emitted == [
        ("out", b"raw-bytes", b'{"v":1}'),
        ("explicit", b"raw-bytes", b'{"v":1}'),
    ]


def test_to_reencodes_key_with_other_serde() -> None:
    _, sub, s = make()
    s.to("out", key_serde="json", value_serde="str")
    ctx = FakeContext()
    push = compile_subtopology(sub, ctx)
    ctx.raw_key = b"abc"
    push("abc", 12)
    assert ctx.emitted == [("out", b'"abc"', b"12")]


def test_to_none_value_is_tombstone() -> None:
    _, sub, s = make()
    s.to("out")
    ctx = run(sub, [("a", None)])
    assert ctx.emitted == [("out", b"a", None)]


def test_map_record_sees_the_whole_record() -> None:
    _, sub, s = make()
    s.map_record(
        lambda r: [
            r.key,
            r.value,
            r.timestamp,
            [[h, v.decode()] for h, v in r.headers],
            r.topic,
            r.partition,
            r.offset,
        ]
    ).to("out")
    ctx = FakeContext()
    push = compile_subtopology(sub, ctx)
    ctx.raw_key, ctx.offset = b"k", 42
    push("k", {"v": 1})
    assert ctx.emitted == [("out", b"k", b'["k",{"v":1},1234,[["h","v"]],"in",3,42]')]
