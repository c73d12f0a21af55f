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
    assert s.group_protocol == "consumer"
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


# -- Redis URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["state", "peers"])
@pytest.mark.parametrize(
    "url",
    [
        "redis://h/notadb",
        "redis://",
        "rediss://",
        "rediss://u:p@:6380/0",
        "unix://",
        "redis://h/0?bogus=1",
        "redis://h/0?ssl_cert_reqs=none",
    ],
)
def test_bad_redis_url(setting: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", **{setting: url})
    assert info.value.setting == setting


def test_unknown_query_parameter_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown query parameter 'bogus'") as info:
        Settings.build("app", state="redis://h:6379/0?bogus=1")
    assert "client_name" in str(info.value) and "socket_timeout" in str(info.value)


def test_bad_state_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_STATE", "redis://h/notadb")
    with pytest.raises(ConfigError) as info:
        Settings.build("app")
    assert info.value.setting == "state"


def test_bad_peer_in_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_PEERS", "redis://a:6379/0, redis://b:6379/x")
    with pytest.raises(ConfigError) as info:
        Settings.build("app")
    assert info.value.setting == "peers"


@pytest.mark.parametrize(
    ("given", "setting"),
    [
        ({"state": "redis://u:s3cret@h/notadb"}, "state"),
        ({"state": "rediss://:s3cret@/0"}, "state"),
        ({"state": "postgres://u:s3cret@h/db"}, "state"),
        ({"state": "redis://h/0?password=s3cret&bogus=1"}, "state"),
        ({"peers": "redis://u:s3cret@h/0?bogus=1"}, "peers"),
        ({"peers": ["redis://a/0", "http://u:s3cret@h/"]}, "peers"),
        ({"peers": "redis://u:s3c/ret@h/0"}, "peers"),
    ],
)
def test_url_errors_never_show_the_password(given: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", **given)
    assert info.value.setting == setting
    assert "s3c" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "rediss://u:p@h:6380/1?ssl_cert_reqs=none",
        "unix:///tmp/r.sock?db=1",
        "redis://h/0?socket_timeout=2&client_name=w",
    ],
)
def test_good_peer_urls(url: str) -> None:
    assert Settings.build("app", peers=[url, "redis://other:6379/0"]).peers == (
        url,
        "redis://other:6379/0",
    )


def test_named_memory_peers_stay_valid() -> None:
    # Named memory:// stores stand for other instances' state within one process.
    assert Settings.build("app", state="memory://s1", peers="memory://s0").peers == ("memory://s0",)


@pytest.mark.parametrize("peers", [["redis://a", 5], ("redis://a", None), [b"redis://a"], 5])
def test_peers_must_be_strings(peers: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", peers=peers)
    assert info.value.setting == "peers"


# -- integers -----------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["commit_interval_ms", "batch_size", "cache_max_entries"])
@pytest.mark.parametrize("value", [1.9, "1.9", True, "1_000", "1e3", "", "٣"])
def test_integer_settings_refuse_non_integers(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", **{setting: value})
    assert info.value.setting == setting


@pytest.mark.parametrize("setting", ["commit_interval_ms", "batch_size", "cache_max_entries"])
def test_integer_settings_take_digit_strings_and_whole_floats(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("KEYSHIFT_" + setting.upper(), " 250 ")
    assert getattr(Settings.build("app"), setting) == 250
    assert getattr(Settings.build("app", **{setting: 40.0}), setting) == 40


# -- exactly-once commit interval ---------------------------------------------------------


def test_exactly_once_interval_below_default_transaction_timeout() -> None:
    from keyshift.config import DEFAULT_TRANSACTION_TIMEOUT_MS

    limit = DEFAULT_TRANSACTION_TIMEOUT_MS
    eos = {"guarantee": "exactly_once"}
    assert Settings.build("app", commit_interval_ms=limit - 1, **eos).commit_interval_ms == (
        limit - 1
    )
    for interval in (limit, limit + 1):
        with pytest.raises(ConfigError) as info:
            Settings.build("app", commit_interval_ms=interval, **eos)
        assert info.value.setting == "commit_interval_ms"
        assert "transaction.timeout.ms" in str(info.value)
    # Without transactions there is no such bound.
    assert Settings.build("app", commit_interval_ms=limit * 3).commit_interval_ms == limit * 3


def test_exactly_once_interval_below_given_transaction_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eos = {"guarantee": "exactly_once"}
    kafka = {"transaction.timeout.ms": "60000"}
    assert Settings.build("app", commit_interval_ms=30_000, kafka=kafka, **eos)
    with pytest.raises(ConfigError, match="commit_interval_ms"):
        Settings.build("app", kafka={"transaction.timeout.ms": "100"}, **eos)  # default 100
    monkeypatch.setenv("KEYSHIFT_KAFKA_TRANSACTION_TIMEOUT_MS", "50")
    with pytest.raises(ConfigError, match="commit_interval_ms"):
        Settings.build("app", commit_interval_ms=50, **eos)
    assert Settings.build("app", commit_interval_ms=49, **eos).commit_interval_ms == 49


def test_exactly_once_bad_transaction_timeout_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", guarantee="exactly_once", kafka={"transaction.timeout.ms": "1m"})
    assert info.value.setting == "kafka.transaction.timeout.ms"


# -- Kafka properties keyshift owns -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("group.id", "app_id"),
        ("group.instance.id", "instance_id"),
        ("isolation.level", "guarantee"),
        ("enable.auto.commit", "commit_interval_ms"),
        ("enable.auto.offset.store", "commit_interval_ms"),
        ("transactional.id", "guarantee"),
        ("enable.idempotence", "guarantee"),
        ("group.protocol", "group_protocol"),
        ("partition.assignment.strategy", "group_protocol"),
    ],
)
def test_kafka_properties_keyshift_owns(name: str, instead: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", kafka={name: "x"})
    assert info.value.setting == f"kafka.{name}"
    assert instead in str(info.value)


def test_kafka_property_keyshift_owns_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_KAFKA_GROUP_ID", "other")
    with pytest.raises(ConfigError) as info:
        Settings.build("app")
    assert info.value.setting == "kafka.group.id"
    assert "app_id" in str(info.value)


# -- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instance_id", ["a/b", "pod 1", "pod-1\n", "\tpod", "pod:1", "pödi", "", "x" * 201]
)
def test_bad_instance_id(instance_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build("app", instance_id=instance_id)
    assert info.value.setting == "instance_id"


def test_bad_instance_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSHIFT_INSTANCE_ID", "../pod")
    with pytest.raises(ConfigError, match="instance_id"):
        Settings.build("app")


@pytest.mark.parametrize("instance_id", ["pod-1", "a.b_c-1", "x" * 200, "0"])
def test_good_instance_id(instance_id: str) -> None:
    assert Settings.build("app", instance_id=instance_id).instance_id == instance_id


@pytest.mark.parametrize("app_id", ["a--b", "a-", "--a", "a---b", "orders-v2-"])
def test_app_id_without_double_dash_or_trailing_dash(app_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build(app_id)
    assert info.value.setting == "app_id"
    assert "--" in str(info.value)


@pytest.mark.parametrize("app_id", ["a-b", "-a", "a.-b", "a-b-c"])
def test_app_id_with_single_dashes(app_id: str) -> None:
    assert Settings.build(app_id).app_id == app_id


def test_an_unknown_setting_is_refused_with_the_closest_name() -> None:
    with pytest.raises(ConfigError, match="'comit_interval_ms'.*did you mean 'commit_interval_ms'"):
        Settings.build("app", comit_interval_ms=5)
    with pytest.raises(ConfigError, match="'zzz': not a keyshift setting$"):
        Settings.build("app", zzz=1)
