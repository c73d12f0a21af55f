"""The sandbox's Kafka nodes: server.properties, version and cluster id checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyshift.dev import kafka
from keyshift.dev.kafka import plan_nodes, server_properties
from keyshift.errors import SandboxError

pytestmark = pytest.mark.unit


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


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


def test_listeners_never_leave_loopback(tmp_path: Path) -> None:
    nodes = plan_nodes(3, port=19500)
    for node in nodes:
        text = server_properties(node, nodes, tmp_path)
        assert "0.0.0.0" not in text and "localhost" not in text
        assert nodes[0].port == 19500 and nodes[2].controller_port == 19602


def test_plan_and_version_validation() -> None:
    with pytest.raises(SandboxError):
        plan_nodes(0)
    assert kafka.check_version("4.4.0") == "4.4.0"
    assert kafka.check_version("3.9.1-rc1") == "3.9.1-rc1"
    for bad in ("", "4.4", "../4.4.0", "4.4.0/x", "latest"):
        with pytest.raises(SandboxError):
            kafka.check_version(bad)


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {kafka.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
