"""confluent-kafka's way of reporting a failed transactional call whose delivery
reports were served after it failed (a SystemError caused by the real error), and
what a fenced transactional producer means."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from keyshift.errors import BrokerError, InstanceConflict
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.producer import RecordProducer, client_errors, fenced_error, producer_fenced

pytestmark = pytest.mark.unit


def fenced() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))


def test_a_system_error_caused_by_a_kafka_error_raises_the_kafka_error() -> None:
    with pytest.raises(KafkaException) as raised, client_errors():
        try:
            raise fenced()
        except KafkaException as exc:
            raise SystemError("<function f> returned a result with an exception set") from exc
    assert producer_fenced(raised.value)


def test_other_system_errors_pass_unchanged() -> None:
    with pytest.raises(SystemError), client_errors():
        raise SystemError("something else")


def test_a_fence_within_the_transaction_timeout_is_another_process_with_the_id() -> None:
    error = fenced_error("app-w1", fenced(), open_s=0.4, timeout_s=10.0)
    assert isinstance(error, InstanceConflict)
    assert "'app-w1'" in str(error) and "--instance-id" in str(error)


def test_a_fence_after_the_transaction_outlived_its_timeout_is_a_cluster_failure() -> None:
    # The coordinator aborted the expired transaction and bumped the epoch: a
    # restart recovers, so the error must not be the one supervisors give up on.
    error = fenced_error("app-w1", fenced(), open_s=12.5, timeout_s=10.0)
    assert isinstance(error, BrokerError) and not isinstance(error, InstanceConflict)
    assert "open 12.5s" in str(error) and "transaction.timeout.ms (10s)" in str(error)


class Sink:
    """Takes records; the fence is what the tests hand to ``fenced``."""

    def produce(self, *args: object, **kwargs: object) -> None:
        pass

    def poll(self, timeout: float = 0) -> int:
        return 0


def test_an_idle_transaction_fenced_by_a_second_process_is_an_instance_conflict() -> None:
    # librdkafka begins a transaction locally; its timeout only runs at the
    # coordinator once a record is sent. A producer idle for longer than the
    # timeout and then fenced was fenced by another process.
    now = [1000.0]
    records = RecordProducer(
        {"transactional.id": "app-w1", "transaction.timeout.ms": 10_000},
        metrics=Metrics(),
        dlq_topic="app--dlq",
        app_id="app",
        transactional=True,
        factory=lambda config: Sink(),  # type: ignore[arg-type,return-value]
        clock=lambda: now[0],
    )
    records.transaction_began()
    now[0] += 60
    assert isinstance(records.fenced(fenced()), InstanceConflict)
    records.send("out", b"v", b"k")
    now[0] += 12
    error = records.fenced(fenced())
    assert isinstance(error, BrokerError) and not isinstance(error, InstanceConflict)
    records.transaction_began()
    assert isinstance(records.fenced(fenced()), InstanceConflict)
