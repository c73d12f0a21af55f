"""Direct state transfer (stop-and-copy, progressive) between partitions on a real
Redis server: the transfer contract (tests/contracts.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import TransferContract
from keyshift.state.base import Store
from keyshift.state.redis import RedisStore

pytestmark = pytest.mark.integration


class TestTransferOnRedis(TransferContract):
    @pytest.fixture
    def backend_store(self, redis_url: str) -> Iterator[Store]:
        store = RedisStore(redis_url)
        try:
            yield store
        finally:
            store.close()
