"""``keyshift dev``: the local Kafka (KRaft) + Redis sandbox.

Progress goes to stderr; stdout of ``up`` and ``env`` is only ``export`` lines,
so ``eval "$(keyshift dev up)"`` works.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TypeVar

import click

from keyshift.dev import DEFAULT_KAFKA_VERSION, Sandbox, down, status, up
from keyshift.dev.paths import env_file
from keyshift.errors import SandboxError

F = TypeVar("F", bound=Callable[..., object])


class _ClickHandler(logging.Handler):
    """Log records to stderr through click (works under CliRunner too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("keyshift.dev")
    if not any(isinstance(h, _ClickHandler) for h in logger.handlers):
        handler = _ClickHandler()
        handler.setFormatter(logging.Formatter("keyshift dev: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _verbose_option(func: F) -> F:
    return click.option("-v", "--verbose", is_flag=True, help="Debug logging.")(func)


@click.group()
def dev() -> None:
    """Run a local Kafka (KRaft) cluster and Redis servers for development and tests.

    Files live in $KEYSHIFT_HOME/sandbox (default ~/.cache/keyshift/sandbox).
    """


@dev.command("up")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Kafka nodes (combined broker+controller); 3 gives RF 3, min ISR 2.",
)
@click.option(
    "--redis-instances",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="Extra Redis servers on the ports after the main one.",
)
@click.option(
    "--kafka-version",
    default=DEFAULT_KAFKA_VERSION,
    show_default=True,
    help="Apache Kafka version (jars fetched with Maven, cached).",
)
@click.option(
    "--kafka-port",
    type=click.IntRange(1, 65535),
    default=9092,
    show_default=True,
    help="Client port of node 0 (node n: +n; controllers: +100+n).",
)
@click.option(
    "--redis-port",
    type=click.IntRange(1, 65535),
    default=6379,
    show_default=True,
    help="Port of the main Redis server.",
)
@click.option(
    "--auto-ports", is_flag=True, help="Pick free ports instead of failing when a port is taken."
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=90.0,
    show_default=True,
    help="Seconds to wait for Kafka to become ready.",
)
@_verbose_option
def up_command(
    brokers: int,
    redis_instances: int,
    kafka_version: str,
    kafka_port: int,
    redis_port: int,
    auto_ports: bool,
    timeout: float,
    verbose: bool,
) -> None:
    """Start (or reuse) Kafka and Redis; print `export KEYSHIFT_...` lines.

    Use as: eval "$(keyshift dev up)". The same lines are written to
    $KEYSHIFT_HOME/sandbox/env.
    """
    _setup_logging(verbose)
    try:
        sandbox = up(brokers=brokers, redis_instances=redis_instances,
                     kafka_version=kafka_version, auto_ports=auto_ports, timeout=timeout,
                     kafka_port=kafka_port, redis_port=redis_port)  # fmt: skip
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    for service in sandbox.services:
        how = "reused" if service.reused else "started"
        click.echo(f"{service.name} {how}: {service.address} (pid {service.pid})", err=True)
    click.echo(f"env written to {env_file()}", err=True)
    click.echo(sandbox.exports(), nl=False)


@dev.command("down")
@_verbose_option
def down_command(verbose: bool) -> None:
    """Stop the sandbox processes (from their PID files) and delete the Kafka data."""
    _setup_logging(verbose)
    try:
        stopped = down()
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    if not stopped:
        click.echo("nothing was running")
    for service in stopped:
        click.echo(f"stopped {service.name} (pid {service.pid}, {service.address})")


def _status_lines(sandbox: Sandbox) -> list[str]:
    if not sandbox.services:
        return [f"sandbox not running (run dir {sandbox.run_dir})"]
    lines = []
    for s in sandbox.services:
        state = ("running" if s.responding else "not answering") if s.running else "stopped"
        pid = f"pid {s.pid}" if s.pid is not None else "-"
        extra = f"  kafka {s.version}, controller {s.controller}" if s.kind == "kafka" else ""
        lines.append(f"{s.name:<8} {state:<13} {pid:<10} {s.address}{extra}")
    return lines


@dev.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(as_json: bool) -> None:
    """Show which sandbox services run where (always exits 0)."""
    sandbox = status()
    if as_json:
        click.echo(json.dumps(sandbox.as_dict(), indent=2))
        return
    for line in _status_lines(sandbox):
        click.echo(line)
    if sandbox.running:
        click.echo(f"env: {env_file()}")


@dev.command("env")
def env_command() -> None:
    """Print the `export KEYSHIFT_...` lines of the running sandbox."""
    sandbox = status()
    if not sandbox.running:
        raise click.ClickException("the sandbox is not running: run `keyshift dev up`")
    click.echo(sandbox.exports(), nl=False)
