"""``keyshift worker``: run one instance in the foreground."""

from __future__ import annotations

import faulthandler
import io
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from keyshift.cli.loader import load_app
from keyshift.errors import InstanceConflict, KeyshiftError
from keyshift.logs import setup_logging

F = TypeVar("F", bound=Callable[..., Any])

APP_ARG = click.argument("app_ref", metavar="MODULE:APP")


def worker_options(fn: F) -> F:
    """Flags shared by ``worker`` and ``run`` (``run`` passes them to each worker)."""
    for option in reversed(
        [
            click.option("--brokers", help="Kafka bootstrap servers [env KEYSHIFT_BROKERS]."),
            click.option(
                "--guarantee",
                type=click.Choice(["at_least_once", "exactly_once"]),
                help="Processing guarantee [env KEYSHIFT_GUARANTEE].",
            ),
            click.option(
                "--group-protocol",
                type=click.Choice(["classic", "consumer"]),
                help="Consumer group protocol [env KEYSHIFT_GROUP_PROTOCOL].",
            ),
            click.option(
                "--commit-interval-ms",
                type=int,
                help="Commit interval [env KEYSHIFT_COMMIT_INTERVAL_MS].",
            ),
            click.option("--log-level", default="INFO", show_default=True, help="Log level."),
            click.option("--log-json", is_flag=True, help="Log as JSON lines."),
        ]
    ):
        fn = option(fn)
    return fn


def _dump_stacks_on_sigusr1() -> None:
    """SIGUSR1 dumps every thread's stack to stderr: the supervisor sends it to a
    worker that does not stop in time, before killing it. Skipped when stderr is
    not a real file (the command invoked in-process, e.g. by click's CliRunner)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass


@click.command()
@APP_ARG
@click.option(
    "--instance-id",
    help="This worker's id, unique in the app [default: generated; env KEYSHIFT_INSTANCE_ID].",
)
@click.option("--state", help="State URL [env KEYSHIFT_STATE].")
@click.option(
    "--static-membership/--no-static-membership",
    default=None,
    help="Use --instance-id as group.instance.id [default: no; env KEYSHIFT_STATIC_MEMBERSHIP].",
)
@worker_options
def worker(
    app_ref: str,
    instance_id: str | None,
    static_membership: bool | None,
    brokers: str | None,
    state: str | None,
    guarantee: str | None,
    group_protocol: str | None,
    commit_interval_ms: int | None,
    log_level: str,
    log_json: bool,
) -> None:
    """Run one worker instance of MODULE:APP in the foreground.

    SIGTERM or SIGINT stops it gracefully: the current batch finishes, state is
    flushed, offsets are committed and the instance leaves the group (exit 0).
    """
    setup_logging(log_level, json=log_json)
    _dump_stacks_on_sigusr1()
    try:
        app = load_app(app_ref)
        app.configure(
            instance_id=instance_id,
            static_membership=static_membership,
            brokers=brokers,
            state=state,
            guarantee=guarantee,
            group_protocol=group_protocol,
            commit_interval_ms=commit_interval_ms,
        )
        runner = app.worker()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            runner.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        runner.run()
    except InstanceConflict as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(InstanceConflict.exit_code)  # the supervisor does not restart it
    except KeyshiftError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
