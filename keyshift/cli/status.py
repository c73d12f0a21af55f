"""``keyshift status``: members, lag, state placement and recent migrations of an app."""

from __future__ import annotations

import click
import orjson

from keyshift.cli.loader import load_app
from keyshift.cli.status_report import collect, render
from keyshift.errors import KeyshiftError


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--brokers", help="Kafka bootstrap servers [env KEYSHIFT_BROKERS].")
@click.option("--state", help="This host's state URL (to size state) [env KEYSHIFT_STATE].")
@click.option(
    "--migrations",
    type=int,
    default=10,
    show_default=True,
    help="How many recent migrations to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(
    app_ref: str, brokers: str | None, state: str | None, migrations: int, as_json: bool
) -> None:
    """Show MODULE:APP's group members and partitions, lag per partition, where each
    task's state lives (keys/bytes) and the last migrations."""
    app = load_app(app_ref)
    app.configure(brokers=brokers, state=state)
    try:
        result = collect(app.settings, app.topology, migrations=migrations)
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(result))
