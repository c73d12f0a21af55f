"""`keyshift dev` without a sandbox: status, env and up report on the right streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.unit


def test_cli_dev_status_when_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "status"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output

    result = CliRunner().invoke(main, ["dev", "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["running"] is False and data["services"] == []


def test_cli_dev_env_fails_when_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "env"])
    assert result.exit_code == 1
    assert "not running" in result.stderr and result.stdout == ""


def test_cli_dev_up_reports_errors_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["dev", "up", "--kafka-version", "../../etc"])
    assert result.exit_code == 1
    assert "bad Kafka version" in result.stderr and result.stdout == ""
