"""`keyshift dev status` against the running sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.integration


def test_cli_dev_status_shows_the_sandbox(sandbox: Any) -> None:
    from keyshift.dev import status

    if not status().running:
        pytest.skip("the services in use are not managed by `keyshift dev`")
    result = CliRunner().invoke(main, ["dev", "status"])
    assert result.exit_code == 0, result.output
    assert "kafka-0" in result.output and "redis-0" in result.output
    assert sandbox.brokers.split(",")[0] in result.output
