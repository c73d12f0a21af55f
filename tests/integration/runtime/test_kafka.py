"""The KIP-848 group configs keyshift sets on a real broker."""

from __future__ import annotations

from typing import Any

import pytest

from kafkautil import group_config
from keyshift.runtime.kafka import apply_group_configs

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_keyshift_env")]


def test_group_configs_are_set_and_a_refused_one_does_not_block_the_others(
    admin: Any, unique: Any
) -> None:
    group = unique("gc")
    refused = apply_group_configs(
        admin,
        group,
        {
            "consumer.assignment.interval.ms": "0",
            # Below the broker's group.consumer.min.session.timeout.ms (6 s in the sandbox).
            "consumer.session.timeout.ms": "1000",
            "consumer.heartbeat.interval.ms": "300",
            "consumer.no.such.config": "1",
        },
    )
    assert set(refused) == {"consumer.session.timeout.ms", "consumer.no.such.config"}
    assert "session" in refused["consumer.session.timeout.ms"].lower()
    current = group_config(admin, group)
    assert current["consumer.assignment.interval.ms"] == "0"
    assert current["consumer.heartbeat.interval.ms"] == "300"
    assert current["consumer.session.timeout.ms"] != "1000"
