"""The benchmarks run end to end at a reduced size (smoke; no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _run(args: list[str], brokers: str, tmp_path: Path) -> str:
    env = dict(os.environ, KEYSHIFT_BROKERS=brokers, KEYSHIFT_HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_throughput_benchmark_smoke(brokers: str, redis_url: str, tmp_path: Path) -> None:
    out = _run(
        ["bench/throughput.py", "--records", "20000", "--state", redis_url], brokers, tmp_path
    )
    for line in (
        "(a) raw",
        "(b) keyshift at_least_once",
        "(c) keyshift exactly_once",
        "ratio b/a",
        "ratio c/a",
    ):
        assert line in out, out


def test_migration_benchmark_smoke(brokers: str, tmp_path: Path) -> None:
    out = _run(
        [
            "bench/migration.py",
            "--keys",
            "3000",
            "--rate",
            "300",
            "--steps",
            "1,2,1",
            "--step-seconds",
            "5",
        ],
        brokers,
        tmp_path,
    )
    strategies = ("handoff", "stop-and-copy", "progressive", "replay")
    rows = {
        cells[0]: cells
        for cells in (line.split() for line in out.splitlines())
        if cells and cells[0] in strategies and cells[-1] in ("yes", "NO")
    }
    assert set(rows) == {"handoff", "stop-and-copy", "progressive", "replay"}, out
    for strategy, cells in rows.items():
        assert cells[-1] == "yes", f"{strategy}: final values not exact\n{out}"
        assert int(cells[1]) > 0, f"{strategy}: no partition moved\n{out}"
    for strategy in strategies:
        assert f"{strategy}: per move, median pause " in out, out
        assert f"{strategy}: p99 during migration by step: 1->2 " in out, out


def test_fetch_wake_benchmark_smoke(brokers: str, tmp_path: Path) -> None:
    out = _run(["bench/fetch_wake.py", "--rounds", "1", "--settle", "3"], brokers, tmp_path)
    for line in (
        "round 1 plain ",
        "round 1 woken ",
        "| plain |",
        "| woken |",
        "ratio plain / woken",
    ):
        assert line in out, out
