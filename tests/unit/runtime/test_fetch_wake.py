"""Waking the fetchers of the partitions a consumer keeps through a rebalance."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from keyshift.runtime.fetch_wake import kept_partitions, one_per_leader, wake_fetchers

pytestmark = pytest.mark.unit


class RecordingConsumer:
    """Assigned partitions, their leaders (it is its own metadata source here), and
    the watermark queries asked of it."""

    def __init__(
        self,
        assigned: list[tuple[str, int]],
        leaders: dict[tuple[str, int], int],
        *,
        failing: bool = False,
        metadata_failing: bool = False,
        errors: dict[tuple[str, int], int] | None = None,
        closed: bool = False,
    ) -> None:
        self.assigned = [TopicPartition(t, p) for t, p in assigned]
        self.leaders = leaders
        self.failing = failing
        self.metadata_failing = metadata_failing
        self.errors = errors or {}
        self.closed = closed
        self.queried: list[tuple[str, int]] = []

    def assignment(self) -> list[TopicPartition]:
        if self.closed:
            raise KafkaException(KafkaError(KafkaError._DESTROY, "handle destroyed"))
        return list(self.assigned)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if self.metadata_failing:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))
        parts = {
            p: SimpleNamespace(id=p, leader=leader)
            for (t, p), leader in self.leaders.items()
            if t == topic
        }
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=parts)})

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        assert not cached, "a cached answer sends no request and wakes nothing"
        assert timeout is not None and timeout > 0
        if self.failing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
        self.queried.append((partition.topic, partition.partition))
        error = self.errors.get((partition.topic, partition.partition))
        if error is not None:
            raise KafkaException(KafkaError(error, "answered with an error"))
        return 0, 10


def test_kept_partitions_are_the_assignment_minus_the_changed_ones() -> None:
    consumer = RecordingConsumer([("a", 0), ("a", 1), ("b", 0)], {})
    kept = kept_partitions(consumer, [TopicPartition("a", 1)])
    assert [(tp.topic, tp.partition) for tp in kept] == [("a", 0), ("b", 0)]


def test_one_request_goes_to_each_leader_of_the_kept_partitions() -> None:
    leaders = {("a", 0): 1, ("a", 1): 2, ("a", 2): 1, ("a", 3): 2, ("b", 0): 3}
    consumer = RecordingConsumer(list(leaders), leaders)

    woken = wake_fetchers(consumer, [TopicPartition("a", 3)], consumer)

    assert woken == 3
    assert sorted(consumer.queried) == [("a", 0), ("a", 1), ("b", 0)]
    assert {leaders[q] for q in consumer.queried} == {1, 2, 3}


def test_a_partition_without_a_known_leader_is_queried_itself() -> None:
    consumer = RecordingConsumer([("a", 0), ("a", 1)], {("a", 0): -1, ("a", 1): -1})
    assert wake_fetchers(consumer, [], consumer) == 2
    assert sorted(consumer.queried) == [("a", 0), ("a", 1)]


def test_nothing_is_sent_when_no_partition_is_kept() -> None:
    consumer = RecordingConsumer([("a", 0)], {("a", 0): 1})
    assert wake_fetchers(consumer, [TopicPartition("a", 0)], consumer) == 0
    assert consumer.queried == []


@pytest.mark.parametrize("where", ["watermarks", "metadata", "assignment"])
def test_a_failed_wake_is_swallowed(where: str) -> None:
    consumer = RecordingConsumer(
        [("a", 0)],
        {("a", 0): 1},
        failing=where == "watermarks",
        metadata_failing=where == "metadata",
        closed=where == "assignment",  # the consumer is being closed
    )
    assert wake_fetchers(consumer, [], consumer) == 0


def test_a_failed_query_does_not_keep_the_other_leaders_from_theirs() -> None:
    leaders = {("a", 0): 1, ("a", 1): 2, ("a", 2): 3}
    errors = {("a", 0): KafkaError._UNKNOWN_PARTITION, ("a", 1): KafkaError._TIMED_OUT}
    consumer = RecordingConsumer(list(leaders), leaders, errors=errors)

    assert wake_fetchers(consumer, [], consumer) == 1
    assert sorted(consumer.queried) == [("a", 0), ("a", 1), ("a", 2)]


def test_a_broker_error_answer_still_woke_the_broker() -> None:
    # A leader not yet elected for a new topic answers with an error, but the
    # request reached the broker thread, which is all the wake needs.
    leaders = {("a", 0): 1}
    errors = {("a", 0): KafkaError.LEADER_NOT_AVAILABLE}
    consumer = RecordingConsumer(list(leaders), leaders, errors=errors)
    assert wake_fetchers(consumer, [], consumer) == 1


def test_the_budget_bounds_the_wake() -> None:
    leaders = {("a", p): p for p in range(4)}
    consumer = RecordingConsumer(list(leaders), leaders)
    assert wake_fetchers(consumer, [], consumer, budget_s=0.0) == 0
    assert consumer.queried == []


def test_topics_looked_up_after_the_budget_are_left_out() -> None:
    leaders = {("a", 0): 1, ("b", 0): 2}
    consumer = RecordingConsumer(list(leaders), leaders)
    assert one_per_leader(consumer, consumer.assignment(), time.monotonic() - 1) == []
    chosen = one_per_leader(consumer, consumer.assignment(), time.monotonic() + 10)
    assert [(tp.topic, tp.partition) for tp in chosen] == [("a", 0), ("b", 0)]
