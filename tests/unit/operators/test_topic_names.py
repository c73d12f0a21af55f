"""Internal topic names never collide, within an app or across apps."""

from __future__ import annotations

import pytest

from keyshift.config import Settings
from keyshift.errors import ConfigError
from keyshift.operators.topology import Topology

pytestmark = pytest.mark.unit


def internal(app: str, store: str) -> set[str]:
    topo = Topology(app)
    return {
        topo.changelog_topic(store),
        topo.next_repartition_topic(store),
        topo.dlq_topic,
        topo.locations_topic,
        topo.events_topic,
    }


def test_apps_sharing_a_prefix_never_share_an_internal_topic() -> None:
    # With one dash both would own "a-b-c-changelog".
    assert Topology("a").changelog_topic("b-c") != Topology("a-b").changelog_topic("c")
    assert not internal("a", "b-c") & internal("a-b", "c")
    topo = Topology("a")
    app_level = {topo.dlq_topic, topo.locations_topic, topo.events_topic}
    for store in ("dlq", "state-locations", "events"):
        assert {topo.changelog_topic(store), topo.next_repartition_topic(store)}.isdisjoint(
            app_level
        )


@pytest.mark.parametrize("app_id", ["a--b", "a-"])
def test_app_ids_that_would_blur_the_app_boundary_are_refused(app_id: str) -> None:
    with pytest.raises(ConfigError, match="app_id"):
        Settings.build(app_id)
