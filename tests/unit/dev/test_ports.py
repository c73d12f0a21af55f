"""The sandbox's ports: kept when free, moved with --auto-ports, never shared."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshift.dev.ports import assign_ports, port_in_use
from keyshift.errors import SandboxError

pytestmark = pytest.mark.unit


def test_free_ports_are_kept() -> None:
    wanted = {"kafka": 9092, "redis": 6379}
    assert assign_ports(wanted, auto=False, in_use=lambda p: False) == wanted


def test_taken_port_fails_and_names_it() -> None:
    with pytest.raises(SandboxError, match=r"9092 \(kafka node 0 client\).*--auto-ports"):
        assign_ports({"kafka node 0 client": 9092, "redis 0": 6379}, False, {9092}.__contains__)


def test_auto_ports_skip_taken_and_planned_ports() -> None:
    taken = {9092, 9093, 6379}.__contains__
    wanted = {"a": 9092, "b": 9094, "r": 6379}
    assert assign_ports(wanted, auto=True, in_use=taken) == {"a": 9095, "b": 9094, "r": 6380}


@given(
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1024, 1100), max_size=8),
    st.sets(st.integers(1024, 1100), max_size=30),
)
def test_auto_ports_are_distinct_and_free(wanted: dict[str, int], taken: set[int]) -> None:
    ports = assign_ports(wanted, auto=True, in_use=taken.__contains__)
    assert ports.keys() == wanted.keys()
    moved = {name for name in wanted if wanted[name] in taken}
    assert all(ports[name] not in taken for name in moved)
    assert all(ports[name] == wanted[name] for name in wanted.keys() - moved)
    new_ports = [ports[name] for name in moved]
    assert len(set(new_ports)) == len(new_ports)
    assert not set(new_ports) & set(wanted.values())


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)
