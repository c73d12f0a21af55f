"""Topology validation: store names, source topics, streams without operators,
and the names of internal topics."""

from __future__ import annotations

import pytest

from keyshift.errors import TopologyError
from keyshift.operators.serdes import get_serde
from keyshift.operators.stream import Stream
from keyshift.operators.topology import SubTopology, Topology

pytestmark = pytest.mark.unit


def make(app: str = "app") -> tuple[Topology, SubTopology, Stream]:
    topo = Topology(app)
    sub = topo.add_source("in", get_serde("str"), get_serde("json"))
    return topo, sub, Stream(topo, sub, sub.root)


def test_duplicate_store_names_rejected() -> None:
    _, _, s = make()
    s.count(store="c")
    with pytest.raises(TopologyError, match="'c'"):
        s.sum(store="c")


def test_duplicate_store_names_across_subtopologies_rejected() -> None:
    _, _, s = make()
    s.count(store="c")
    with pytest.raises(TopologyError):
        s.key_by(lambda v: v).reduce(max, store="c")


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a:b", "{x}", "a*", "a\nb", "a\u00a0b"])
def test_invalid_store_names_rejected(name: str) -> None:
    _, _, s = make()
    with pytest.raises(TopologyError):
        s.count(store=name)


@pytest.mark.parametrize("name", ["c", "Counts.v2", "per-user_1"])
def test_valid_store_names(name: str) -> None:
    topo, _, s = make()
    s.count(store=name)
    assert topo.store_names() == [name]
    assert topo.changelog_topic(name) == f"app--{name}-changelog"


@pytest.mark.parametrize("name", ["zähler", "n²"])
def test_non_ascii_store_names_rejected(name: str) -> None:
    _, _, s = make()
    with pytest.raises(TopologyError):
        s.count(store=name)


def test_duplicate_source_topic_rejected() -> None:
    topo, _, _ = make()
    with pytest.raises(TopologyError):
        topo.add_source("in", get_serde("str"), get_serde("json"))


def test_validate_no_stream() -> None:
    with pytest.raises(TopologyError, match="no stream"):
        Topology("app").validate()


def test_validate_stream_without_operator() -> None:
    topo, _, s = make()
    with pytest.raises(TopologyError, match="'in'"):
        topo.validate()
    s.to("out")
    topo.validate()


def test_validate_key_by_without_downstream_operator() -> None:
    topo, _, s = make("app")
    s.key_by(lambda v: v)
    with pytest.raises(TopologyError, match="app--keyby-1-repartition"):
        topo.validate()


def test_dlq_topic() -> None:
    assert Topology("x").dlq_topic == "x--dlq"
