"""``keyshift state export|import``: a store's keys and values as JSON lines (the
line format, export and import are in :mod:`keyshift.orchestration.state_lines`,
:mod:`~keyshift.orchestration.state_export` and
:mod:`~keyshift.orchestration.state_import`)."""

from __future__ import annotations

from typing import BinaryIO

import click

from keyshift.cli.loader import load_app
from keyshift.errors import KeyshiftError
from keyshift.orchestration.state_export import export_store
from keyshift.orchestration.state_import import PARTITIONERS, import_store


def _progress(line: str) -> None:
    click.echo(line, err=True)


@click.group()
def state() -> None:
    """Export and import the state of an app's store as JSON lines.

    \b
    Examples:
      keyshift state export examples.wordcount:app --store counts > counts.jsonl
      keyshift state import examples.wordcount:app --store counts < counts.jsonl
    """


@state.command("export")
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--store", "store_name", required=True, help="The store to export.")
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition.")
@click.option(
    "--output",
    "-o",
    type=click.File("wb"),
    default="-",
    show_default="standard output",
    help="Where to write the JSON lines.",
)
@click.option("--brokers", help="Kafka bootstrap servers [env KEYSHIFT_BROKERS].")
@click.option("--state", "state_url", help="This instance's state URL [env KEYSHIFT_STATE].")
@click.option("--peers", help="Other instances' Redis URLs, comma-separated [env KEYSHIFT_PEERS].")
def export_command(
    app_ref: str,
    store_name: str,
    partition: int | None,
    output: BinaryIO,
    brokers: str | None,
    state_url: str | None,
    peers: str | None,
) -> None:
    """Write the keys and values of MODULE:APP's store as JSON lines, one key a
    line: {"key": ..., "partition": ..., "value": ...} ("key_b64" for a key that
    is not UTF-8, "value_b64" for stored bytes JSON would not give back exactly).

    Each partition is read from the Redis its state location names, when that is
    the state URL or one of the peers, else from the state URL. Progress goes to
    standard error.

    \b
    Examples:
      keyshift state export examples.wordcount:app --store counts > counts.jsonl
      keyshift state export examples.wordcount:app --store counts --partition 3
    """
    app = load_app(app_ref)
    app.configure(brokers=brokers, state=state_url, peers=peers)
    try:
        stats = export_store(
            app.settings,
            app.topology,
            store_name,
            output.write,
            partition=partition,
            progress=_progress,
        )
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    output.flush()
    sources = sorted(set(stats.read_from.values()))
    click.echo(
        f"exported {stats.keys} keys of store {store_name} "
        f"({len(stats.read_from)} partitions, from {', '.join(sources)})",
        err=True,
    )


@state.command("import")
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--store", "store_name", required=True, help="The store to import into.")
@click.option(
    "--input",
    "-i",
    "source",
    type=click.File("rb"),
    default="-",
    show_default="standard input",
    help="The JSON lines to import.",
)
@click.option(
    "--partitioner",
    type=click.Choice(PARTITIONERS),
    help="How to place lines without a partition; needed only for a store on a source "
    "topic (default for a store behind key_by: the app's producer partitioner).",
)
@click.option("--brokers", help="Kafka bootstrap servers [env KEYSHIFT_BROKERS].")
@click.option("--state", "state_url", help="This instance's state URL [env KEYSHIFT_STATE].")
@click.option("--peers", help="Other instances' Redis URLs, comma-separated [env KEYSHIFT_PEERS].")
def import_command(
    app_ref: str,
    store_name: str,
    source: BinaryIO,
    partitioner: str | None,
    brokers: str | None,
    state_url: str | None,
    peers: str | None,
) -> None:
    """Write JSON lines (the format export writes) into MODULE:APP's store through
    its changelog, so the import is durable and moves with the state like any
    commit. Refuses while the app's consumer group has members. The values appear
    when workers next restore the tasks, i.e. at the app's next start.

    A line's "partition" places the key; without one, the key goes where the app's
    producer would send it. "value": null deletes the key. The state and peers
    settings name the Redis servers whose stamps the import checks.

    \b
    Examples:
      keyshift state import examples.wordcount:app --store counts < counts.jsonl
      keyshift state import examples.wordcount:app --store counts -i seed.jsonl
    """
    app = load_app(app_ref)
    app.configure(brokers=brokers, state=state_url, peers=peers)
    try:
        stats = import_store(
            app.settings,
            app.topology,
            store_name,
            source,
            partitioner=partitioner,
            progress=_progress,
        )
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"imported {stats.records} records ({stats.deleted} deletions) into store "
        f"{store_name}, partitions {', '.join(map(str, sorted(stats.partitions))) or '-'}; "
        "they appear in the state when workers next restore those tasks (the app's next start)",
        err=True,
    )
