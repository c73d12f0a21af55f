"""`keyshift status` of a running worker: members, lag, state and migrations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kafkautil import create_topic, produce_json, sentences, spawn, stop, wait_for, write_app

pytestmark = pytest.mark.integration


def test_status_shows_members_lag_state_and_migrations(
    brokers, admin, unique, tmp_path: Path
) -> None:
    app_id, source, sink = unique("st"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    produce_json(brokers, source, sentences(300))
    ref = write_app(tmp_path, "stapp", app_id, source, sink, "at_least_once")
    proc = spawn(
        [sys.executable, "-m", "keyshift", "worker", ref, "--instance-id", "solo"],
        tmp_path,
        tmp_path / "worker.log",
    )
    try:

        def ready() -> bool:
            out = subprocess.run(
                [sys.executable, "-m", "keyshift", "status", ref],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(tmp_path)),
            )
            ready.text = out.stdout  # type: ignore[attr-defined]
            # Also wait out COMPLETING_REBALANCING: the member's partitions are listed.
            return out.returncode == 0 and all(
                part in out.stdout
                for part in ("counts[1]: solo", "1 members", "solo (", f"{source}[0]")
            )

        assert wait_for(ready, 60, 2), (tmp_path / "worker.log").read_text()[-2000:]
        text = ready.text  # type: ignore[attr-defined]
        assert "1 members" in text and "solo" in text
        assert f"{source}[0]" in text and "lag:" in text
        assert "keys=" in text and "last migrations:" in text
    finally:
        assert stop(proc) == 0
