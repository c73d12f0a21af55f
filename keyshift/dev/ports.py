"""Port checks and assignment for the sandbox (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping

from keyshift.errors import SandboxError

HOST = "127.0.0.1"

PortCheck = Callable[[int], bool]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something listens on ``host:port`` (a bind test; sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: sockets in TIME_WAIT do not count as "in use", listeners do.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_open(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def assign_ports(
    wanted: Mapping[str, int], auto: bool, in_use: PortCheck = port_in_use
) -> dict[str, int]:
    """Map each purpose to a port, checking none is taken.

    ``wanted`` maps a purpose (``"kafka node 0 (client)"``) to its preferred port.
    Without ``auto`` a taken port raises :class:`SandboxError` naming every taken
    port; with ``auto`` a taken port is replaced by the next free port above it
    that no other purpose uses.
    """
    taken = {name: port for name, port in wanted.items() if in_use(port)}
    if taken and not auto:
        listed = ", ".join(f"{port} ({name})" for name, port in taken.items())
        raise SandboxError(
            f"port already in use by another process: {listed}. Stop that process, "
            "or run `keyshift dev up --auto-ports` to pick free ports."
        )
    result = dict(wanted)
    used = set(wanted.values())
    for name, port in taken.items():
        candidate = port + 1
        while candidate in used or in_use(candidate):
            candidate += 1
            if candidate > 65535:
                raise SandboxError(f"no free port above {port} for {name}")
        used.add(candidate)
        result[name] = candidate
    return result
