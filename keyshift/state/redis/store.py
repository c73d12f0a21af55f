"""Store partitions as Redis hashes, committed atomically with a fenced Lua script.

Layout for app ``a``, store ``s``, partition ``p`` (one Redis Cluster hash tag,
so a task's state lives in one slot)::

    ks:{a:s:p}:d   hash  key bytes -> orjson value bytes
    ks:{a:s:p}:m   hash  epoch, owner, stamp
    ks:{a:s:p}:od  hash  data set aside (older values, read as a copy source)
    ks:{a:s:p}:om  hash  the aside copy's epoch, owner, and the tag of the move
                         that set it aside

A commit is a MULTI/EXEC of one or more script calls; every call first checks
that no newer owner epoch holds the partition, writes its chunk of changes,
and the last one writes the stamp.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import redis

from keyshift.errors import FencedError, StateError, StateLostError
from keyshift.state.base import Stamp
from keyshift.urls import redact

CHUNK = 1000

# Every write script starts by refusing an owner epoch other than the stored one:
# an older one is a fenced owner; a newer one means the stored epoch (and with it
# the state) is gone, e.g. the server restarted empty, and writing on would build
# on nothing.
_FENCE = """
local epoch = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')
if current > epoch then
  return redis.error_reply('FENCED owner epoch ' .. current .. ' > ' .. epoch)
end
if current < epoch then
  return redis.error_reply('LOST owner epoch ' .. current .. ' < ' .. epoch)
end
"""

_COMMIT = (
    _FENCE
    + """
local last = 3 + 2 * tonumber(ARGV[3])
if last > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4, last))
end
if last < #ARGV then
  redis.call('HDEL', KEYS[1], unpack(ARGV, last + 1, #ARGV))
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'stamp', ARGV[2])
end
return 1
"""
)


_COPY_MISSING = (
    _FENCE
    + """
local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return added
"""
)


_CLAIM = """
local epoch = math.max(tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') + 1, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'epoch', epoch, 'owner', ARGV[1])
return epoch
"""


_RESTORE = (
    _FENCE
    + """
redis.call('RESTORE', KEYS[1], 0, ARGV[2], 'REPLACE')
return redis.call('HLEN', KEYS[1])
"""
)


_SET_ASIDE = """
if redis.call('HGET', KEYS[3], 'tag') == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
redis.call('HSET', KEYS[3], 'tag', ARGV[1])
return 1
"""


def partition_keys(
    app_id: str, store: str, partition: int, *, aside: bool = False
) -> tuple[str, str]:
    """The data and meta key names of one store partition (or of its aside copy)."""
    tag = f"ks:{{{app_id}:{store}:{partition}}}"
    prefix = "o" if aside else ""
    return f"{tag}:{prefix}d", f"{tag}:{prefix}m"


class RedisPartition:
    def __init__(
        self,
        client: redis.Redis,
        scripts: tuple[Any, Any, Any, Any, Any],
        app_id: str,
        store: str,
        p: int,
        aside: bool = False,
    ) -> None:
        self._r = client
        (
            self._script,
            self._copy_script,
            self._claim_script,
            self._restore_script,
            self._aside_script,
        ) = scripts
        self.data_key, self.meta_key = partition_keys(app_id, store, p, aside=aside)
        self._aside_keys = partition_keys(app_id, store, p, aside=True)

    def claim(self, owner: str, minimum: int = 0) -> int:
        return int(self._claim_script(keys=[self.meta_key], args=[owner, minimum]))

    def read_stamp(self) -> Stamp | None:
        raw = cast("bytes | None", self._r.hget(self.meta_key, "stamp"))
        return None if raw is None else Stamp.decode(raw)

    def get_many(self, keys: Sequence[bytes], epoch: int = 0) -> list[bytes | None]:
        if not keys:
            return []
        try:
            if not epoch:
                return cast("list[bytes | None]", self._r.hmget(self.data_key, list(keys)))
            pipe = self._r.pipeline(transaction=False)
            pipe.hget(self.meta_key, "epoch")
            pipe.hmget(self.data_key, list(keys))
            current, values = pipe.execute()
        except redis.RedisError as exc:
            raise StateError(f"state read from {self.data_key} failed: {exc}") from exc
        if int(current or 0) < epoch:
            raise StateLostError(self.meta_key, f"owner epoch {int(current or 0)} < {epoch}")
        return cast("list[bytes | None]", values)

    def commit(self, changes: Mapping[bytes, bytes | None], stamp: Stamp, epoch: int) -> None:
        error = RedisPartition.commit_many([(self, changes, stamp, epoch)])[0]
        if error is not None:
            raise error

    def _queue_commit(
        self, pipe: Any, changes: Mapping[bytes, bytes | None], stamp: Stamp, epoch: int
    ) -> int:
        """Queue the commit's script calls on ``pipe``; returns how many."""
        sets = [(k, v) for k, v in changes.items() if v is not None]
        deletes = [k for k, v in changes.items() if v is None]
        calls: list[list[bytes | str | int]] = []
        for start in range(0, len(sets), CHUNK):
            chunk = sets[start : start + CHUNK]
            args: list[bytes | str | int] = [epoch, "", len(chunk)]
            for key, value in chunk:
                args += (key, value)
            calls.append(args)
        for start in range(0, len(deletes), CHUNK):
            calls.append([epoch, "", 0, *deletes[start : start + CHUNK]])
        calls.append([epoch, stamp.encode(), 0])
        for args in calls:
            self._script(keys=[self.data_key, self.meta_key], args=args, client=pipe)
        return len(calls)

    @staticmethod
    def commit_many(
        writes: Sequence[tuple[RedisPartition, Mapping[bytes, bytes | None], Stamp, int]],
    ) -> list[StateError | None]:
        """Commit several partitions: one MULTI/EXEC round trip per Redis client.

        Each partition is fenced on its own: a fenced one writes nothing and gets
        a :class:`FencedError`, the others are written. Returns one error (or
        None) per write.
        """
        results: list[StateError | None] = [None] * len(writes)
        by_client: dict[int, list[int]] = {}
        for i, (part, _, _, _) in enumerate(writes):
            by_client.setdefault(id(part._r), []).append(i)
        for indexes in by_client.values():
            pipe = writes[indexes[0]][0]._r.pipeline(transaction=True)
            spans = [(i, writes[i][0]._queue_commit(pipe, *writes[i][1:])) for i in indexes]
            try:
                replies = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                for i in indexes:
                    results[i] = StateError(
                        f"state commit to {writes[i][0].data_key} failed: {exc}"
                    )
                continue
            at = 0
            for i, count in spans:
                errors = [r for r in replies[at : at + count] if isinstance(r, Exception)]
                at += count
                if errors:
                    part, error = writes[i][0], errors[0]
                    results[i] = (
                        part._error(error)
                        if isinstance(error, redis.ResponseError)
                        else StateError(f"state commit to {part.data_key} failed: {error}")
                    )
        return results

    def _error(self, exc: redis.ResponseError) -> StateError:
        if "FENCED" in str(exc):
            return FencedError(f"{self.meta_key}: {exc}")
        if "LOST" in str(exc):
            return StateLostError(self.meta_key, str(exc))
        return StateError(f"state write to {self.data_key} failed: {exc}")

    def owner_epoch(self) -> int:
        return RedisPartition.owner_epoch_many([self])[0]

    @staticmethod
    def owner_epoch_many(parts: Sequence[RedisPartition]) -> list[int]:
        """Owner epochs of several partitions: one round trip per Redis client."""
        results = [0] * len(parts)
        by_client: dict[int, list[int]] = {}
        for i, part in enumerate(parts):
            by_client.setdefault(id(part._r), []).append(i)
        for indexes in by_client.values():
            pipe = parts[indexes[0]]._r.pipeline(transaction=False)
            for i in indexes:
                pipe.hget(parts[i].meta_key, "epoch")
            try:
                replies = pipe.execute()
            except redis.RedisError as exc:
                raise StateError(f"cannot read owner epochs: {exc}") from exc
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = int(reply or 0)
        return results

    def copy_missing(self, items: Sequence[tuple[bytes, bytes]], epoch: int) -> int:
        added = 0
        for start in range(0, len(items), CHUNK):
            args: list[bytes | int] = [epoch]
            for key, value in items[start : start + CHUNK]:
                args += (key, value)
            try:
                added += int(self._copy_script(keys=[self.data_key, self.meta_key], args=args))
            except redis.ResponseError as exc:
                raise self._error(exc) from exc
        return added

    def dump_data(self) -> bytes | None:
        """All data as one serialized value (Redis DUMP), or None when empty."""
        return self._r.dump(self.data_key)

    def restore_data(self, payload: bytes, epoch: int) -> int:
        """Replace all data with a DUMP payload (fenced); returns the key count.

        Raises StateError when the payload cannot be restored (e.g. another
        Redis version), so callers can fall back to a key-by-key copy.
        """
        try:
            return int(
                self._restore_script(keys=[self.data_key, self.meta_key], args=[epoch, payload])
            )
        except redis.ResponseError as exc:
            raise self._error(exc) from exc

    def drop_keys(self, keys: Sequence[bytes]) -> None:
        for start in range(0, len(keys), CHUNK):
            self._r.hdel(self.data_key, *keys[start : start + CHUNK])

    def set_aside(self, tag: str) -> bool:
        """Move the data to the aside copy in O(1) (RENAME), replacing an older one,
        unless the aside copy was already made under ``tag``."""
        return bool(self._aside_script(keys=[self.data_key, *self._aside_keys], args=[tag]))

    def aside_tag(self) -> str | None:
        tag = self._r.hget(self.meta_key, "tag")
        return None if tag is None else cast("bytes", tag).decode()

    def clear_data(self) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.unlink(self.data_key)  # freed in the background: big hashes do not block
        pipe.hdel(self.meta_key, "stamp")
        pipe.execute()

    def scan(self, batch: int = 1000) -> Iterator[list[tuple[bytes, bytes]]]:
        cursor = 0
        while True:
            cursor, chunk = self._r.hscan(self.data_key, cursor, count=batch)
            if chunk:
                yield list(cast("dict[bytes, bytes]", chunk).items())
            if cursor == 0:
                return

    def key_count(self) -> int:
        return int(self._r.hlen(self.data_key))

    def usage(self) -> dict[str, int]:
        return {
            "keys": int(self._r.hlen(self.data_key)),
            "bytes": int(self._r.memory_usage(self.data_key) or 0),
        }

    def clear(self) -> None:
        self._r.unlink(self.data_key, self.meta_key)


class RedisStore:
    """Opens partitions on one Redis server (or cluster endpoint)."""

    def __init__(self, url: str, *, timeout_s: float | None = None) -> None:
        self.url = url
        try:
            # TCP keepalive finds a dead peer on a quiet connection; a Unix socket
            # connection has no such option.
            tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
            self._r = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s or 10.0,
                socket_timeout=timeout_s,
                **tcp,
            )
        except ValueError as exc:
            raise StateError(f"bad Redis URL for the 'state' setting: {exc}") from exc
        self._scripts = (
            self._r.register_script(_COMMIT),
            self._r.register_script(_COPY_MISSING),
            self._r.register_script(_CLAIM),
            self._r.register_script(_RESTORE),
            self._r.register_script(_SET_ASIDE),
        )

    def ping(self) -> None:
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StateError(f"cannot reach Redis at {redact(self.url)}: {exc}") from exc

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> RedisPartition:
        return RedisPartition(self._r, self._scripts, app_id, store, partition, aside)

    def close(self) -> None:
        self._r.close()
