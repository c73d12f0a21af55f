"""Leaving the consumer group, and joining it again as a new member.

Closing a consumer runs its revocation callback and leaves the group; both are
kept within a time bound, because a close that hangs (librdkafka mid-rebalance)
must not keep a worker from exiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException

from keyshift.errors import BrokerError

log = logging.getLogger("keyshift.worker")

#: Leaving the group normally takes well under a second; a close that hangs
#: (librdkafka mid-rebalance) must not keep a failed worker from exiting.
CLOSE_TIMEOUT_S = 30.0
#: How long a static member (classic protocol) may take to leave the group
#: before it closes anyway (and its partitions wait for the session timeout).
STATIC_LEAVE_S = 5.0


def leave_as_static_member(consumer: Consumer) -> None:
    """Leave the group for good although a static member: librdkafka sends no
    LeaveGroup when a static member closes (KIP-345), but does on unsubscribe.
    Closing right after unsubscribing skips it, so wait until the member id is
    gone (the leave was sent), at most ``STATIC_LEAVE_S``."""
    try:
        consumer.unsubscribe()
        deadline = time.monotonic() + STATIC_LEAVE_S
        while consumer.memberid() and time.monotonic() < deadline:
            consumer.consume(1, 0.05)
    except (KafkaException, RuntimeError) as exc:
        log.warning(
            "leaving the group as a static member failed; its partitions wait for "
            "the session timeout",
            extra={"error": str(exc)},
        )


def close_within(consumer: Consumer, timeout_s: float) -> tuple[bool, BaseException | None]:
    """Close ``consumer`` (leave the group, run the revocation callback) in a
    helper thread. Returns whether it is still stuck after ``timeout_s``, and
    what the close raised."""
    failure: list[BaseException] = []

    def close() -> None:
        try:
            consumer.close()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    closer = threading.Thread(target=close, name="keyshift-consumer-close", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        return True, None
    return False, failure[0] if failure else None


def rejoin(
    consumer: Consumer,
    new_consumer: Callable[[], Consumer],
    subscribe: Callable[[Consumer], None],
) -> Consumer:
    """Leave the group and join it again as a new member; returns the new consumer.

    Closing ``consumer`` runs its revocation callback for every partition it holds
    (their tasks commit and are released) and leaves the group. The new member's
    first heartbeat carries its whole state, so the coordinator's answer does too:
    the way out when an answer was lost (see :mod:`keyshift.runtime.lost_revocation`).
    Unsubscribing and subscribing the same consumer again is no way out: librdkafka
    sends the second join while the leave is under way, and the coordinator
    answers with a fatal INVALID_REQUEST.
    """
    stuck, error = close_within(consumer, CLOSE_TIMEOUT_S)
    if error is not None:
        raise BrokerError(f"leaving the group to rejoin it failed: {error}") from error
    if stuck:
        raise BrokerError(f"the consumer did not close within {CLOSE_TIMEOUT_S:.0f}s")
    fresh = new_consumer()
    subscribe(fresh)
    return fresh
