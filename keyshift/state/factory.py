"""Pick a backend from the ``state`` URL."""

from __future__ import annotations

from keyshift.errors import ConfigError
from keyshift.state.base import Store


def open_store(url: str, *, timeout_s: float | None = None) -> Store:
    """The backend for ``url``; ``timeout_s`` bounds a Redis connection and each command."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        from keyshift.state.memory import MemoryStore

        return MemoryStore(url)
    if scheme in ("redis", "rediss", "unix"):
        from keyshift.state.redis import RedisStore

        return RedisStore(url, timeout_s=timeout_s)
    raise ConfigError("state", f"unsupported state URL scheme {scheme!r}")
