"""`keyshift worker` refuses a bad setting at start, naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_bad_setting_fails_at_start_naming_it(app_module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyshift", "worker", app_module, "--commit-interval-ms", "0"],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert result.returncode == 1
    assert b"invalid setting 'commit_interval_ms'" in result.stderr
