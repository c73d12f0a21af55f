"""confluent-kafka's way of reporting a failed transactional call whose delivery
reports were served after it failed: a SystemError caused by the real error."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from keyshift.runtime.producer import client_errors, producer_fenced

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
