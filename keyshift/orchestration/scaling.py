"""Changing how many workers run: through the local supervisor, docker compose or
kubectl (``keyshift scale``)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Literal

from keyshift.errors import KeyshiftError
from keyshift.orchestration.supervisor import request_scale

Backend = Literal["local", "compose", "kubernetes"]


@dataclass(frozen=True)
class ScaleAction:
    """What scaling to ``instances`` does on ``backend``: a request to the local
    supervisor, or a command line (docker compose, kubectl)."""

    backend: Backend
    app_id: str
    instances: int
    command: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.backend == "local":
            return f"ask the supervisor of {self.app_id} to run {self.instances} instances"
        return " ".join(self.command)


def plan_scale(
    backend: Backend, app_id: str, instances: int, *, name: str | None = None
) -> ScaleAction:
    """The action; ``name``: the compose service (``worker``) or Kubernetes
    StatefulSet (the app id) to scale."""
    if backend == "local":
        return ScaleAction(backend, app_id, instances)
    if backend == "compose":
        return ScaleAction(
            backend,
            app_id,
            instances,
            (
                "docker",
                "compose",
                "up",
                "-d",
                "--no-recreate",
                "--scale",
                f"{name or 'worker'}={instances}",
            ),
        )
    return ScaleAction(
        backend,
        app_id,
        instances,
        ("kubectl", "scale", f"statefulset/{name or app_id}", f"--replicas={instances}"),
    )


def apply_scale(action: ScaleAction) -> int:
    """Carry the action out; returns the supervisor's pid (local) or the command's
    exit code.

    Raises:
        KeyshiftError: no supervisor runs (local), or the command is not installed.
    """
    if action.backend == "local":
        return request_scale(action.app_id, action.instances)
    try:
        return subprocess.call(list(action.command))
    except FileNotFoundError:
        raise KeyshiftError(f"{action.command[0]} is not installed or not on PATH") from None
