"""The consumer group's timeouts under both protocols, and the KIP-848 group configs
keyshift sets on a real broker."""

from __future__ import annotations

from typing import Any

import pytest

from kafkautil import group_config
from keyshift import Settings
from keyshift.errors import ConfigError
from keyshift.runtime.kafka import (
    apply_group_configs,
    consumer_config,
    consumer_group_configs,
    group_timeouts,
)

pytestmark = pytest.mark.usefixtures("no_keyshift_env")


@pytest.mark.unit
def test_defaults_are_the_same_under_both_protocols() -> None:
    classic = consumer_config(Settings.build("app", group_protocol="classic"), "i")
    assert (classic["session.timeout.ms"], classic["heartbeat.interval.ms"]) == (10_000, 50)
    kip848 = Settings.build("app", group_protocol="consumer")
    assert consumer_group_configs(kip848) == {
        "consumer.assignment.interval.ms": "0",
        "consumer.session.timeout.ms": "10000",
        "consumer.heartbeat.interval.ms": "50",
    }
    # librdkafka refuses the classic-only settings under KIP-848.
    assert "session.timeout.ms" not in consumer_config(kip848, "i")


@pytest.mark.unit
def test_kafka_settings_override_the_timeouts_under_both_protocols() -> None:
    kafka = {"session.timeout.ms": "30000", "heartbeat.interval.ms": "1000"}
    classic = Settings.build("app", group_protocol="classic", kafka=kafka)
    assert group_timeouts(classic) == (30_000, 1000)
    assert consumer_config(classic, "i")["session.timeout.ms"] == "30000"
    kip848 = Settings.build("app", group_protocol="consumer", kafka=kafka)
    configs = consumer_group_configs(kip848)
    assert configs["consumer.session.timeout.ms"] == "30000"
    assert configs["consumer.heartbeat.interval.ms"] == "1000"


@pytest.mark.unit
def test_a_timeout_that_is_not_a_number_names_the_setting() -> None:
    for protocol in ("classic", "consumer"):
        settings = Settings.build("app", group_protocol=protocol,
                                  kafka={"heartbeat.interval.ms": "fast"})
        with pytest.raises(ConfigError, match="kafka.heartbeat.interval.ms"):
            consumer_config(settings, "i")
        with pytest.raises(ConfigError, match="kafka.heartbeat.interval.ms"):
            consumer_group_configs(settings)


@pytest.mark.integration
def test_group_configs_are_set_and_a_refused_one_does_not_block_the_others(
    admin: Any, unique: Any
) -> None:
    group = unique("gc")
    refused = apply_group_configs(admin, group, {
        "consumer.assignment.interval.ms": "0",
        # Below the broker's group.consumer.min.session.timeout.ms (6 s in the sandbox).
        "consumer.session.timeout.ms": "1000",
        "consumer.heartbeat.interval.ms": "300",
        "consumer.no.such.config": "1",
    })
    assert set(refused) == {"consumer.session.timeout.ms", "consumer.no.such.config"}
    assert "session" in refused["consumer.session.timeout.ms"].lower()
    current = group_config(admin, group)
    assert current["consumer.assignment.interval.ms"] == "0"
    assert current["consumer.heartbeat.interval.ms"] == "300"
    assert current["consumer.session.timeout.ms"] != "1000"
