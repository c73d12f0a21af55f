"""Fixtures of the CLI unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kafkautil import write_app


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KEYSHIFT_HOME", str(tmp_path / "home"))
    return write_app(tmp_path, f"cliapp_{os.getpid()}", "cli-app", "in", "out", "at_least_once")
