"""The Redis backend against a real server: the state store contract
(tests/contracts.py), its key layout, and ping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from contracts import StoreContract, stamp
from keyshift.state.base import Stamp, Store
from keyshift.state.redis import RedisStore
from keyshift.state.redis.store import partition_keys

pytestmark = pytest.mark.integration


class TestRedisStore(StoreContract):
    @pytest.fixture
    def backend_store(self, redis_url: str) -> Iterator[Store]:
        store = RedisStore(redis_url)
        try:
            yield store
        finally:
            store.close()


def test_redis_layout(redis_url: str) -> None:
    app_id = f"layout-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url)
    client = redis.Redis.from_url(redis_url)
    part = store.partition(app_id, "st", 2)
    try:
        epoch = part.claim("owner-1")
        part.commit({b"k": b"v"}, stamp(9, epoch), epoch)
        data_key, meta_key = partition_keys(app_id, "st", 2)
        assert client.hgetall(data_key) == {b"k": b"v"}
        meta: dict[Any, Any] = client.hgetall(meta_key)
        assert meta[b"epoch"] == b"1"
        assert meta[b"owner"] == b"owner-1"
        assert Stamp.decode(meta[b"stamp"]) == stamp(9, epoch)
        # both keys hash to the same cluster slot
        tag = f"{{{app_id}:st:2}}"
        assert tag in data_key and tag in meta_key
    finally:
        part.clear()
        client.close()
        store.close()
    assert client.exists(data_key, meta_key) == 0


def test_redis_ping(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        store.ping()
    finally:
        store.close()
