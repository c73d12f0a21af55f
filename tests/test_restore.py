"""Restore on assignment, against real Kafka and Redis: what replay may trust."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from kafkautil import create_topic
from keyshift.app.kafka import control_consumer_config, control_producer_config, reader_config
from keyshift.config import Settings
from keyshift.migrations.locations import Location, LocationsView
from keyshift.migrations.restore import Restorer
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_KEY
from keyshift.state.redis import RedisStore

pytestmark = pytest.mark.integration

GONE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_replay_does_not_trust_a_partial_local_copy(
    brokers: str, redis_url: str, admin: Any, unique: Callable[..., str]
) -> None:
    """A copy cut short left keys missing here under a current stamp; replay rebuilds."""
    app = unique("app")
    settings = Settings.build(app, brokers=brokers, state=redis_url)
    changelog, locations_topic = f"{app}-s-changelog", f"{app}-state-locations"
    create_topic(admin, changelog, 1, **{"cleanup.policy": "compact"})
    create_topic(admin, locations_topic, 1, **{"cleanup.policy": "compact"})

    # The committed changelog: a=1, b=2, then the marker (offset 2).
    producer = Producer({"bootstrap.servers": brokers})
    for key, value in ((b"a", b"1"), (b"b", b"2")):
        producer.produce(changelog, value, key)
    producer.produce(changelog, Stamp(10, 0, epoch=1).encode(), MARKER_KEY)
    producer.flush(30)

    store = RedisStore(redis_url)
    local = store.partition(app, "s", 0)
    # This Redis got only "a" before its copy was interrupted, with a current stamp.
    epoch = local.claim("earlier-self", 2)
    local.commit({b"a": b"1"}, Stamp(10, 3, epoch=epoch), epoch)

    view = LocationsView(locations_topic, control_consumer_config(settings),
                         control_producer_config(settings))
    # Last recorded owner: an instance whose Redis is gone.
    view.publish(Location("s", 0, "gone-instance", GONE, epoch))
    restore_consumer = Consumer(reader_config({"bootstrap.servers": brokers}, "t"))
    restorer = Restorer(settings, store, view, lambda: restore_consumer, "me",
                        lambda s: f"{app}-{s}-changelog")
    try:
        view.catch_up()
        restored = restorer.open("s", 0)
        assert restored.event.strategy == "replay"
        assert restored.event.tail_records == 3  # the whole changelog, not the tail
        assert local.get_many([b"a", b"b"]) == [b"1", b"2"]
        stamp = local.read_stamp()
        assert stamp is not None and (stamp.input_offset, stamp.changelog_offset) == (10, 3)
    finally:
        restorer.close()
        restore_consumer.close()
        view.close()
        local.clear()
        store.close()
