"""The command line as a whole: help on every command, the version."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift._version import __version__
from keyshift.cli import main

pytestmark = pytest.mark.unit

COMMANDS = [
    [],
    ["worker"],
    ["run"],
    ["scale"],
    ["status"],
    ["topics"],
    ["topics", "create"],
    ["topics", "list"],
    ["topics", "describe"],
    ["topics", "delete"],
    ["dev"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_everywhere(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize(
    "args",
    [["--help"], ["dev", "--help"], ["dev", "up", "--help"], ["dev", "down", "--help"],
     ["dev", "status", "--help"], ["dev", "env", "--help"]],
)  # fmt: skip
def test_cli_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_cli_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
