"""A Task: duplicate suppression on repartition topics, the origin headers it writes,
and how it resumes from its stamps."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from keyshift.operators.serdes import get_serde
from keyshift.operators.stream import Stream
from keyshift.operators.topology import SubTopology, Topology
from keyshift.runtime.task import Task
from keyshift.state.base import Stamp
from keyshift.state.changelog import ORIGIN_HEADER
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit

ORIGIN = struct.Struct(">iqi")

Origin = tuple[int, int]  # (offset, index)


def message(
    headers: list[tuple[str, bytes]] | None = None,
    *,
    key: bytes | None = b"k",
    value: bytes | None = b"1",
    offset: int = 0,
    timestamp: int = 1000,
) -> Message:
    """An input record as the consumer hands it to a Task."""
    return Message(
        topic="in",
        partition=0,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp=(1, timestamp),
    )


def origin_msg(upstream: int, up_offset: int, index: int, **kw: Any) -> Message:
    """A repartition record with origin (upstream partition, upstream offset, index)."""
    return message([(ORIGIN_HEADER, ORIGIN.pack(upstream, up_offset, index))], **kw)


class Sink:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes | None, int, Any]] = []
        self.dead: list[tuple[Any, str, BaseException]] = []

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, ts: int, headers: Any
    ) -> None:
        self.produced.append((topic, key, value, ts, headers))

    def dead_letter(self, msg: Any, stage: str, exc: BaseException) -> None:
        self.dead.append((msg, stage, exc))


def internal_sub() -> SubTopology:
    topo = Topology("app")
    src = topo.add_source("in", get_serde("str"), get_serde("json"))
    Stream(topo, src, src.root).key_by(lambda v: v).to("out")
    return topo.subtopologies[1]


def make_task(sub: SubTopology | None = None, tables: dict[str, Table] | None = None) -> Task:
    sink = Sink()
    return Task(sub or internal_sub(), 0, tables or {}, sink.produce, sink.dead_letter)


# -- duplicate suppression ----------------------------------------------------------------


class Dedup:
    """A task on a repartition topic, fed one record at a time through
    :meth:`Task.process`; :meth:`is_dup` says whether it dropped the record as a
    duplicate (its ``duplicates`` count went up)."""

    def __init__(self, seen: dict[int, Origin] | None = None) -> None:
        self.task = make_task()
        if seen is not None:  # where duplicate suppression resumes (from stamps)
            self.task.adopt_upstream([Stamp(0, 0, seen, 1)])
        self.offset = 0

    def is_dup(self, msg_or_origin: Message | tuple[int, int, int]) -> bool:
        if isinstance(msg_or_origin, tuple):
            msg = origin_msg(*msg_or_origin, offset=self.offset)
        else:
            msg = msg_or_origin
        self.offset += 1
        before = self.task.duplicates
        self.task.process([msg])
        return self.task.duplicates > before

    @property
    def seen(self) -> dict[int, Origin]:
        return self.task.seen


def test_no_headers_is_not_duplicate() -> None:
    dedup = Dedup()
    assert not dedup.is_dup(message(None, offset=0))
    assert not dedup.is_dup(message([], offset=1))
    assert not dedup.is_dup(message([("other", b"x")], offset=2))
    assert dedup.seen == {}


def test_origin_header_found_among_others() -> None:
    dedup = Dedup()
    headers = [("trace", b"abc"), (ORIGIN_HEADER, ORIGIN.pack(2, 10, 0))]
    assert not dedup.is_dup(message(headers, offset=0))
    assert dedup.seen == {2: (10, 0)}
    assert dedup.is_dup(message(headers, offset=1))


def test_per_upstream_ordering() -> None:
    dedup = Dedup()
    assert not dedup.is_dup((0, 5, 0))
    assert not dedup.is_dup((0, 5, 1))
    assert not dedup.is_dup((1, 3, 0))  # other upstream: independent
    assert dedup.is_dup((0, 5, 1))
    assert dedup.is_dup((0, 5, 0))
    assert dedup.is_dup((0, 4, 9))
    assert not dedup.is_dup((0, 6, 0))
    assert not dedup.is_dup((1, 3, 1))
    assert dedup.seen == {0: (6, 0), 1: (3, 1)}


@st.composite
def upstream_history(draw: st.DrawFn) -> tuple[list[Origin], list[Origin]]:
    """(S, emitted): a strictly increasing origin sequence S and what the upstream
    actually wrote: S[0:b1], then after each crash S[a_i:b_i] with a_i <= b_(i-1)."""
    origins: list[Origin] = []
    offset = draw(st.integers(min_value=0, max_value=5))
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        offset += draw(st.integers(min_value=1, max_value=3))
        for index in range(draw(st.integers(min_value=1, max_value=3))):
            origins.append((offset, index))
    emitted: list[Origin] = []
    end = draw(st.integers(min_value=0, max_value=len(origins)))
    emitted += origins[:end]
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        start = draw(st.integers(min_value=0, max_value=end))  # replay from an earlier point
        end = draw(st.integers(min_value=start, max_value=len(origins)))
        emitted += origins[start:end]
    return origins, emitted


@settings(max_examples=200, deadline=None)
@given(
    histories=st.lists(upstream_history(), min_size=1, max_size=4),
    data=st.data(),
)
def test_replayed_upstreams_accept_each_origin_once(
    histories: list[tuple[list[Origin], list[Origin]]], data: st.DataObject
) -> None:
    # interleave the per-upstream emissions, keeping each upstream's own order
    labels = [u for u, (_, emitted) in enumerate(histories) for _ in emitted]
    pending = {u: iter(emitted) for u, (_, emitted) in enumerate(histories)}
    stream = [(u, next(pending[u])) for u in data.draw(st.permutations(labels))]

    dedup = Dedup()
    accepted: dict[int, list[Origin]] = {u: [] for u in range(len(histories))}
    for u, (offset, index) in stream:
        if not dedup.is_dup((u, offset, index)):
            accepted[u].append((offset, index))
    seen = dedup.seen

    for u, (_, emitted) in enumerate(histories):
        got = accepted[u]
        assert set(got) == set(emitted)  # every distinct origin exactly once ...
        assert len(got) == len(set(got))
        assert all(a < b for a, b in zip(got, got[1:], strict=False))  # ... in order
        if got:
            assert seen[u] == got[-1]
        else:
            assert u not in seen


@given(
    history=upstream_history(),
    resume=st.tuples(st.integers(min_value=0, max_value=40), st.integers(0, 3)),
)
def test_adopted_position_suppresses_older_origins(
    history: tuple[list[Origin], list[Origin]], resume: Origin
) -> None:
    _, emitted = history
    dedup = Dedup(seen={7: resume})
    got = [o for o in emitted if not dedup.is_dup((7, *o))]
    assert got == sorted({o for o in emitted if o > resume})


# -- Task.process with duplicates -----------------------------------------------------


def test_process_drops_duplicates_and_counts_them() -> None:
    topo = Topology("app")
    src = topo.add_source("in", get_serde("str"), get_serde("json"))
    Stream(topo, src, src.root).key_by(lambda v: v["k"]).count(store="c").to("out")
    sub = topo.subtopologies[1]
    table = Table(MemoryPartition())
    sink = Sink()
    task = Task(sub, 0, {"c": table}, sink.produce, sink.dead_letter)
    msgs = [
        origin_msg(0, 10, 0, key=b"x", offset=0),
        origin_msg(0, 10, 1, key=b"x", offset=1),
        origin_msg(0, 10, 0, key=b"x", offset=2),  # replayed
        origin_msg(1, 4, 0, key=b"y", offset=3),
        origin_msg(0, 10, 1, key=b"x", offset=4),  # replayed
        origin_msg(0, 11, 0, key=b"x", offset=5),
    ]
    task.process(msgs)
    assert task.duplicates == 2
    assert task.records_in == 6
    assert task.position == 6
    assert [(t, k, v) for t, k, v, _, _ in sink.produced] == [
        ("out", b"x", b"1"),
        ("out", b"x", b"2"),
        ("out", b"y", b"1"),
        ("out", b"x", b"3"),
    ]
    assert task.seen == {0: (11, 0), 1: (4, 0)}
    assert task.last_processed_ms > 0  # when the batch was processed: a pause starts there
    assert task.stamp(3) == Stamp(6, -1, {0: (11, 0), 1: (4, 0)}, 3, task.last_processed_ms)
    assert sink.dead == []


def test_source_topic_never_deduplicates() -> None:
    topo = Topology("app")
    src = topo.add_source("in", get_serde("str"), get_serde("json"))
    Stream(topo, src, src.root).to("out")
    sink = Sink()
    task = Task(src, 0, {}, sink.produce, sink.dead_letter)
    task.process([origin_msg(0, 1, 0, offset=0), origin_msg(0, 1, 0, offset=1)])
    assert task.duplicates == 0
    assert len(sink.produced) == 2


# -- adopt_upstream / start_offset -------------------------------------------------------


def st_(inp: int, up: dict[int, Origin] | None = None) -> Stamp:
    return Stamp(inp, 0, up or {}, 1)


def test_adopt_upstream_min_per_upstream() -> None:
    task = make_task()
    task.adopt_upstream(
        [
            st_(5, {0: (10, 2), 1: (7, 0), 2: (3, 3)}),
            st_(6, {0: (10, 1), 1: (8, 0), 2: (3, 3)}),
            st_(7, {0: (11, 0), 1: (7, 5), 2: (4, 0)}),
        ]
    )
    assert task.seen == {0: (10, 1), 1: (7, 0), 2: (3, 3)}


def test_adopt_upstream_single_stamp() -> None:
    task = make_task()
    task.adopt_upstream([st_(5, {3: (1, 1)})])
    assert task.seen == {3: (1, 1)}


def test_adopt_upstream_drops_upstream_missing_from_a_store() -> None:
    task = make_task()
    task.adopt_upstream(
        [
            st_(1, {0: (10, 0), 1: (5, 0)}),
            st_(1, {0: (9, 0), 2: (4, 0)}),
            st_(1, {0: (12, 0), 1: (5, 0), 2: (4, 0)}),
        ]
    )
    # 1 is missing from the second store, 2 from the first: only 0 survives
    assert task.seen == {0: (9, 0)}


def test_adopt_upstream_empty_when_a_stamp_is_none() -> None:
    task = make_task()
    task.adopt_upstream([st_(1, {0: (10, 0)}), None])
    assert task.seen == {}
    task.adopt_upstream([None, st_(1, {0: (10, 0)})])
    assert task.seen == {}


def test_adopt_upstream_no_stamps() -> None:
    task = make_task()
    task.adopt_upstream([])
    assert task.seen == {}


def test_adopt_upstream_store_without_upstream_info() -> None:
    task = make_task()
    task.adopt_upstream([st_(1, {0: (1, 0)}), st_(1)])
    assert task.seen == {}


def tables_with(*stamps: Stamp | None) -> dict[str, Table]:
    tables = {}
    for i, s in enumerate(stamps):
        t = Table(MemoryPartition())
        t.adopt(s, 1)
        tables[f"s{i}"] = t
    return tables


def stateful_sub(n: int) -> SubTopology:
    topo = Topology("app")
    src = topo.add_source("in", get_serde("str"), get_serde("json"))
    stream = Stream(topo, src, src.root)
    for i in range(n):
        stream.count(store=f"s{i}")
    return src


def test_start_offset_no_tables() -> None:
    assert make_task().start_offset() is None


def test_start_offset_min_input_offset() -> None:
    task = make_task(stateful_sub(3), tables_with(st_(40), st_(12), st_(30)))
    assert task.start_offset() == 12


def test_start_offset_none_when_any_stamp_missing() -> None:
    task = make_task(stateful_sub(2), tables_with(st_(40), None))
    assert task.start_offset() is None
    task = make_task(stateful_sub(2), tables_with(None, st_(40)))
    assert task.start_offset() is None


def test_emit_repartition_origin_header() -> None:
    topo = Topology("app")
    src = topo.add_source("in", get_serde("str"), get_serde("json"))
    Stream(topo, src, src.root).flat_map(lambda v: [v, v]).key_by(lambda v: v).to("out")
    sink = Sink()
    task = Task(src, 3, {}, sink.produce, sink.dead_letter)
    task.process([message(None, value=b'"a"', offset=50), message(None, value=b'"b"', offset=51)])
    headers = [dict(h)[ORIGIN_HEADER] for _, _, _, _, h in sink.produced]
    assert [ORIGIN.unpack(h) for h in headers] == [(3, 50, 0), (3, 50, 1), (3, 51, 0), (3, 51, 1)]
    assert [k for _, k, _, _, _ in sink.produced] == [b"a", b"a", b"b", b"b"]


def test_rollback_restores_the_committed_view_of_upstream() -> None:
    """After an aborted transaction the same origins are processed again (the
    upstream task was rewound too and re-sends them), so they are not duplicates."""
    task = make_task()
    task.process([origin_msg(0, 5, 0, value=b'"a"', offset=0)])
    task.mark_committed()
    again = [
        origin_msg(0, 6, 0, value=b'"b"', offset=1),
        origin_msg(1, 2, 0, value=b'"c"', offset=2),
    ]
    task.process(again)
    assert task.rollback() == 1
    assert task.seen == {0: (5, 0)}
    task.process(again)
    assert task.duplicates == 0 and task.position == 3
