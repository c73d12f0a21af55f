"""The memory backend meets the state store contract (tests/contracts.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import StoreContract
from keyshift.state.base import Store
from keyshift.state.memory import MemoryStore

pytestmark = pytest.mark.unit


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def backend_store(self) -> Iterator[Store]:
        store = MemoryStore()
        try:
            yield store
        finally:
            store.close()
