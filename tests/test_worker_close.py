"""Worker.close: the final commit when the group is rebalancing (pure unit tests)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from keyshift.app.worker import Worker
from keyshift.config import Settings
from keyshift.errors import BrokerError
from keyshift.operators.topology import Topology

pytestmark = pytest.mark.unit


class _Client:
    """Records the calls close() makes on a Kafka client."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0


def _worker(guarantee: str, error: KafkaError) -> tuple[Worker, _Client, _Client]:
    worker = Worker(Topology("app"), Settings.build("app", brokers="b:1", state="memory://",
                                                    guarantee=guarantee))
    consumer, producer = _Client(), _Client()
    worker._consumer, worker._producer = consumer, producer  # type: ignore[assignment]

    def commit() -> None:
        cause = KafkaException(error)
        raise BrokerError(f"transaction commit failed: {cause}") from cause

    worker.commit = commit  # type: ignore[method-assign]
    return worker, consumer, producer


def _rebalancing(abortable: bool = True) -> KafkaError:
    return KafkaError(KafkaError.ILLEGAL_GENERATION, "group rebalancing",
                      txn_requires_abort=abortable)


def test_exactly_once_close_aborts_a_rejected_final_transaction() -> None:
    worker, consumer, producer = _worker("exactly_once", _rebalancing())
    worker.close()  # no exception: a graceful stop, not a crash
    assert consumer.calls == ["close"]
    assert producer.calls == ["abort", "flush"]


def test_a_fatal_final_commit_error_still_raises() -> None:
    worker, _, producer = _worker("exactly_once", _rebalancing(abortable=False))
    with pytest.raises(BrokerError):
        worker.close()
    assert "abort" not in producer.calls


def test_at_least_once_commit_errors_still_raise() -> None:
    worker, _, _ = _worker("at_least_once", _rebalancing())
    with pytest.raises(BrokerError):
        worker.close()
