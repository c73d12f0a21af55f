"""``keyshift reset`` and ``keyshift state``: help with examples, usage errors
caught before anything is contacted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "command", [["reset"], ["state"], ["state", "export"], ["state", "import"]], ids=" ".join
)
def test_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Examples:" in result.output
    assert "examples.wordcount:app" in result.output


def test_reset_takes_one_target() -> None:
    result = CliRunner().invoke(
        main, ["reset", "nomodule:app", "--to-latest", "--to-datetime", "2026-01-01"]
    )
    assert result.exit_code == 2
    assert "at most one of --to-earliest, --to-latest, --to-datetime, --to-offsets" in result.output


def test_state_commands_need_a_store(app_module: str) -> None:
    for command in ("export", "import"):
        result = CliRunner().invoke(main, ["state", command, app_module])
        assert result.exit_code == 2
        assert "Missing option '--store'" in result.output


def test_import_refuses_an_unknown_partitioner(app_module: str) -> None:
    result = CliRunner().invoke(
        main, ["state", "import", app_module, "--store", "counts", "--partitioner", "random"]
    )
    assert result.exit_code == 2 and "'random' is not one of" in result.output
