"""CLI behaviour: help everywhere, exit codes, errors on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kafkautil import create_topic, produce_json, sentences, spawn, stop, wait_for, write_app
from keyshift.cli import main

COMMANDS = [[], ["worker"], ["run"], ["scale"], ["status"], ["topics"], ["topics", "create"],
            ["topics", "list"], ["topics", "describe"], ["topics", "delete"], ["dev"]]


@pytest.mark.unit
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_everywhere(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path / "home"))
    return write_app(tmp_path, f"cliapp_{os.getpid()}", "cli-app", "in", "out", "at_least_once")


@pytest.mark.unit
def test_scale_without_supervisor_fails_clearly(app_module: str) -> None:
    result = CliRunner().invoke(main, ["scale", app_module, "--instances", "2"])
    assert result.exit_code == 1
    assert "no supervisor of app 'cli-app' is running" in result.output


@pytest.mark.unit
@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("compose", "docker compose up -d --no-recreate --scale worker=3"),
        ("kubernetes", "kubectl scale statefulset/cli-app --replicas=3"),
    ],
)
def test_scale_dry_run_prints_the_command(app_module: str, backend: str, expected: str) -> None:
    result = CliRunner().invoke(
        main, ["scale", app_module, "--instances", "3", "--backend", backend, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected


@pytest.mark.unit
def test_bad_app_reference_is_a_usage_error(app_module: str) -> None:
    result = CliRunner().invoke(main, ["worker", "no_such_module:app"])
    assert result.exit_code == 2
    assert "cannot import 'no_such_module'" in result.output
    result = CliRunner().invoke(main, ["worker", "missing-colon"])
    assert result.exit_code == 2 and "expected MODULE:APP" in result.output


@pytest.mark.unit
def test_bad_setting_fails_at_start_naming_it(app_module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyshift", "worker", app_module, "--commit-interval-ms", "0"],
        capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert result.returncode == 1
    assert b"invalid setting 'commit_interval_ms'" in result.stderr


@pytest.mark.integration
def test_topics_create_describe_delete(brokers: str, unique) -> None:
    name = unique("cli-topic")
    runner = CliRunner()
    created = runner.invoke(main, ["topics", "create", name, "-p", "3", "--compact",
                                   "--brokers", brokers])
    assert created.exit_code == 0 and f"created {name}" in created.output
    again = runner.invoke(main, ["topics", "create", name, "--brokers", brokers])
    assert again.exit_code == 1
    described = runner.invoke(main, ["topics", "describe", name, "--brokers", brokers])
    assert "3 partitions" in described.output and "cleanup.policy=compact" in described.output
    listed = runner.invoke(main, ["topics", "list", "--brokers", brokers])
    assert f"{name}\t3" in listed.output
    deleted = runner.invoke(main, ["topics", "delete", name, "--yes", "--brokers", brokers])
    assert deleted.exit_code == 0 and f"deleted {name}" in deleted.output


@pytest.mark.integration
def test_status_shows_members_lag_state_and_migrations(brokers, admin, unique,
                                                       tmp_path: Path) -> None:
    app_id, source, sink = unique("st"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    produce_json(brokers, source, sentences(300))
    ref = write_app(tmp_path, "stapp", app_id, source, sink, "at_least_once")
    proc = spawn([sys.executable, "-m", "keyshift", "worker", ref, "--instance-id", "solo"],
                 tmp_path, tmp_path / "worker.log")
    try:
        def ready() -> bool:
            out = subprocess.run([sys.executable, "-m", "keyshift", "status", ref], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, PYTHONPATH=str(tmp_path)))
            ready.text = out.stdout  # type: ignore[attr-defined]
            # Also wait out COMPLETING_REBALANCING: the member's partitions are listed.
            return out.returncode == 0 and all(
                part in out.stdout
                for part in ("counts[1]: solo", "1 members", "solo (", f"{source}[0]")
            )
        assert wait_for(ready, 60, 2), (tmp_path / "worker.log").read_text()[-2000:]
        text = ready.text  # type: ignore[attr-defined]
        assert "1 members" in text and "solo" in text
        assert f"{source}[0]" in text and "lag:" in text
        assert "keys=" in text and "last migrations:" in text
    finally:
        assert stop(proc) == 0
