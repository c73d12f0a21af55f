"""Injectable retry with exponential backoff for network calls that can fail transiently."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

T = TypeVar("T")
log = logging.getLogger("keyshift.retry")


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a :class:`KafkaException` carries (None for any other
    exception, or one raised without it)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def kafka_retriable(exc: BaseException) -> bool:
    err = kafka_error(exc)
    if err is None:
        return False
    return bool(err.retriable()) or err.code() in (
        6,  # NOT_LEADER_OR_FOLLOWER
        3,  # UNKNOWN_TOPIC_OR_PARTITION (just created)
        5,  # LEADER_NOT_AVAILABLE
        74,  # FENCED_LEADER_EPOCH (the client's metadata predates a leader change)
        75,  # UNKNOWN_LEADER_EPOCH (the broker's predates it)
        -185,  # _TIMED_OUT
        -187,  # _ALL_BROKERS_DOWN
    )


@dataclass(frozen=True, slots=True)
class Retry:
    """Call ``fn`` until it succeeds, sleeping base*2^n (capped) between tries."""

    attempts: int = 8
    base_s: float = 0.1
    cap_s: float = 2.0
    retriable: Callable[[BaseException], bool] = kafka_retriable

    def call(self, fn: Callable[[], T], what: str) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.attempts - 1 or not self.retriable(exc):
                    raise
                delay = min(self.cap_s, self.base_s * 2**attempt)
                log.debug("retrying", extra={"what": what, "error": str(exc), "delay": delay})
                time.sleep(delay)
        raise AssertionError("unreachable")


DEFAULT_RETRY = Retry()
