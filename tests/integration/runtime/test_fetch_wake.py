"""Waking the fetchers of kept partitions, with a real consumer and broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from kafkautil import create_topic
from keyshift.runtime.fetch_wake import wake_fetchers

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_keyshift_env")]


def test_each_leader_of_the_kept_partitions_gets_one_request(
    brokers: str, admin: Any, unique: Any
) -> None:
    topic = unique("wake")
    create_topic(admin, topic, 4)
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": unique("wake-g")})
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(4)])
        leaders = _leaders_once_served(consumer, admin, topic, 4)
        woken = wake_fetchers(consumer, [TopicPartition(topic, 3)], admin, budget_s=10.0)
        assert woken == len({leaders[p] for p in range(3)})
        assert wake_fetchers(consumer, [TopicPartition(topic, p) for p in range(4)], admin) == 0
    finally:
        consumer.close()


def _leaders_once_served(
    consumer: Consumer, admin: Any, topic: str, partitions: int
) -> dict[int, int]:
    """The partitions' leaders, once every partition of the new topic has a leader
    that answers the consumer's watermark query (creation returns before that)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            for p in range(partitions):
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
            metadata = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
            leaders = {p.id: p.leader for p in metadata}
            if len(leaders) == partitions and min(leaders.values()) >= 0:
                return leaders
        except KafkaException:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"{topic} has no leaders after 30 s"
        time.sleep(0.2)


# A consumer that wakes its fetchers from inside its own rebalance callbacks, as the
# worker does, while a second member joins and takes partitions away. It runs in a
# child process: a call that breaks the client's callback bookkeeping aborts the
# process when the callback returns.
_IN_CALLBACKS = """
import sys, time
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from keyshift.runtime.fetch_wake import wake_fetchers

brokers, topic, group = sys.argv[1:4]
admin = AdminClient({"bootstrap.servers": brokers})
woken = []

def member(wake):
    c = Consumer({"bootstrap.servers": brokers, "group.id": group,
                  "group.protocol": "consumer"})
    def on_assign(c, parts):
        c.incremental_assign(parts)
        if wake:
            woken.append(("assign", wake_fetchers(c, parts, admin, budget_s=10.0)))
    def on_revoke(c, parts):
        c.incremental_unassign(parts)
        if wake and parts:
            woken.append(("revoke", wake_fetchers(c, parts, admin, budget_s=10.0)))
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    return c

first = member(True)
deadline = time.time() + 60
while len(first.assignment()) < 4 and time.time() < deadline:
    first.consume(10, 0.1)
second = member(False)
while time.time() < deadline:
    first.consume(10, 0.1)
    second.consume(10, 0.1)
    if first.assignment() and second.assignment() and len(first.assignment()) < 4:
        break
first.consume(10, 0.5)
print(len(first.assignment()), sorted(set(woken)))
second.close()
first.close()
"""


def test_waking_inside_rebalance_callbacks_keeps_the_consumer_alive(
    brokers: str, admin: Any, unique: Any
) -> None:
    topic = unique("wake-cb")
    create_topic(admin, topic, 4)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_IN_CALLBACKS), brokers, topic, unique("g")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kept, woken = done.stdout.strip().split(" ", 1)
    assert 0 < int(kept) < 4
    # The partitions it kept were woken after the revocation's unassign.
    assert "('revoke', 1)" in woken
