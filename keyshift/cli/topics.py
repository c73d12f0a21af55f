"""``keyshift topics``: Kafka topic tooling (AdminClient)."""

from __future__ import annotations

import os

import click
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from keyshift.config import DEFAULT_BROKERS, kafka_overrides_from_env

BROKERS = click.option(
    "--brokers",
    default=lambda: os.environ.get("KEYSHIFT_BROKERS", DEFAULT_BROKERS),
    show_default="env KEYSHIFT_BROKERS or 127.0.0.1:9092",
    help="Kafka bootstrap servers.",
)


def _admin(brokers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": brokers, **kafka_overrides_from_env()})


def _wait(futures: dict[str, object], verb: str) -> None:
    failed = False
    for name, future in futures.items():
        try:
            future.result(30)  # type: ignore[attr-defined]
            click.echo(f"{verb} {name}")
        except KafkaException as exc:
            failed = True
            click.echo(f"error: {name}: {exc.args[0].str()}", err=True)
    if failed:
        raise SystemExit(1)


@click.group()
def topics() -> None:
    """List, create, describe and delete Kafka topics."""


@topics.command("list")
@BROKERS
@click.option("--all", "show_all", is_flag=True, help="Include topics starting with '__'.")
def list_topics(brokers: str, show_all: bool) -> None:
    """List topics with their partition counts."""
    try:
        meta = _admin(brokers).list_topics(timeout=15)
    except KafkaException as exc:
        raise click.ClickException(f"cannot reach Kafka at {brokers}: {exc}") from exc
    for name in sorted(meta.topics):
        if name.startswith("__") and not show_all:
            continue
        click.echo(f"{name}\t{len(meta.topics[name].partitions)}")


@topics.command()
@click.argument("names", nargs=-1, required=True)
@BROKERS
@click.option("--partitions", "-p", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--replication-factor",
    "-r",
    type=int,
    default=-1,
    help="Replicas per partition [default: the broker's default].",
)
@click.option("--compact", is_flag=True, help="cleanup.policy=compact.")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE", help="Topic config.")
def create(
    names: tuple[str, ...],
    brokers: str,
    partitions: int,
    replication_factor: int,
    compact: bool,
    configs: tuple[str, ...],
) -> None:
    """Create topics."""
    config: dict[str, str] = {}
    for item in configs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--config")
        config[key] = value
    if compact:
        config["cleanup.policy"] = "compact"
    new = [
        NewTopic(n, num_partitions=partitions, replication_factor=replication_factor, config=config)
        for n in names
    ]
    admin = _admin(brokers)  # must outlive the futures
    _wait(admin.create_topics(new, operation_timeout=30), "created")


@topics.command()
@click.argument("name")
@BROKERS
def describe(name: str, brokers: str) -> None:
    """Show partitions, leaders and non-default configs of a topic."""
    admin = _admin(brokers)
    meta = admin.list_topics(name, timeout=15).topics.get(name)
    if meta is None or meta.error is not None:
        raise click.ClickException(f"topic {name!r} does not exist")
    click.echo(f"topic {name}: {len(meta.partitions)} partitions")
    for pid, part in sorted(meta.partitions.items()):
        click.echo(
            f"  partition {pid}: leader={part.leader} replicas={part.replicas} isr={part.isrs}"
        )
    for future in admin.describe_configs([ConfigResource("topic", name)]).values():
        for key, entry in sorted(future.result(15).items()):
            if not entry.is_default:
                click.echo(f"  {key}={entry.value}")


@topics.command()
@click.argument("names", nargs=-1, required=True)
@BROKERS
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(names: tuple[str, ...], brokers: str, yes: bool) -> None:
    """Delete topics."""
    if not yes:
        click.confirm(f"delete {', '.join(names)}?", abort=True)
    admin = _admin(brokers)  # must outlive the futures
    _wait(admin.delete_topics(list(names), operation_timeout=30), "deleted")
