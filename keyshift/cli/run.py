"""``keyshift run`` and ``keyshift scale``: local multi-instance supervision."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from keyshift.cli.loader import load_app
from keyshift.cli.worker import worker_options
from keyshift.errors import KeyshiftError
from keyshift.logs import setup_logging
from keyshift.orchestration.scaling import Backend, apply_scale, plan_scale
from keyshift.orchestration.supervisor import Supervisor

#: The scaling backend and the name of what it scales: `scale` and `autoscale`.
BACKEND = click.option(
    "--backend",
    type=click.Choice(["local", "compose", "kubernetes"]),
    default="local",
    show_default=True,
    help="What runs the instances.",
)
NAME = click.option(
    "--name",
    "name",
    help="Compose service [worker] or Kubernetes StatefulSet [the app id] to scale.",
)


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
@click.option(
    "--instances",
    "-n",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Number of worker processes.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    help="State URL; once (shared by all) or once per instance slot.",
)
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
            _passthrough(
                brokers=brokers,
                guarantee=guarantee,
                group_protocol=group_protocol,
                commit_interval_ms=commit_interval_ms,
                log_level=log_level,
                log_json=log_json,
            ),
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
@click.option(
    "--instances",
    "-n",
    type=click.IntRange(min=0),
    required=True,
    help="Wanted number of instances.",
)
@BACKEND
@NAME
@click.option("--dry-run", is_flag=True, help="Print what would be done instead of doing it.")
def scale(app_ref: str, instances: int, backend: Backend, name: str | None, dry_run: bool) -> None:
    """Change the number of running instances of MODULE:APP.

    local: tells the running `keyshift run` supervisor (scale-in stops workers
    gracefully so their tasks migrate). compose/kubernetes: runs docker compose
    or kubectl.

    Example: keyshift scale examples.wordcount:app -n 3 --backend kubernetes --dry-run
    """
    app = load_app(app_ref)
    action = plan_scale(backend, app.app_id, instances, name=name)
    if dry_run:
        click.echo(f"would {action.describe()}" if backend == "local" else action.describe())
        return
    try:
        result = apply_scale(action)
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    if backend == "local":
        click.echo(f"supervisor {result}: scaling {app.app_id} to {instances} instances")
        return
    click.echo(action.describe())
    sys.exit(result)
