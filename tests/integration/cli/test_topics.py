"""`keyshift topics` against the sandbox's broker."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.integration


def test_topics_create_describe_delete(brokers: str, unique) -> None:
    name = unique("cli-topic")
    runner = CliRunner()
    created = runner.invoke(
        main, ["topics", "create", name, "-p", "3", "--compact", "--brokers", brokers]
    )
    assert created.exit_code == 0 and f"created {name}" in created.output
    again = runner.invoke(main, ["topics", "create", name, "--brokers", brokers])
    assert again.exit_code == 1
    described = runner.invoke(main, ["topics", "describe", name, "--brokers", brokers])
    assert "3 partitions" in described.output and "cleanup.policy=compact" in described.output
    listed = runner.invoke(main, ["topics", "list", "--brokers", brokers])
    assert f"{name}\t3" in listed.output
    deleted = runner.invoke(main, ["topics", "delete", name, "--yes", "--brokers", brokers])
    assert deleted.exit_code == 0 and f"deleted {name}" in deleted.output
