"""State over a Unix socket: ``unix://`` URLs open, claim and commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kafkautil import wait_for
from keyshift.state.base import Stamp
from keyshift.state.redis import RedisStore

pytestmark = pytest.mark.integration


def test_a_unix_socket_state_url_works(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_for(sock.exists, 10, 0.02), "redis-server did not start"
        store = RedisStore(f"unix://{sock}")
        try:
            store.ping()
            part = store.partition("app", "s", 0)
            epoch = part.claim("me")
            part.commit({b"k": b"1"}, Stamp(5, 7), epoch)
            assert part.get_many([b"k"]) == [b"1"]
            assert part.read_stamp() == Stamp(5, 7)
        finally:
            store.close()
    finally:
        proc.terminate()
        proc.wait(10)
