"""``keyshift dev``: the local Kafka + Redis sandbox (placeholder, filled by the sandbox work)."""

from __future__ import annotations

import click


@click.group()
def dev() -> None:
    """Run a local Kafka (KRaft) broker and Redis servers for development and tests."""
