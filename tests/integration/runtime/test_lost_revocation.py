"""A revocation the consumer never heard of, noticed against a real broker, and the
rejoin that ends it.

A member that is told to give partitions up but does not (here: it does not poll,
so its revocation callback never runs; in the field: the heartbeat answer that
carried the revocation was lost) looks the same to the group coordinator either
way: it keeps partitions outside its target assignment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from kafkautil import create_topic
from keyshift.runtime.kafka import apply_group_configs
from keyshift.runtime.lost_revocation import LostRevocationCheck
from keyshift.runtime.membership import rejoin

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_keyshift_env")]

PARTITIONS = 4


class Member:
    """A KIP-848 group consumer that records its callbacks."""

    def __init__(self, brokers: str, group: str, topic: str) -> None:
        self.topic = topic
        self.callbacks = 0
        self.revoked: set[int] = set()
        self.consumer = self.new_consumer(brokers, group)
        self.subscribe(self.consumer)

    @staticmethod
    def new_consumer(brokers: str, group: str) -> Consumer:
        return Consumer(
            {"bootstrap.servers": brokers, "group.id": group, "group.protocol": "consumer"}
        )

    def subscribe(self, consumer: Consumer) -> None:
        def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
            self.callbacks += 1
            c.incremental_assign(parts)

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            self.callbacks += 1
            self.revoked.update(tp.partition for tp in parts)
            c.incremental_unassign(parts)

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)

    def held(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}


def poll_until(members: list[Member], done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for m in members:
            m.consumer.poll(0.05)


@pytest.fixture
def group(brokers: str, admin: Any, unique: Any) -> tuple[str, str]:
    topic, group = unique("lostrev"), unique("lostrev-g")
    create_topic(admin, topic, PARTITIONS)
    # Quick heartbeats: the coordinator tells the first member of the second one soon.
    apply_group_configs(admin, group, {"consumer.heartbeat.interval.ms": "100"})
    return topic, group


def test_a_balanced_group_reports_nothing(brokers: str, admin: Any, group: Any) -> None:
    topic, group_id = group
    a, b = Member(brokers, group_id, topic), Member(brokers, group_id, topic)
    try:
        poll_until([a, b], lambda: len(a.held()) == len(b.held()) == PARTITIONS // 2, 30)
        check = LostRevocationCheck(
            admin, group_id, lambda: a.callbacks, every_s=0.2, stuck_after_s=1.0
        )
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for m in (a, b):
                m.consumer.poll(0.05)
            assert check.tick(a.consumer) == frozenset()
    finally:
        a.consumer.close()
        b.consumer.close()


def test_partitions_kept_past_their_revocation_are_noticed_and_a_rejoin_releases_them(
    brokers: str, admin: Any, group: Any
) -> None:
    topic, group_id = group
    a = Member(brokers, group_id, topic)
    b: Member | None = None
    try:
        poll_until([a], lambda: len(a.held()) == PARTITIONS, 30)
        b = Member(brokers, group_id, topic)
        # a stops polling: the revocation reaches its client, never its callback.
        check = LostRevocationCheck(
            admin, group_id, lambda: a.callbacks, every_s=0.2, stuck_after_s=1.5
        )
        deadline = time.monotonic() + 30
        unheard: frozenset[tuple[str, int]] = frozenset()
        while not unheard:
            assert time.monotonic() < deadline, "the kept partitions were not noticed"
            b.consumer.poll(0.05)
            unheard = check.tick(a.consumer)
        assert len(unheard) == PARTITIONS // 2
        assert {p for _, p in unheard} <= a.held()
        assert b.held() == set()  # waiting for a to let them go

        a.consumer = rejoin(a.consumer, lambda: Member.new_consumer(brokers, group_id), a.subscribe)

        assert a.revoked == set(range(PARTITIONS))  # the close revoked everything held
        assert b is not None
        poll_until(
            [a, b],
            lambda: (
                len(a.held()) == len(b.held()) == PARTITIONS // 2
                and a.held() | b.held() == set(range(PARTITIONS))
            ),
            30,
        )
    finally:
        a.consumer.close()
        if b is not None:
            b.consumer.close()
