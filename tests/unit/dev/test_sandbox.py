"""The sandbox's state file, env file and status (nothing started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyshift.dev import read_env_file, status
from keyshift.dev.kafka import KafkaNode
from keyshift.dev.sandbox import Sandbox, Service, State

pytestmark = pytest.mark.unit


def test_state_round_trip(tmp_path: Path) -> None:
    state = State("4.4.0", "abc", [KafkaNode(0, 9092, 9192)], [6379, 6380])
    state.save(tmp_path)
    assert State.load(tmp_path) == state
    (tmp_path / "state.json").write_text("{not json")
    assert State.load(tmp_path) == State()


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


def test_status_of_an_empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    found = status()
    assert not found.running and found.services == [] and found.brokers == ""
    assert found.run_dir == str(tmp_path / "sandbox")
