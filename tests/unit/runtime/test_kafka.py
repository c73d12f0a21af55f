"""The Kafka client configs keyshift derives from its settings: the consumer group's
timeouts under both protocols, the KIP-848 group configs, the producer's
transaction timeout."""

from __future__ import annotations

import pytest

from keyshift import Settings
from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS
from keyshift.errors import ConfigError
from keyshift.runtime.kafka import (
    consumer_config,
    consumer_group_configs,
    group_timeouts,
    producer_config,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_keyshift_env")]


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


def test_kafka_settings_override_the_timeouts_under_both_protocols() -> None:
    kafka = {"session.timeout.ms": "30000", "heartbeat.interval.ms": "1000"}
    classic = Settings.build("app", group_protocol="classic", kafka=kafka)
    assert group_timeouts(classic) == (30_000, 1000)
    assert consumer_config(classic, "i")["session.timeout.ms"] == "30000"
    kip848 = Settings.build("app", group_protocol="consumer", kafka=kafka)
    configs = consumer_group_configs(kip848)
    assert configs["consumer.session.timeout.ms"] == "30000"
    assert configs["consumer.heartbeat.interval.ms"] == "1000"


def test_a_timeout_that_is_not_a_number_names_the_setting() -> None:
    for protocol in ("classic", "consumer"):
        settings = Settings.build(
            "app", group_protocol=protocol, kafka={"heartbeat.interval.ms": "fast"}
        )
        with pytest.raises(ConfigError, match="kafka.heartbeat.interval.ms"):
            consumer_config(settings, "i")
        with pytest.raises(ConfigError, match="kafka.heartbeat.interval.ms"):
            consumer_group_configs(settings)


def test_producer_config_takes_the_transaction_timeout() -> None:
    plain = Settings.build("app", guarantee="exactly_once")
    assert producer_config(plain, "t")["transaction.timeout.ms"] == DEFAULT_TRANSACTION_TIMEOUT_MS
    given = Settings.build(
        "app", guarantee="exactly_once", kafka={"transaction.timeout.ms": "60000"}
    )
    assert producer_config(given, "t")["transaction.timeout.ms"] == "60000"


def test_the_group_consumer_keeps_its_client_id_when_the_kafka_settings_name_one() -> None:
    """The workers find each other's instances by the consumer's client id."""
    settings = Settings.build("app", kafka={"client.id": "quota-name"})
    assert consumer_config(settings, "w1")["client.id"] == "app--w1"
    assert producer_config(settings, None)["client.id"] == "quota-name"
