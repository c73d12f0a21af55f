"""`keyshift scale` without a running supervisor, and its dry runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.unit


def test_scale_without_supervisor_fails_clearly(app_module: str) -> None:
    result = CliRunner().invoke(main, ["scale", app_module, "--instances", "2"])
    assert result.exit_code == 1
    assert "no supervisor of app 'cli-app' is running" in result.output


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
