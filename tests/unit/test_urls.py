"""Unit tests of keyshift.urls: redaction of Redis URLs and their validation."""

from __future__ import annotations

import pytest
from redis.connection import URL_QUERY_ARGUMENT_PARSERS

from keyshift.errors import ConfigError
from keyshift.urls import is_secret_parameter, known_query_parameters, redact, validate_redis_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("rediss://default:p@ss@h:6380/1", "rediss://default:***@h:6380/1"),
        ("redis://user@h:6379", "redis://user:***@h:6379"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("unix://u:pw@/tmp/redis.sock?db=1", "unix://u:***@/tmp/redis.sock?db=1"),
        ("memory://", "memory://"),
        ("redis://h/0#f", "redis://h/0#f"),
    ],
)
def test_redact_user_info(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "pw" not in redact(url) and "p@ss" not in redact(url)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "ssl_password",
        "ssl_keyfile_password",
        "PASSWORD",
        "passwd",
        "passphrase",
        "auth_token",
        "client_secret",
        "credential_provider",
    ],
)
def test_redact_hides_secret_query_parameters(name: str) -> None:
    out = redact(f"redis://h:6379/0?client_name=c&{name}=s3cret&db=1")
    assert "s3cret" not in out
    assert out == f"redis://h:6379/0?client_name=c&{name}=***&db=1"


@pytest.mark.parametrize("name", ["username", "user", "client_name", "ssl_keyfile", "db"])
def test_redact_keeps_other_parameters(name: str) -> None:
    assert not is_secret_parameter(name)
    url = f"redis://h/0?{name}=visible"
    assert redact(url) == url


def test_redact_keeps_percent_encoding() -> None:
    url = "redis://h/0?client_name=a%26b&ssl_ca_certs=%2Fetc%2Fca.pem"
    assert redact(url) == url


def test_redact_percent_encoded_secret_name() -> None:
    assert "s3cret" not in redact("redis://h/0?pass%77ord=s3cret")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3c/ret@h:6379/0",
        "redis://u:s3c?ret@h:6379/0",
        "redis://u:s3c#ret@h:6379/0",
        "redis://u:s3c/ret@h:6379/0?password=s3c",
    ],
)
def test_redact_password_with_unencoded_reserved_character(url: str) -> None:
    out = redact(url)
    assert "s3c" not in out and "ret" not in out
    assert out.startswith("redis://***@h:6379")


def test_redact_unparsable_url_does_not_raise() -> None:
    assert redact("redis://u:s3cret@[::1/0") == "redis://***"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "redis://h/",
        "redis://h:6379/0",
        "redis://u:p@h:6379/15",
        "redis://[::1]:6379/0",
        "redis://h/0?socket_timeout=1.5&client_name=w1&health_check_interval=30",
        "redis://h/0?db=3&protocol=3&username=u&password=p",
        "rediss://u:p@h:6380/1?ssl_cert_reqs=none&ssl_ca_certs=%2Fca.pem&ssl_password=x",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=2&socket_timeout=3",
    ],
)
def test_valid_redis_urls(url: str) -> None:
    validate_redis_url("state", url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h/notadb", "database number"),
        ("redis://h/-1", "database number"),
        ("redis://", "needs a host"),
        ("rediss://", "needs a host"),
        ("redis://:6379/0", "needs a host"),
        ("rediss://:pw@/0", "needs a host"),
        ("redis://h:notaport/0", "port"),
        ("redis://h:70000/0", "port"),
        ("unix://", "socket path"),
        ("unix:///", "socket path"),
        ("redis://h/0?sockettimeout=1", "unknown query parameter 'sockettimeout'"),
        ("redis://h/0?ssl_cert_reqs=none", "unknown query parameter 'ssl_cert_reqs'"),
        ("unix:///s.sock?ssl_ca_certs=x", "unknown query parameter 'ssl_ca_certs'"),
        ("unix:///s.sock?host=h", "unknown query parameter 'host'"),
        ("redis://h/0?timeout=1", "unknown query parameter 'timeout'"),
        ("redis://h/0?db=x", "'db' has an invalid value"),
        ("redis://h/0?socket_timeout=soon", "'socket_timeout' has an invalid value"),
        ("redis://h/0?client_name=a@b", "'@' outside the user info"),
        ("redis://:pw/x@h/0", "'@' outside the user info"),
        ("redis://[::1/0", "not a parsable URL"),
        ("memory://", "expected a redis://"),
        ("http://h/0", "expected a redis://"),
        ("h:6379", "expected a redis://"),
    ],
)
def test_invalid_redis_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_redis_url("peers", url)
    assert info.value.setting == "peers"
    assert problem in str(info.value)


def test_unknown_parameter_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        validate_redis_url("state", "redis://h/0?bogus=1")
    message = str(info.value)
    for name in ("client_name", "socket_timeout", "health_check_interval", "max_connections"):
        assert name in message
    assert "ssl_ca_certs" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:s3cret@h/notadb",
        "redis://u:s3cret@h/0?bogus=1",
        "redis://:s3cret@/0",
        "rediss://u:s3cret@h:port/0",
        "redis://h/0?password=s3cret&bogus=1",
        "rediss://h/0?ssl_password=s3cret&db=x",
        "redis://u:s3cret/x@h/0",
        "redis://u:s3cret@[::1/0",
        "postgres://u:s3cret@h/db",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_redis_url("state", url)
    assert "s3cret" not in str(info.value)


def test_known_parameters_cover_redis_py_parsers() -> None:
    parsed = set(URL_QUERY_ARGUMENT_PARSERS) - {"timeout"}  # BlockingConnectionPool only
    assert parsed <= known_query_parameters("rediss")
    plain = {name for name in parsed if not name.startswith("ssl_")}
    assert plain <= known_query_parameters("redis")
    # A Unix socket connection takes neither TCP keepalive nor a host.
    assert plain - {"socket_keepalive"} <= known_query_parameters("unix")
    assert "path" in known_query_parameters("unix")
    assert not {"socket_keepalive", "host", "port"} & known_query_parameters("unix")
    assert not any(n.startswith("ssl_") for n in known_query_parameters("redis"))


def test_redact_query_password() -> None:
    assert "secret" not in redact("redis://h:6379/0?password=secret")
