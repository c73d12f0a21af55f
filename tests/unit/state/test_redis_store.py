"""The Redis backend without a server: key layout, unreachable servers, bad URLs."""

from __future__ import annotations

import pytest

from keyshift.errors import StateError
from keyshift.state.redis import RedisStore
from keyshift.state.redis.store import partition_keys

pytestmark = pytest.mark.unit


def test_partition_keys_hash_tag() -> None:
    data, meta = partition_keys("app", "counts", 7)
    assert data == "ks:{app:counts:7}:d"
    assert meta == "ks:{app:counts:7}:m"
    assert "{app:counts:7}" in data and "{app:counts:7}" in meta


def test_redis_ping_unreachable_redacts_password() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    try:
        with pytest.raises(StateError) as info:
            store.ping()
    finally:
        store.close()
    assert "s3cret" not in str(info.value)
    assert "user:***@127.0.0.1:1" in str(info.value)


def test_bad_redis_url() -> None:
    with pytest.raises(StateError):
        RedisStore("redis://host:notaport/0")
