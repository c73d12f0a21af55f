"""Notice a revocation the group coordinator asked for that never reached this consumer.

Under the consumer group protocol (KIP-848) the coordinator tells a member to give
partitions up in one heartbeat answer, and then waits for the member to report
them gone, holding back their next owner meanwhile. librdkafka times a heartbeat
out after the heartbeat interval and retries the same request; the retry's
answer repeats nothing, because the coordinator already sent the change. A member
whose answer came late (a loaded broker, a broker failover) so keeps partitions
the group has given away, and no scale-out reaches it until the coordinator's
rebalance timeout (``max.poll.interval.ms``) fences it.

The check compares, every few seconds, the partitions this consumer holds with
the coordinator's target assignment for it (``DescribeConsumerGroups``).
Partitions held here but outside the target, through looks ``stuck_after_s``
apart with no rebalance callback in between, are a revocation this consumer never
heard of: one it heard of runs its callback within a heartbeat. The worker then
rejoins with a new member (see :func:`keyshift.runtime.membership.rejoin`), whose
first heartbeat carries its whole state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger("keyshift.kafka")

#: How often the coordinator's record of this member is read.
CHECK_EVERY_S = 3.0
#: How long partitions may stay held here after the group gave them away, at
#: least (see :func:`stuck_after_s`). A revocation that reached the consumer runs
#: its callback within a heartbeat and one loop turn.
STUCK_AFTER_S = 6.0
#: The most one description may take; a slower one is dropped.
DESCRIBE_TIMEOUT_S = 5.0

Partition = tuple[str, int]


def stuck_after_s(heartbeat_s: float) -> float:
    """How long held partitions outside the target mean a lost revocation, for a
    group heartbeating every ``heartbeat_s``: three heartbeats, six seconds at least."""
    return max(STUCK_AFTER_S, 3 * heartbeat_s)


class GroupDescriber(Protocol):
    """The part of :class:`confluent_kafka.admin.AdminClient` the check uses."""

    def describe_consumer_groups(
        self, group_ids: list[str], **kwargs: Any
    ) -> dict[str, Future[Any]]: ...


class GroupMember(Protocol):
    """The part of :class:`confluent_kafka.Consumer` the check uses."""

    def assignment(self) -> list[TopicPartition]: ...

    def memberid(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Asked:
    """A description in flight, and what was true here when it was asked for."""

    future: Future[Any]
    at: float
    member_id: str
    held: frozenset[Partition]
    callbacks: int


@dataclass(frozen=True, slots=True)
class _Suspect:
    since: float
    partitions: frozenset[Partition]
    callbacks: int


class LostRevocationCheck:
    """Call :meth:`tick` from the worker's loop; it never blocks on the broker."""

    def __init__(
        self,
        admin: GroupDescriber,
        group: str,
        callbacks: Callable[[], int],
        *,
        every_s: float | None = None,
        stuck_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admin = admin
        self.group = group
        self.callbacks = callbacks
        self.every_s = CHECK_EVERY_S if every_s is None else every_s
        self.stuck_after_s = STUCK_AFTER_S if stuck_after_s is None else stuck_after_s
        self.clock = clock
        self._asked: _Asked | None = None
        self._suspect: _Suspect | None = None
        self._next_at = clock() + self.every_s

    def tick(self, consumer: GroupMember) -> frozenset[Partition]:
        """The partitions the group gave away long ago but ``consumer`` still holds
        (empty while there are none, or not yet long enough)."""
        now = self.clock()
        asked = self._asked
        if asked is None:
            if now >= self._next_at:
                self._ask(consumer, now)
            return frozenset()
        if not asked.future.done():
            if now - asked.at > DESCRIBE_TIMEOUT_S:
                self._asked = None  # a broker that slow says nothing fresh
                self._next_at = now + self.every_s
            return frozenset()
        self._asked = None
        self._next_at = now + self.every_s
        try:
            held_now = _held(consumer)
        except (KafkaException, RuntimeError):  # a client in trouble: no evidence
            return frozenset()
        return self._judge(asked, held_now)

    def _ask(self, consumer: GroupMember, now: float) -> None:
        self._next_at = now + self.every_s
        try:
            member_id = consumer.memberid()
            held = _held(consumer)
            if not member_id or not held:
                self._suspect = None
                return
            future = self.admin.describe_consumer_groups(
                [self.group], request_timeout=DESCRIBE_TIMEOUT_S
            )[self.group]
        except (KafkaException, RuntimeError) as exc:  # asked again next time
            log.debug("cannot describe the group", extra={"error": str(exc)})
            return
        self._asked = _Asked(future, now, member_id, held, self.callbacks())

    def _judge(self, asked: _Asked, held_now: frozenset[Partition]) -> frozenset[Partition]:
        unheard = self._unheard(asked, held_now)
        if not unheard:
            self._suspect = None
            return frozenset()
        suspect = self._suspect
        if suspect is None or suspect.callbacks != asked.callbacks:
            self._suspect = _Suspect(asked.at, unheard, asked.callbacks)
            return frozenset()
        lasting = unheard & suspect.partitions
        if not lasting:
            self._suspect = _Suspect(asked.at, unheard, asked.callbacks)
            return frozenset()
        if asked.at - suspect.since < self.stuck_after_s:
            return frozenset()
        self._suspect = None
        return lasting

    def _unheard(self, asked: _Asked, held_now: frozenset[Partition]) -> frozenset[Partition]:
        """Held here from the ask to the answer, with no callback in between, and
        outside the coordinator's target assignment for this member."""
        if self.callbacks() != asked.callbacks:
            return frozenset()
        try:
            description = asked.future.result()
        except Exception as exc:  # a failed description is no evidence either way
            log.debug("describing the group failed", extra={"error": str(exc)})
            return frozenset()
        for member in description.members:
            if member.member_id == asked.member_id:
                target = getattr(member, "target_assignment", None)
                if target is None:  # a classic-protocol member has none
                    return frozenset()
                wanted = {(tp.topic, tp.partition) for tp in target.topic_partitions}
                return (asked.held & held_now) - wanted
        return frozenset()  # not (or no longer) a member: the coordinator fences it


def _held(consumer: GroupMember) -> frozenset[Partition]:
    return frozenset((tp.topic, tp.partition) for tp in consumer.assignment())
