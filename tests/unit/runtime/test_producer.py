"""confluent-kafka's way of reporting a failed transactional call whose delivery
reports were served after it failed (a SystemError caused by the real error), and
what a fenced transactional producer means."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from keyshift.errors import BrokerError, InstanceConflict
from keyshift.runtime.producer import client_errors, fenced_error, producer_fenced

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
