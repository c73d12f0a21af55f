"""open_store: the backend of each URL scheme."""

from __future__ import annotations

import pytest

from keyshift.state import open_store
from keyshift.state.memory import MemoryStore
from keyshift.state.redis import RedisStore

pytestmark = pytest.mark.unit


def test_open_store_schemes() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    r = open_store("redis://127.0.0.1:1/0")
    assert isinstance(r, RedisStore)
    r.close()
