"""``keyshift topics``: every command's help shows an example; MODULE:APP
references are kept on the loaded app for the commands error messages name."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main
from keyshift.cli.loader import load_app

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("", "keyshift topics plan examples.wordcount:app"),
        ("plan", "keyshift topics plan examples.wordcount:app --json"),
        ("apply", "keyshift topics apply examples.wordcount:app --dry-run"),
        ("validate", "keyshift topics validate examples.wordcount:app --min-replication 3"),
        ("list", "keyshift topics list --all"),
        ("create", "keyshift topics create sentences --partitions 6"),
        ("describe", "keyshift topics describe wordcount--counts-changelog"),
        ("delete", "keyshift topics delete sentences --yes"),
    ],
)
def test_every_topics_command_has_an_example(command: str, example: str) -> None:
    result = CliRunner().invoke(main, ["topics", *command.split(), "--help"])
    assert result.exit_code == 0
    assert example in result.output


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_plan_and_apply_document_their_exit_codes(command: str) -> None:
    result = CliRunner().invoke(main, ["topics", command, "--help"])
    assert "4 problems" in result.output
    if command == "plan":
        assert "3 apply has changes to make" in result.output


def test_a_loaded_app_knows_its_reference(app_module: str) -> None:
    app = load_app(app_module)
    assert app.topology.app_ref == app_module
