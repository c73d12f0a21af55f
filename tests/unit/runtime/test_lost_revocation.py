"""Noticing a revocation the group coordinator asked for that never reached the consumer."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fakes import ManualClock
from keyshift.runtime.lost_revocation import (
    DESCRIBE_TIMEOUT_S,
    STUCK_AFTER_S,
    LostRevocationCheck,
    stuck_after_s,
)

pytestmark = pytest.mark.unit

ALL = [("t", p) for p in range(4)]


class Member:
    def __init__(self, held: list[tuple[str, int]], member_id: str | None = "me") -> None:
        self.held = held
        self.member_id = member_id
        self.broken = False

    def assignment(self) -> list[TopicPartition]:
        if self.broken:
            raise KafkaException(KafkaError(KafkaError._DESTROY, "handle destroyed"))
        return [TopicPartition(t, p) for t, p in self.held]

    def memberid(self) -> str | None:
        return self.member_id


class Coordinator:
    """Answers descriptions of the group: this member's target assignment; answers
    wait until ``answer`` unless ``prompt``."""

    def __init__(self, assigned: list[tuple[str, int]]) -> None:
        self.assigned = assigned
        self.classic = False
        self.prompt = True
        self.failing = False
        self.asked: list[Future[Any]] = []

    def describe_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]:
        assert kwargs["request_timeout"] > 0
        future: Future[Any] = Future()
        self.asked.append(future)
        if self.prompt:
            self.answer(future)
        return {group_ids[0]: future}

    def answer(self, future: Future[Any]) -> None:
        if self.failing:
            future.set_exception(KafkaException(KafkaError(KafkaError._TIMED_OUT, "slow")))
            return
        target = SimpleNamespace(topic_partitions=[TopicPartition(t, p) for t, p in self.assigned])
        me = SimpleNamespace(
            member_id="me",
            assignment=SimpleNamespace(topic_partitions=Member(ALL).assignment()),
            target_assignment=None if self.classic else target,
        )
        other = SimpleNamespace(
            member_id="other",
            assignment=SimpleNamespace(topic_partitions=[]),
            target_assignment=SimpleNamespace(topic_partitions=[]),
        )
        future.set_result(SimpleNamespace(members=[other, me]))


def make(coordinator: Coordinator, clock: ManualClock, callbacks: list[int]) -> LostRevocationCheck:
    return LostRevocationCheck(
        coordinator,
        "app",
        lambda: callbacks[0],
        every_s=1.0,
        stuck_after_s=3.0,
        clock=clock,
    )


def run(
    check: LostRevocationCheck, member: Member, clock: ManualClock, seconds: float
) -> list[frozenset[tuple[str, int]]]:
    """Tick twice per simulated 0.5 s (an ask, then its answer); the non-empty results."""
    found = []
    end = clock.now + seconds
    while clock.now < end:
        clock.now += 0.5
        for _ in range(2):
            result = check.tick(member)
            if result:
                found.append(result)
    return found


def test_partitions_held_long_after_the_group_gave_them_away_are_reported() -> None:
    clock, callbacks = ManualClock(), [0]
    coordinator = Coordinator(assigned=ALL[:2])
    check = make(coordinator, clock, callbacks)
    member = Member(ALL)

    # First seen at the first look (after 1 s), reported 3 s later.
    assert run(check, member, clock, 3.5) == []
    assert run(check, member, clock, 1.0) == [frozenset(ALL[2:])]
    assert run(check, member, clock, 2.5) == []  # the wait starts over after a report


def test_nothing_is_reported_while_the_consumer_holds_what_it_is_assigned() -> None:
    clock, callbacks = ManualClock(), [0]
    check = make(Coordinator(assigned=ALL), clock, callbacks)
    assert run(check, Member(ALL), clock, 20.0) == []


def test_a_rebalance_callback_in_between_starts_the_wait_over() -> None:
    # A revocation that reaches the consumer runs a callback: the partitions may
    # be on their way out, and the wait starts again.
    clock, callbacks = ManualClock(), [0]
    check = make(Coordinator(assigned=ALL[:2]), clock, callbacks)
    member = Member(ALL)
    assert run(check, member, clock, 2.5) == []
    callbacks[0] += 1
    assert run(check, member, clock, 2.5) == []
    assert run(check, member, clock, 2.0) == [frozenset(ALL[2:])]


def test_partitions_released_meanwhile_are_not_reported() -> None:
    clock, callbacks = ManualClock(), [0]
    coordinator = Coordinator(assigned=ALL[:2])
    check = make(coordinator, clock, callbacks)
    member = Member(ALL)
    assert run(check, member, clock, 2.5) == []
    member.held = ALL[:3]  # gave partition 3 up (say, the callback is under way)
    assert run(check, member, clock, 4.0) == [frozenset(ALL[2:3])]


@pytest.mark.parametrize(
    "case",
    ["not a member", "no member id", "describe fails", "classic member", "client fails"],
)
def test_no_evidence_is_no_report(case: str) -> None:
    clock, callbacks = ManualClock(), [0]
    coordinator = Coordinator(assigned=ALL[:2])
    member = Member(ALL, member_id="stranger" if case == "not a member" else "me")
    if case == "no member id":
        member.member_id = None
    coordinator.failing = case == "describe fails"
    coordinator.classic = case == "classic member"
    member.broken = case == "client fails"
    check = make(coordinator, clock, callbacks)
    assert run(check, member, clock, 20.0) == []


def test_a_description_that_never_comes_is_dropped_and_asked_again() -> None:
    clock, callbacks = ManualClock(), [0]
    coordinator = Coordinator(assigned=ALL[:2])
    coordinator.prompt = False
    check = make(coordinator, clock, callbacks)
    member = Member(ALL)
    clock.now += 1.0
    assert check.tick(member) == frozenset()
    assert len(coordinator.asked) == 1
    clock.now += DESCRIBE_TIMEOUT_S + 0.1
    assert check.tick(member) == frozenset()  # dropped
    clock.now += 1.0
    check.tick(member)
    assert len(coordinator.asked) == 2


def test_it_asks_no_more_than_once_per_interval() -> None:
    clock, callbacks = ManualClock(), [0]
    coordinator = Coordinator(assigned=ALL)
    check = make(coordinator, clock, callbacks)
    member = Member(ALL)
    for _ in range(100):
        clock.now += 0.1
        check.tick(member)
    # 10 s: an ask a second after the last answer, its answer a tick later
    assert 7 <= len(coordinator.asked) <= 10


def test_the_wait_is_three_heartbeats_and_six_seconds_at_least() -> None:
    assert stuck_after_s(0.05) == STUCK_AFTER_S == 6.0
    assert stuck_after_s(5.0) == 15.0
