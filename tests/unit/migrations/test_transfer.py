"""Direct state transfer (stop-and-copy, progressive) on the memory backend: the
transfer contract (tests/contracts.py), and how many batches a copy takes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import SMALL_BATCH, N, TransferContract, new_owner, run_to_end, seed
from keyshift.migrations import transfer
from keyshift.migrations.transfer import ProgressiveCopy
from keyshift.state.base import Store
from keyshift.state.memory import MemoryStore

pytestmark = pytest.mark.unit


class TestTransferInMemory(TransferContract):
    @pytest.fixture
    def backend_store(self) -> Iterator[Store]:
        store = MemoryStore()
        try:
            yield store
        finally:
            store.close()


def test_progressive_memory_batch_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "BATCH", SMALL_BATCH)
    store = MemoryStore()
    source, target = store.partition("a", "s", 0), store.partition("b", "s", 0)
    seed(source)
    epoch = new_owner(source, target)
    copy, _ = ProgressiveCopy.begin(source, target, epoch, "o", resume=False)
    assert run_to_end(copy) == N // SMALL_BATCH
    assert copy.stats.keys == N
