"""Which Redis servers tools outside the app may open."""

from __future__ import annotations

import pytest

from keyshift.config import Settings
from keyshift.orchestration.placement import connectable, redis_urls
from keyshift.urls import redact

pytestmark = pytest.mark.unit


def test_redis_urls_are_state_then_peers_once_each() -> None:
    settings = Settings.build(
        "app",
        state="redis://:pw@a:6379/0",
        peers="redis://b:6379/0,redis://:pw@a:6379/0,memory://other",
    )
    assert redis_urls(settings) == ["redis://:pw@a:6379/0", "redis://b:6379/0"]
    assert redis_urls(Settings.build("app", state="memory://")) == []


def test_connectable_matches_redacted_urls_only() -> None:
    settings = Settings.build("app", state="redis://:pw@a:6379/0", peers="redis://b:6379/0")
    assert connectable(redact("redis://:pw@a:6379/0"), settings) == "redis://:pw@a:6379/0"
    assert connectable("redis://b:6379/0", settings) == "redis://b:6379/0"
    assert connectable("redis://:pw@a:6379/0", settings) is None  # not the published form
    assert connectable("redis://elsewhere:6379/0", settings) is None
