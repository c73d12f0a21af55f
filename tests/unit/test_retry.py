"""Retrying network calls that fail transiently."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from keyshift.retry import Retry, kafka_error, kafka_retriable

pytestmark = pytest.mark.unit


def failure(code: int) -> KafkaException:
    return KafkaException(KafkaError(code, "failed"))


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
    ],
)
def test_leader_changes_and_timeouts_are_retriable(code: int) -> None:
    assert kafka_retriable(failure(code))


@pytest.mark.parametrize(
    "exc",
    [failure(KafkaError.TOPIC_AUTHORIZATION_FAILED), ValueError("bad"), KafkaException()],
)
def test_other_failures_are_not(exc: BaseException) -> None:
    assert not kafka_retriable(exc)


def test_a_transient_failure_is_retried_until_the_call_succeeds() -> None:
    answers: list[BaseException | str] = [
        failure(KafkaError.FENCED_LEADER_EPOCH),
        failure(KafkaError.LEADER_NOT_AVAILABLE),
        "done",
    ]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert Retry(base_s=0.0).call(call, "test") == "done"
    assert answers == []


def test_a_lasting_or_permanent_failure_is_raised() -> None:
    calls: list[int] = []

    def lasting() -> None:
        calls.append(1)
        raise failure(KafkaError.LEADER_NOT_AVAILABLE)

    with pytest.raises(KafkaException):
        Retry(attempts=3, base_s=0.0).call(lasting, "test")
    assert len(calls) == 3

    def permanent() -> None:
        calls.append(1)
        raise failure(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    calls.clear()
    with pytest.raises(KafkaException):
        Retry(attempts=3, base_s=0.0).call(permanent, "test")
    assert len(calls) == 1


def test_kafka_error_is_the_error_a_kafka_exception_carries() -> None:
    error = KafkaError(KafkaError.LEADER_NOT_AVAILABLE, "moving")
    assert kafka_error(KafkaException(error)) is error
    assert kafka_error(KafkaException()) is None
    assert kafka_error(KafkaException("text only")) is None
    assert kafka_error(ValueError(error)) is None
