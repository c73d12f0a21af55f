"""The Kafka client configs keyshift derives from its settings: the consumer group's
timeouts under both protocols, the KIP-848 group configs, the producer's
transaction timeout."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fakes import FakeCluster, FakeProducer
from keyshift import Settings
from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS
from keyshift.errors import ConfigError
from keyshift.retry import Retry
from keyshift.runtime.kafka import (
    consumer_config,
    consumer_group_configs,
    end_offsets,
    group_timeouts,
    producer_config,
    stable_end_offsets,
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


def open_transaction(cluster: FakeCluster, records: int) -> FakeProducer:
    producer = cluster.clients().producer({"transactional.id": "earlier-owner"})
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(records):
        producer.produce("cl", b"1", f"k{i}".encode(), partition=0)
    producer.flush()
    return producer


class Clock:
    """A clock that sleeping moves, with something due at a given time."""

    def __init__(self, at: float, then: Callable[[], None]) -> None:
        self.now, self.at, self.then = 0.0, at, then

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.at is not None and self.now >= self.at:
            self.at = None  # type: ignore[assignment]
            self.then()


def test_stable_end_offsets_wait_for_an_earlier_owners_open_transaction() -> None:
    """A paused owner's commit under way: its records count once it commits."""
    cluster = FakeCluster()
    cluster.create_topic("cl", 2)
    plain = cluster.clients().producer({})
    plain.produce("cl", b"1", b"x", partition=1)
    plain.flush()
    earlier = open_transaction(cluster, 3)
    clock = Clock(at=2.0, then=earlier.commit_transaction)
    admin = cluster.clients().admin({})
    ends = stable_end_offsets(
        admin, [("cl", 0), ("cl", 1)], wait_s=30, clock=clock, sleep=clock.sleep
    )
    # Partition 0: the three records and the transaction's commit marker.
    assert ends == {("cl", 0): 4, ("cl", 1): 1} and 2.0 <= clock.now < 2.1


def test_stable_end_offsets_give_up_at_the_deadline_with_the_last_stable_offset() -> None:
    cluster = FakeCluster()
    cluster.create_topic("cl", 1)
    open_transaction(cluster, 3)
    clock = Clock(at=1e9, then=lambda: None)
    admin = cluster.clients().admin({})
    ends = stable_end_offsets(admin, [("cl", 0)], wait_s=5, clock=clock, sleep=clock.sleep)
    assert ends == {("cl", 0): 0} and 5.0 <= clock.now < 5.1


class StaleMetadataAdmin:
    """Refuses offset requests with a stale leader epoch until its metadata is
    looked up again, as librdkafka's admin client does after a broker restarts."""

    def __init__(self) -> None:
        self.stale = True
        self.looked_up: list[str] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        self.looked_up.append(str(topic))
        self.stale = False
        return object()

    def list_offsets(self, wanted: dict[TopicPartition, object], **_: object) -> dict[Any, Any]:
        out: dict[Any, Future[Any]] = {}
        for tp in wanted:
            future: Future[Any] = Future()
            if self.stale:
                error = KafkaError(KafkaError.FENCED_LEADER_EPOCH, "stale epoch")
                future.set_exception(KafkaException(error))
            else:
                future.set_result(SimpleNamespace(offset=42))
            out[tp] = future
        return out


def test_end_offsets_refresh_stale_leader_metadata_and_try_again() -> None:
    admin = StaleMetadataAdmin()
    ends = end_offsets(admin, [("cl", 0), ("cl", 1)], retry=Retry(base_s=0.0))  # type: ignore[arg-type]
    assert ends == {("cl", 0): 42, ("cl", 1): 42}
    assert admin.looked_up == ["cl"]
