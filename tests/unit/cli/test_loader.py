"""MODULE:APP references that cannot be loaded are usage errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyshift.cli import main

pytestmark = pytest.mark.unit


def test_bad_app_reference_is_a_usage_error(app_module: str) -> None:
    result = CliRunner().invoke(main, ["worker", "no_such_module:app"])
    assert result.exit_code == 2
    assert "cannot import 'no_such_module'" in result.output
    result = CliRunner().invoke(main, ["worker", "missing-colon"])
    assert result.exit_code == 2 and "expected MODULE:APP" in result.output
