"""``keyshift reset``: rewind an app's consumer group and, optionally, delete its
internal topics and Redis state (the logic is in :mod:`keyshift.orchestration.reset`)."""

from __future__ import annotations

from pathlib import Path

import click

from keyshift.cli.loader import load_app
from keyshift.errors import KeyshiftError
from keyshift.orchestration.reset import (
    Spec,
    apply_reset,
    count_app_keys,
    parse_datetime,
    parse_offsets,
    plan_reset,
    render_plan,
)
from keyshift.urls import redact


def _progress(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option(
    "--to-earliest", is_flag=True, help="Reset to each partition's earliest offset (the default)."
)
@click.option(
    "--to-latest", is_flag=True, help="Reset to each partition's end: skip what is there."
)
@click.option(
    "--to-datetime",
    metavar="T",
    help="Reset to the first record at or after T (ISO 8601; UTC unless it names an offset).",
)
@click.option(
    "--to-offsets",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Reset to the offsets of FILE: 'topic,partition,offset' lines; partitions it "
    "does not name keep their committed offsets.",
)
@click.option(
    "--delete-internal",
    is_flag=True,
    help="Also delete the app's internal topics and its Redis state (state and peers).",
)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--brokers", help="Kafka bootstrap servers [env KEYSHIFT_BROKERS].")
@click.option("--state", help="This instance's state URL [env KEYSHIFT_STATE].")
@click.option("--peers", help="Other instances' Redis URLs, comma-separated [env KEYSHIFT_PEERS].")
def reset(
    app_ref: str,
    to_earliest: bool,
    to_latest: bool,
    to_datetime: str | None,
    to_offsets: Path | None,
    delete_internal: bool,
    dry_run: bool,
    yes: bool,
    brokers: str | None,
    state: str | None,
    peers: str | None,
) -> None:
    """Reset MODULE:APP so its next run processes its source topics again, like
    Kafka Streams' application-reset tool. Refuses while the app's consumer group
    has members: stop every worker first.

    Sets the group's committed offsets on the app's source topics (default: the
    earliest). Tasks of sub-topologies with stores resume where their state says,
    so to recompute state pass --delete-internal: it also deletes the app's
    internal topics (repartition, changelogs, state locations, events, DLQ,
    control) and every Redis key of its stores on the state Redis and every peer.

    \b
    Examples:
      keyshift reset examples.wordcount:app --delete-internal --dry-run
      keyshift reset examples.wordcount:app --delete-internal --yes
      keyshift reset examples.wordcount:app --to-datetime 2026-12-01T06:00:00Z
      keyshift reset examples.wordcount:app --to-offsets offsets.csv
    """
    given = [to_earliest, to_latest, to_datetime is not None, to_offsets is not None]
    if sum(given) > 1:
        raise click.UsageError(
            "give at most one of --to-earliest, --to-latest, --to-datetime, --to-offsets"
        )
    app = load_app(app_ref)
    app.configure(brokers=brokers, state=state, peers=peers)
    try:
        spec: Spec = "earliest"
        timestamp_ms = offsets = None
        if to_latest:
            spec = "latest"
        elif to_datetime is not None:
            spec, timestamp_ms = "datetime", parse_datetime(to_datetime)
        elif to_offsets is not None:
            spec, offsets = "offsets", parse_offsets(to_offsets.read_text())
        plan = plan_reset(
            app.settings,
            app.topology,
            spec,
            timestamp_ms=timestamp_ms,
            offsets=offsets,
            delete_internal=delete_internal,
        )
        click.echo(render_plan(plan))
        if dry_run:
            for url in plan.redis:
                keys = count_app_keys(url, plan.app_id)
                click.echo(f"{redact(url)}: {keys} keys of the app would be deleted")
            click.echo("dry run: nothing changed")
            return
        if not yes:
            click.confirm(f"Reset app {plan.app_id}?", abort=True, err=True)
        deleted = apply_reset(app.settings, plan, progress=_progress)
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    total = sum(deleted.values())
    click.echo(
        f"reset app {plan.app_id}: {len(plan.offsets)} offsets"
        + (f", {len(plan.topics)} topics and {total} Redis keys deleted" if delete_internal else "")
    )
