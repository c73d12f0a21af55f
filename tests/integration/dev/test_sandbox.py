"""`keyshift dev up` against the running sandbox: idempotent."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift.dev import read_env_file, status, up

pytestmark = pytest.mark.integration


def test_up_is_idempotent(sandbox: Any) -> None:
    current = status()
    if not current.running:
        pytest.skip("the services in use are not managed by `keyshift dev`")
    brokers = sum(1 for s in current.services if s.kind == "kafka")
    version = next(s.version for s in current.services if s.kind == "kafka")
    assert version is not None

    first = up(brokers=brokers, kafka_version=version)
    second = up(brokers=brokers, kafka_version=version)
    assert [(s.name, s.pid) for s in first.services] == [(s.name, s.pid) for s in second.services]
    assert all(s.reused and s.responding for s in second.services)
    assert [(s.name, s.pid) for s in status().services] == [
        (s.name, s.pid) for s in second.services
    ]
    assert second.brokers == sandbox.brokers
    assert read_env_file()["KEYSHIFT_BROKERS"] == second.brokers
