"""The `keyshift dev` sandbox: pure parts as unit tests, idempotent `up` against the real one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshift.dev import kafka, read_env_file, status, up
from keyshift.dev.kafka import KafkaNode, plan_nodes, server_properties
from keyshift.dev.ports import assign_ports, port_in_use
from keyshift.dev.sandbox import Sandbox, Service, State
from keyshift.errors import SandboxError
from keyshift.procs import (
    child_pids,
    is_ours,
    owned_pid,
    process_alive,
    read_pid,
    spawn_detached,
    stop_pids,
    write_pid,
)


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


# ------------------------------------------------------------- server.properties


@pytest.mark.unit
def test_single_node_properties(tmp_path: Path) -> None:
    nodes = plan_nodes(1)
    props = parse_properties(server_properties(nodes[0], nodes, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "0"
    assert props["controller.quorum.voters"] == "0@127.0.0.1:9192"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9192"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


@pytest.mark.unit
def test_three_node_properties(tmp_path: Path) -> None:
    nodes = plan_nodes(3)
    assert [(n.port, n.controller_port) for n in nodes] == [
        (9092, 9192), (9093, 9193), (9094, 9194),
    ]  # fmt: skip
    voters = "0@127.0.0.1:9192,1@127.0.0.1:9193,2@127.0.0.1:9194"
    for node in nodes:
        props = parse_properties(server_properties(node, nodes, tmp_path / f"d{node.index}"))
        assert props["node.id"] == str(node.index)
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["share.coordinator.state.topic.replication.factor"] == "3"
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"


@pytest.mark.unit
def test_listeners_never_leave_loopback(tmp_path: Path) -> None:
    nodes = plan_nodes(3, port=19500)
    for node in nodes:
        text = server_properties(node, nodes, tmp_path)
        assert "0.0.0.0" not in text and "localhost" not in text
        assert nodes[0].port == 19500 and nodes[2].controller_port == 19602


@pytest.mark.unit
def test_plan_and_version_validation() -> None:
    with pytest.raises(SandboxError):
        plan_nodes(0)
    assert kafka.check_version("4.4.0") == "4.4.0"
    assert kafka.check_version("3.9.1-rc1") == "3.9.1-rc1"
    for bad in ("", "4.4", "../4.4.0", "4.4.0/x", "latest"):
        with pytest.raises(SandboxError):
            kafka.check_version(bad)


@pytest.mark.unit
def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {kafka.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


# ------------------------------------------------------------- ports


@pytest.mark.unit
def test_free_ports_are_kept() -> None:
    wanted = {"kafka": 9092, "redis": 6379}
    assert assign_ports(wanted, auto=False, in_use=lambda p: False) == wanted


@pytest.mark.unit
def test_taken_port_fails_and_names_it() -> None:
    with pytest.raises(SandboxError, match=r"9092 \(kafka node 0 client\).*--auto-ports"):
        assign_ports({"kafka node 0 client": 9092, "redis 0": 6379}, False, {9092}.__contains__)


@pytest.mark.unit
def test_auto_ports_skip_taken_and_planned_ports() -> None:
    taken = {9092, 9093, 6379}.__contains__
    wanted = {"a": 9092, "b": 9094, "r": 6379}
    assert assign_ports(wanted, auto=True, in_use=taken) == {"a": 9095, "b": 9094, "r": 6380}


@pytest.mark.unit
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


@pytest.mark.unit
def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


# ------------------------------------------------------------- PID files and processes


@pytest.mark.unit
def test_pid_file_round_trip(tmp_path: Path) -> None:
    pid_file = tmp_path / "sub" / "x.pid"
    assert read_pid(pid_file) is None
    write_pid(pid_file, 1234)
    assert read_pid(pid_file) == 1234
    for garbage in ("", "abc", "-5", "0", "12 34"):
        pid_file.write_text(garbage)
        assert read_pid(pid_file) is None


@pytest.mark.unit
def test_owned_pid_checks_liveness_and_command_line(tmp_path: Path) -> None:
    pid_file = tmp_path / "me.pid"
    write_pid(pid_file, os.getpid())
    assert owned_pid(pid_file, [sys.executable]) == os.getpid()
    assert owned_pid(pid_file, [sys.executable, "kafka.Kafka"]) is None

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_pid(pid_file, dead.pid)
    assert not process_alive(dead.pid)
    assert owned_pid(pid_file, [sys.executable]) is None


@pytest.mark.unit
def test_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(100):
            if not process_alive(child.pid):
                break
            time.sleep(0.05)
        assert not process_alive(child.pid)  # exited but not yet waited for: a zombie
        assert child.pid in child_pids(os.getpid())
    finally:
        child.wait()


@pytest.mark.unit
def test_spawn_detached_is_not_our_child_and_stops(tmp_path: Path) -> None:
    log_file = tmp_path / "sleep.log"
    pid = spawn_detached(["sleep", "300"], log_file, cwd=tmp_path)
    try:
        assert is_ours(pid, ["sleep", "300"])
        assert pid not in child_pids(os.getpid())
        assert os.getsid(pid) != os.getsid(0)
    finally:
        assert stop_pids([pid], timeout=10) == []
    assert not process_alive(pid)


@pytest.mark.unit
def test_spawn_detached_writes_output_to_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "echo.log"
    pid = spawn_detached(["sh", "-c", "echo hello; echo oops >&2"], log_file, cwd=tmp_path)
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_pids([pid], timeout=5)
    assert log_file.read_text().split() == ["hello", "oops"]


# ------------------------------------------------------------- state and env


@pytest.mark.unit
def test_state_round_trip(tmp_path: Path) -> None:
    state = State("4.4.0", "abc", [KafkaNode(0, 9092, 9192)], [6379, 6380])
    state.save(tmp_path)
    assert State.load(tmp_path) == state
    (tmp_path / "state.json").write_text("{not json")
    assert State.load(tmp_path) == State()


@pytest.mark.unit
def test_env_file_round_trip(tmp_path: Path) -> None:
    sandbox = Sandbox(
        brokers="127.0.0.1:9092,127.0.0.1:9093",
        redis_urls=["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"],
        services=[Service("redis-0", "redis", 1, "redis://127.0.0.1:6379/0", "log")],
        run_dir=str(tmp_path),
    )
    path = tmp_path / "env"
    path.write_text(sandbox.exports())
    assert read_env_file(path) == {
        "KEYSHIFT_BROKERS": "127.0.0.1:9092,127.0.0.1:9093",
        "KEYSHIFT_REDIS": "redis://127.0.0.1:6379/0",
        "KEYSHIFT_STATE": "redis://127.0.0.1:6379/0",
        "KEYSHIFT_REDIS_URLS": "redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0",
    }
    assert read_env_file(tmp_path / "missing") == {}


@pytest.mark.unit
def test_status_of_an_empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    found = status()
    assert not found.running and found.services == [] and found.brokers == ""
    assert found.run_dir == str(tmp_path / "sandbox")


# ------------------------------------------------------------- the real sandbox


@pytest.mark.integration
def test_up_is_idempotent(sandbox: Any) -> None:
    current = status()
    if not current.running:
        pytest.skip("the services in use are not managed by `keyshift dev`")
    brokers = sum(1 for s in current.services if s.kind == "kafka")
    version = next(s.version for s in current.services if s.kind == "kafka")
    assert version is not None

    first = up(brokers=brokers, kafka_version=version)
    second = up(brokers=brokers, kafka_version=version)
    assert [(s.name, s.pid) for s in first.services] == [(s.name, s.pid) for s in second.services]
    assert all(s.reused and s.responding for s in second.services)
    assert [(s.name, s.pid) for s in status().services] == [
        (s.name, s.pid) for s in second.services
    ]
    assert second.brokers == sandbox.brokers
    assert read_env_file()["KEYSHIFT_BROKERS"] == second.brokers
