"""The sandbox Redis servers: command line, identity check, readiness."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from keyshift.dev.ports import HOST
from keyshift.errors import SandboxError
from keyshift.procs import cmdline, process_alive, tail

log = logging.getLogger("keyshift.dev")

DEFAULT_PORT = 6379


def url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise SandboxError(
            "redis-server not found: install it with `apt-get install -y redis-server` "
            "(`make install` does it when run as root)"
        )
    return found


def command(port: int) -> list[str]:
    return [
        redis_server(), "--save", "", "--appendonly", "no", "--bind", HOST,
        "--port", str(port), "--daemonize", "no",
    ]  # fmt: skip


def is_ours(pid: int, workdir: Path) -> bool:
    """True if ``pid`` is a live redis-server started in ``workdir``.

    Redis rewrites its process title, so the working directory (one per
    instance, under the sandbox run dir) is what identifies it.
    """
    if not process_alive(pid):
        return False
    words = cmdline(pid) or [""]
    if "redis-server" not in Path(words[0]).name:
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == workdir.resolve()
    except OSError:
        return False


def ping(port: int, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis(
        host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_ready(port: int, timeout: float, log_file: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not ping(port):
        if not alive() or time.monotonic() >= deadline:
            reason = "exited" if not alive() else f"no PONG within {timeout:.0f}s"
            raise SandboxError(
                f"redis-server on port {port} {reason}\n"
                f"--- last 30 lines of {log_file}:\n{tail(log_file, 30)}"
            )
        time.sleep(0.1)
    log.info("Redis ready at %s", url(port))
