"""``keyshift run`` and ``keyshift scale``: local multi-instance supervision."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from types import FrameType

import click

from keyshift.cli.loader import load_app
from keyshift.cli.worker import worker_options
from keyshift.errors import KeyshiftError
from keyshift.logs import setup_logging
from keyshift.orchestration.supervisor import Supervisor, request_scale


def _passthrough(**flags: object) -> list[str]:
    args: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        option = "--" + name.replace("_", "-")
        args += [option] if value is True else [option, str(value)]
    return args


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--instances", "-n", type=click.IntRange(min=0), default=1, show_default=True,
              help="Number of worker processes.")
@click.option("--state", "states", multiple=True,
              help="State URL; once (shared by all) or once per instance slot.")
@worker_options
def run(
    app_ref: str,
    instances: int,
    states: tuple[str, ...],
    brokers: str | None,
    guarantee: str | None,
    group_protocol: str | None,
    commit_interval_ms: int | None,
    log_level: str,
    log_json: bool,
) -> None:
    """Run N worker processes of MODULE:APP and restart any that crash.

    SIGTERM/SIGINT stop every worker gracefully. `keyshift scale` changes N live.
    """
    setup_logging(log_level, json=log_json)
    try:
        app = load_app(app_ref)
        supervisor = Supervisor(
            app_ref,
            app.app_id,
            instances,
            list(states),
            _passthrough(brokers=brokers, guarantee=guarantee, group_protocol=group_protocol,
                         commit_interval_ms=commit_interval_ms, log_level=log_level,
                         log_json=log_json),
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            supervisor.stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            supervisor.rescale()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hup)
        sys.exit(supervisor.run())
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--instances", "-n", type=click.IntRange(min=0), required=True,
              help="Wanted number of instances.")
@click.option("--backend", type=click.Choice(["local", "compose", "kubernetes"]), default="local",
              show_default=True, help="What runs the instances.")
@click.option("--deployment", help="Kubernetes deployment name [default: the app id].")
@click.option("--dry-run", is_flag=True, help="Print the command instead of running it.")
def scale(
    app_ref: str, instances: int, backend: str, deployment: str | None, dry_run: bool
) -> None:
    """Change the number of running instances of MODULE:APP.

    local: tells the running `keyshift run` supervisor (scale-in stops workers
    gracefully so their tasks migrate). compose/kubernetes: runs docker compose
    or kubectl.
    """
    app = load_app(app_ref)
    if backend == "local":
        if dry_run:
            click.echo(f"would ask the supervisor of {app.app_id} to run {instances} instances")
            return
        try:
            pid = request_scale(app.app_id, instances)
        except KeyshiftError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"supervisor {pid}: scaling {app.app_id} to {instances} instances")
        return
    if backend == "compose":
        cmd = ["docker", "compose", "up", "-d", "--no-recreate", "--scale", f"worker={instances}"]
    else:
        name = deployment or app.app_id
        cmd = ["kubectl", "scale", f"deployment/{name}", f"--replicas={instances}"]
    click.echo(shlex.join(cmd))
    if dry_run:
        return
    try:
        code = subprocess.call(cmd)
    except FileNotFoundError:
        raise click.ClickException(f"{cmd[0]} is not installed or not on PATH") from None
    sys.exit(code)
