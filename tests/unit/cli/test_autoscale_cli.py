"""``keyshift autoscale``: help with examples, usage errors caught before anything
is contacted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.unit


def test_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["autoscale", "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "examples.wordcount:app" in result.output
    for option in ("--min", "--max", "--policy", "--target-utilization", "--dry-run"):
        assert option in result.output


def test_max_below_min_is_a_usage_error(app_module: str) -> None:
    result = CliRunner().invoke(main, ["autoscale", app_module, "--min", "3", "--max", "2"])
    assert result.exit_code == 2
    assert "--max 2 is below --min 3" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max", "0"], "--max"),
        (["--max", "3", "--policy", "threshold"], "--policy"),
        (["--max", "3", "--target-utilization", "1.5"], "--target-utilization"),
        (["--max", "3", "--backend", "nomad"], "--backend"),
    ],
)
def test_bad_options_are_refused(app_module: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["autoscale", app_module, *args])
    assert result.exit_code == 2 and message in result.output
