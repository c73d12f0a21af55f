"""One commit writes every table: one MULTI/EXEC per Redis server (real Redis servers)."""

from __future__ import annotations

import uuid

import pytest
import redis

from keyshift.errors import FencedError
from keyshift.state.base import Stamp
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.redis.store import RedisStore
from keyshift.state.table import Table, write_tables

pytestmark = pytest.mark.integration


def _execs(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


def _tables(store: RedisStore, app: str, n: int) -> list[Table]:
    tables = []
    for p in range(n):
        table = Table(store.partition(app, "counts", p))
        table.adopt(None, table.backend.claim("me"))
        tables.append(table)
    return tables


def test_tables_on_one_redis_are_written_in_one_transaction(redis_url: str) -> None:
    store, client = RedisStore(redis_url), redis.Redis.from_url(redis_url)
    app = f"cm-{uuid.uuid4().hex[:8]}"
    tables = _tables(store, app, 3)
    before = _execs(client)
    errors = write_tables(
        [
            (t, {b"k": str(i).encode(), b"gone": None}, Stamp(i, i, epoch=t.epoch))
            for i, t in enumerate(tables)
        ]
    )
    assert errors == [None, None, None]
    assert _execs(client) == before + 1
    for i, table in enumerate(tables):
        assert table.backend.get_many([b"k"]) == [str(i).encode()]
        stamp = table.backend.read_stamp()
        assert stamp is not None and stamp.input_offset == i
    store.close()


def test_a_fenced_table_writes_nothing_and_the_others_are_written(redis_url: str) -> None:
    store = RedisStore(redis_url)
    app = f"cm-{uuid.uuid4().hex[:8]}"
    tables = _tables(store, app, 3)
    tables[1].backend.claim("newer owner")  # fences tables[1]
    errors = write_tables([(t, {b"k": b"v"}, Stamp(5, 5, epoch=t.epoch)) for t in tables])
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], FencedError)
    assert tables[1].backend.get_many([b"k"]) == [None]
    assert tables[1].backend.read_stamp() is None
    assert tables[0].backend.get_many([b"k"]) == [b"v"] == tables[2].backend.get_many([b"k"])
    with pytest.raises(FencedError):
        tables[1].write({b"k": b"v"}, Stamp(6, 6, epoch=tables[1].epoch))
    store.close()


def test_tables_on_two_redis_servers_and_in_memory(redis_urls: list[str]) -> None:
    if len(redis_urls) < 2:
        pytest.skip("needs 2 Redis servers (keyshift dev up --redis-instances 1)")
    app = f"cm-{uuid.uuid4().hex[:8]}"
    stores = [RedisStore(url) for url in redis_urls[:2]]
    clients = [redis.Redis.from_url(url) for url in redis_urls[:2]]
    tables = _tables(stores[0], app, 2) + _tables(stores[1], app, 2)
    memory = MemoryPartition()
    in_memory = Table(memory)
    in_memory.adopt(None, memory.claim("me"))
    before = [_execs(c) for c in clients]
    writes = [(t, {b"k": b"v"}, Stamp(1, 1, epoch=t.epoch)) for t in [*tables, in_memory]]
    assert write_tables(writes) == [None] * 5
    assert [_execs(c) for c in clients] == [b + 1 for b in before]
    assert memory.data == {b"k": b"v"}
    assert all(t.backend.get_many([b"k"]) == [b"v"] for t in tables)
    for store in stores:
        store.close()
