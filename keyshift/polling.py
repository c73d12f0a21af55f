"""Batch consumption that returns as soon as anything is there.

``Consumer.consume(n, timeout)`` blocks until ``n`` messages have arrived or the
timeout has passed, even when the partition end was reached long before. This
helper takes what is ready without waiting, and waits only while nothing is.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def consume_available(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to ``max_messages`` ready messages (or events); waits up to ``timeout_s`` for one."""
    msgs: list[Message] = consumer.consume(max_messages, 0)
    if msgs or timeout_s <= 0:
        return msgs
    # num_messages=1 returns at the first message or event (e.g. partition EOF).
    msgs = consumer.consume(1, timeout_s)
    if msgs and max_messages > 1:
        more: list[Message] = consumer.consume(max_messages - 1, 0)
        msgs.extend(more)
    return msgs
