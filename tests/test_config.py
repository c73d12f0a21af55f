"""Unit tests of Settings.build: defaults, env overrides, precedence and validation."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift import Settings
from keyshift.config import DEFAULT_BROKERS, DEFAULT_STATE, kafka_overrides_from_env
from keyshift.errors import ConfigError, KeyshiftError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_keyshift_env")]


def test_defaults() -> None:
    s = Settings.build("app")
    assert s.app_id == "app"
    assert s.brokers == DEFAULT_BROKERS
    assert s.state == DEFAULT_STATE
    assert s.guarantee == "at_least_once"
    assert not s.exactly_once
    assert s.commit_interval_ms == 1000
    assert s.batch_size == 5000
    assert s.instance_id is None
    assert s.group_protocol == "classic"
    assert s.on_error == "dlq"
    assert s.migration == "auto"
    assert s.cache_max_entries == 200_000
    assert s.copy_share == 1.0
    assert dict(s.kafka) == {}
    assert s.client_config() == {"bootstrap.servers": DEFAULT_BROKERS}


def test_none_means_not_given() -> None:
    assert Settings.build("app", brokers=None, batch_size=None) == Settings.build("app")


def test_exactly_once_default_interval() -> None:
    s = Settings.build("app", guarantee="exactly_once")
    assert s.exactly_once
    assert s.commit_interval_ms == 100
    explicit = Settings.build("app", guarantee="exactly_once", commit_interval_ms=7)
    assert explicit.commit_interval_ms == 7


def test_exactly_once_from_env_default_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_GUARANTEE", "exactly_once")
    assert Settings.build("app").commit_interval_ms == 100


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KEYSHIFT_BROKERS": "k1:9092,k2:9092",
        "KEYSHIFT_STATE": "memory://",
        "KEYSHIFT_GUARANTEE": "exactly_once",
        "KEYSHIFT_COMMIT_INTERVAL_MS": "250",
        "KEYSHIFT_BATCH_SIZE": "10",
        "KEYSHIFT_INSTANCE_ID": "pod-1",
        "KEYSHIFT_GROUP_PROTOCOL": "consumer",
        "KEYSHIFT_ON_ERROR": "raise",
        "KEYSHIFT_MIGRATION": "stop-and-copy",
        "KEYSHIFT_CACHE_MAX_ENTRIES": "33",
        "KEYSHIFT_COPY_SHARE": "0.5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.build("app")
    assert s.brokers == "k1:9092,k2:9092"
    assert s.state == "memory://"
    assert s.guarantee == "exactly_once"
    assert s.commit_interval_ms == 250
    assert s.batch_size == 10
    assert s.instance_id == "pod-1"
    assert s.group_protocol == "consumer"
    assert s.on_error == "raise"
    assert s.migration == "stop-and-copy"
    assert s.cache_max_entries == 33
    assert s.copy_share == 0.5


def test_explicit_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_BROKERS", "env:9092")
    monkeypatch.setenv("KEYSHIFT_BATCH_SIZE", "not-a-number")  # never read
    monkeypatch.setenv("KEYSHIFT_ON_ERROR", "raise")
    monkeypatch.setenv("KEYSHIFT_KAFKA_CLIENT_ID", "from-env")
    s = Settings.build(
        "app", brokers="arg:9092", batch_size=3, on_error="dlq", kafka={"client.id": "arg"}
    )
    assert s.brokers == "arg:9092"
    assert s.batch_size == 3
    assert s.on_error == "dlq"
    assert s.kafka["client.id"] == "arg"


def test_kafka_env_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KEYSHIFT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KEYSHIFT_KAFKA_", "ignored")
    s = Settings.build("app", kafka={"sasl.username": "u", "linger.ms": 5})
    assert dict(s.kafka) == {
        "sasl.mechanism": "SCRAM-SHA-512",
        "security.protocol": "SASL_SSL",
        "sasl.username": "u",
        "linger.ms": "5",
    }
    config = s.client_config()
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["bootstrap.servers"] == DEFAULT_BROKERS


def test_kafka_overrides_from_explicit_mapping() -> None:
    env = {"KEYSHIFT_KAFKA_SSL_CA_LOCATION": "/ca.pem", "OTHER": "x", "KEYSHIFT_BROKERS": "b"}
    assert kafka_overrides_from_env(env) == {"ssl.ca.location": "/ca.pem"}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("guarantee", "exactly-once"),
        ("guarantee", "EXACTLY_ONCE"),
        ("group_protocol", "cooperative"),
        ("on_error", "ignore"),
        ("migration", "copy"),
        ("commit_interval_ms", "fast"),
        ("commit_interval_ms", "1.5"),
        ("commit_interval_ms", 0),
        ("commit_interval_ms", -5),
        ("batch_size", "x"),
        ("batch_size", 0),
        ("cache_max_entries", -1),
        ("copy_share", 0),
        ("copy_share", 1.5),
        ("copy_share", "half"),
        ("state", "postgres://db/x"),
        ("state", "localhost:6379"),
        ("brokers", " "),
        ("brokers", ""),
    ],
)
def test_invalid_explicit_value(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", **{setting: value})
    assert info.value.setting == setting
    assert repr(setting) in str(info.value)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("guarantee", "bogus"),
        ("group_protocol", "bogus"),
        ("on_error", "bogus"),
        ("migration", "bogus"),
        ("commit_interval_ms", "bogus"),
        ("commit_interval_ms", "0"),
        ("batch_size", "-1"),
        ("copy_share", "-0.1"),
        ("state", "file:///tmp"),
        ("brokers", ""),
    ],
)
def test_invalid_env_value(monkeypatch: pytest.MonkeyPatch, setting: str, value: str) -> None:
    monkeypatch.setenv("KEYSHIFT_" + setting.upper(), value)
    with pytest.raises(ConfigError) as info:
        Settings.build("app")
    assert info.value.setting == setting
    assert repr(setting) in str(info.value)


@pytest.mark.parametrize("app_id", ["", "my app", "a/b", "a:b", "{x}", "a\n"])
def test_bad_app_id(app_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build(app_id)
    assert info.value.setting == "app_id"
    assert "'app_id'" in str(info.value)


@pytest.mark.parametrize("app_id", ["café", "app²"])
def test_non_ascii_app_id_rejected(app_id: str) -> None:
    with pytest.raises(ConfigError):
        Settings.build(app_id)


@pytest.mark.parametrize("app_id", ["a", "Orders.v2", "word-count_1"])
def test_good_app_id(app_id: str) -> None:
    assert Settings.build(app_id).app_id == app_id


@pytest.mark.parametrize(
    "state", ["redis://h:6379/0", "rediss://u:p@h:6380/0", "unix:///tmp/r.sock", "memory://"]
)
def test_state_schemes(state: str) -> None:
    assert Settings.build("app", state=state).state == state


def test_config_error_is_keyshift_error() -> None:
    err = ConfigError("batch_size", "bad")
    assert isinstance(err, KeyshiftError)
    assert str(err) == "invalid setting 'batch_size': bad"


def test_settings_frozen() -> None:
    s = Settings.build("app")
    with pytest.raises(AttributeError):
        s.batch_size = 1  # type: ignore[misc]
