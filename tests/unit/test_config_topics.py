"""The topic settings: ``create_topics`` and ``replication_factor``."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift import Settings
from keyshift.errors import ConfigError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_keyshift_env")]


def test_defaults_create_topics_at_the_brokers_replication_factor() -> None:
    settings = Settings.build("app")
    assert settings.create_topics is True
    assert settings.replication_factor == -1


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("0", False), ("off", False), ("true", True)]
)
def test_create_topics_from_env(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("KEYSHIFT_CREATE_TOPICS", value)
    assert Settings.build("app").create_topics is expected


def test_replication_factor_from_env_and_explicit_beats_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSHIFT_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KEYSHIFT_CREATE_TOPICS", "false")
    assert Settings.build("app").replication_factor == 3
    explicit = Settings.build("app", replication_factor=2, create_topics=True)
    assert explicit.replication_factor == 2 and explicit.create_topics is True


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("create_topics", "maybe", "is not a boolean"),
        ("replication_factor", 0, "must be -1 (the broker's default) or >= 1, got 0"),
        ("replication_factor", -2, "got -2"),
        ("replication_factor", "three", "is not an integer"),
        ("replication_factor", 1.5, "is not an integer"),
    ],
)
def test_bad_values_name_the_setting(setting: str, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", **{setting: value})
    assert info.value.setting == setting
    assert problem in str(info.value)


def test_a_bad_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_REPLICATION_FACTOR", "0")
    with pytest.raises(ConfigError) as info:
        Settings.build("app")
    assert info.value.setting == "replication_factor"
