"""Shared fixtures: the Kafka/Redis sandbox, clients, unique names, a child-process guard.

The ``sandbox`` fixture finds Kafka and Redis, in this order:

1. ``KEYSHIFT_BROKERS`` and ``KEYSHIFT_REDIS`` (or ``KEYSHIFT_STATE``) in the environment;
2. the env file written by ``keyshift dev up`` (``$KEYSHIFT_HOME/sandbox/env``),
   if its services answer;
3. otherwise it starts the sandbox with :func:`keyshift.dev.up` (left running,
   reused by the next session; ``keyshift dev down`` stops it).

It then exports ``KEYSHIFT_BROKERS``, ``KEYSHIFT_REDIS``, ``KEYSHIFT_STATE`` and
``KEYSHIFT_REDIS_URLS`` so child processes (workers, the CLI) use the same services.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from fakes import wait_for
from kafkautil import RedisServer
from keyshift.dev import read_env_file, up
from keyshift.dev.ports import port_open
from keyshift.procs import child_pids, cmdline

# The contract tests live in tests/contracts.py, a helper module: rewrite its asserts too.
pytest.register_assert_rewrite("contracts")


@dataclass(frozen=True)
class SandboxEnv:
    """Where the test services are, and where that came from."""

    brokers: str
    redis_url: str
    redis_urls: list[str]
    source: str  # "environment", "env file" or "started"

    def env(self) -> dict[str, str]:
        return {
            "KEYSHIFT_BROKERS": self.brokers,
            "KEYSHIFT_REDIS": self.redis_url,
            "KEYSHIFT_STATE": self.redis_url,
            "KEYSHIFT_REDIS_URLS": ",".join(self.redis_urls),
        }


def _from_mapping(env: dict[str, str], source: str) -> SandboxEnv | None:
    brokers = env.get("KEYSHIFT_BROKERS")
    redis_url = env.get("KEYSHIFT_REDIS") or env.get("KEYSHIFT_STATE")
    if not brokers or not redis_url:
        return None
    urls = [u for u in env.get("KEYSHIFT_REDIS_URLS", "").split(",") if u] or [redis_url]
    if redis_url not in urls:
        urls.insert(0, redis_url)
    return SandboxEnv(brokers, redis_url, urls, source)


def _answers(found: SandboxEnv) -> bool:
    """True if the first broker and every Redis accept TCP connections."""
    host, _, port = found.brokers.split(",")[0].rpartition(":")
    if not port_open(int(port), host or "127.0.0.1"):
        return False
    for url in found.redis_urls:
        parts = urlsplit(url)
        if not port_open(parts.port or 6379, parts.hostname or "127.0.0.1"):
            return False
    return True


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxEnv]:
    """The Kafka + Redis services for integration tests (see the module docstring)."""
    found = _from_mapping(dict(os.environ), "environment")
    if found is None:
        found = _from_mapping(read_env_file(), "env file")
        if found is not None and not _answers(found):
            found = None
    if found is None:
        started = up()
        found = SandboxEnv(started.brokers, started.redis_url, started.redis_urls, "started")
    patch = pytest.MonkeyPatch()
    for name, value in found.env().items():
        patch.setenv(name, value)
    try:
        yield found
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def brokers(sandbox: SandboxEnv) -> str:
    """Kafka bootstrap servers."""
    return sandbox.brokers


@pytest.fixture(scope="session")
def redis_url(sandbox: SandboxEnv) -> str:
    """URL of the main Redis server."""
    return sandbox.redis_url


@pytest.fixture(scope="session")
def redis_urls(sandbox: SandboxEnv) -> list[str]:
    """URLs of every Redis server (the main one first, then the extra instances)."""
    return list(sandbox.redis_urls)


@pytest.fixture(scope="session")
def admin(brokers: str) -> Any:
    """A confluent-kafka AdminClient on the sandbox."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": brokers})


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A Redis client on the main server. Flushes nothing: use ``unique`` key prefixes."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def no_keyshift_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test must not see KEYSHIFT_* variables of the environment it runs in."""
    for name in list(os.environ):
        if name.startswith("KEYSHIFT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``unique(prefix="t")`` -> ``"<prefix>-<testname>-<uuid8>"``, a legal topic/app name."""
    test = re.sub(r"[^A-Za-z0-9._]+", "-", request.node.name).strip("-")[:60].strip("-")

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


# --------------------------------------------------------------- child-process guard

# Long-lived helpers the stdlib starts once per interpreter: not a test's leak.
_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _describe(pid: int) -> str:
    return f"pid {pid}: {' '.join(cmdline(pid) or ['<exited>'])[:200]}"


def _is_helper(pid: int) -> bool:
    line = " ".join(cmdline(pid) or [])
    return any(helper in line for helper in _STDLIB_HELPERS)


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Iterator[None]:
    """Fail a test that leaves child processes of the test runner behind.

    Zombies count too (a child that was never waited for). Leaked children are
    killed and reaped so later tests start clean.
    """
    me = os.getpid()
    before = set(child_pids(me))
    yield

    def leaked_now() -> list[int]:
        return [p for p in child_pids(me) if p not in before and not _is_helper(p)]

    # Children the test stopped may take a moment to be gone.
    if wait_for(lambda: not leaked_now(), 2.0, 0.05):
        return
    leaked = leaked_now()
    if not leaked:
        return
    described = "; ".join(_describe(p) for p in leaked)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    pytest.fail(f"test leaked child process(es): {described}", pytrace=False)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own (free port, no persistence)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
