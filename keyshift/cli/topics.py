"""``keyshift topics``: Kafka topic tooling (AdminClient), and the topics of an
app planned, applied and validated (the logic is in
:mod:`keyshift.runtime.topic_plan`)."""

from __future__ import annotations

import os

import click
import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from keyshift.app.app import App
from keyshift.cli.loader import load_app
from keyshift.cli.topic_report import change_lines, plan_document, render_plan
from keyshift.config import DEFAULT_BROKERS, kafka_overrides_from_env
from keyshift.errors import KeyshiftError
from keyshift.runtime.topic_plan import TopicPlan, TopicState, diff_topics, validate_topics
from keyshift.runtime.topics import TopicManager

#: Exit code of ``plan`` when ``apply`` has topics to create or configs to alter.
#: Not 2: click exits 2 on a usage error, which a pipeline must not take for
#: changes to apply.
EXIT_CHANGES = 3
#: Exit code of ``plan``, ``apply`` and ``validate`` when there are problems
#: ``apply`` does not fix (a missing source, a partition count that differs,
#: replication below the minimum); it wins over :data:`EXIT_CHANGES`.
EXIT_PROBLEMS = 4

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


@click.group(
    epilog="\b\nExamples:\n  keyshift topics list\n  keyshift topics plan examples.wordcount:app"
)
def topics() -> None:
    """Kafka topics: list, create, describe and delete them, and plan, apply and
    validate the topics of an app (MODULE:APP)."""


@topics.command("list", epilog="\b\nExample:\n  keyshift topics list --all")
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


@topics.command(
    epilog="\b\nExamples:\n  keyshift topics create sentences --partitions 6\n"
    "  keyshift topics create audit -p 3 --config retention.ms=86400000"
)
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


@topics.command(epilog="\b\nExample:\n  keyshift topics describe wordcount--counts-changelog")
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


@topics.command(epilog="\b\nExample:\n  keyshift topics delete sentences --yes")
@click.argument("names", nargs=-1, required=True)
@BROKERS
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(names: tuple[str, ...], brokers: str, yes: bool) -> None:
    """Delete topics."""
    if not yes:
        click.confirm(f"delete {', '.join(names)}?", abort=True)
    admin = _admin(brokers)  # must outlive the futures
    _wait(admin.delete_topics(list(names), operation_timeout=30), "deleted")


# -- an app's topics: plan, apply, validate -----------------------------------------------

APP_BROKERS = click.option(
    "--brokers", help="Kafka bootstrap servers [default: the app's; env KEYSHIFT_BROKERS]."
)


def _survey(
    app_ref: str, brokers: str | None, *, configs: bool
) -> tuple[App, TopicManager, TopicPlan, dict[str, TopicState]]:
    """The app, its plan and the cluster's side of it (with every config's value
    when ``configs``)."""
    app = load_app(app_ref)
    try:
        app.configure(brokers=brokers)
        manager = TopicManager(app.settings)
        cluster = manager.observe()
        plan = manager.plan(app.topology, {name: t.partitions for name, t in cluster.items()})
        names = [s.name for s in plan.specs]
        if configs:
            cluster = manager.observe(names, configs=True)
        else:
            cluster = {name: cluster[name] for name in names if name in cluster}
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    return app, manager, plan, cluster


@topics.command(
    epilog="""\b
Exit codes: 0 nothing differs; 3 apply has changes to make; 4 problems
apply does not fix (listed); 1 an error; 2 a usage error.

\b
Examples:
  keyshift topics plan examples.wordcount:app
  keyshift topics plan examples.wordcount:app --json > plan.json"""
)
@click.argument("app_ref", metavar="MODULE:APP")
@APP_BROKERS
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(app_ref: str, brokers: str | None, as_json: bool) -> None:
    """Every topic MODULE:APP needs (sources, sinks and keyshift's own), with
    partitions, replication factor and configs, compared with the cluster:
    the topics missing, the configs that differ, the partition counts that
    differ."""
    app, _, topic_plan, cluster = _survey(app_ref, brokers, configs=True)
    diff = diff_topics(topic_plan, cluster)
    if as_json:
        document = plan_document(app.app_id, topic_plan, cluster, diff)
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render_plan(app_ref, app.app_id, topic_plan, cluster, diff):
            click.echo(line)
    if diff.problems:
        raise SystemExit(EXIT_PROBLEMS)
    if diff.changes:
        raise SystemExit(EXIT_CHANGES)


@topics.command(
    epilog="""\b
Exit codes: 0 done (or nothing to do); 4 problems apply does not fix
(listed; the rest is applied); 1 an error; 2 a usage error.

\b
Examples:
  keyshift topics apply examples.wordcount:app --dry-run
  keyshift topics apply examples.wordcount:app --yes"""
)
@click.argument("app_ref", metavar="MODULE:APP")
@APP_BROKERS
@click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def apply(app_ref: str, brokers: str | None, dry_run: bool, yes: bool) -> None:
    """Create the topics MODULE:APP needs that are missing and set the configs
    that differ from keyshift's (incrementally: other configs stay). Never
    deletes a topic and never changes a partition count: a count that differs
    is reported as a problem. Running it again changes nothing."""
    _, manager, topic_plan, cluster = _survey(app_ref, brokers, configs=True)
    diff = diff_topics(topic_plan, cluster)
    for problem in diff.problems:
        click.echo(f"problem: {problem}", err=True)
    if not diff.changes:
        click.echo("nothing to change")
    elif dry_run:
        for line in change_lines(diff, "would create", "would alter"):
            click.echo(line)
    else:
        for line in change_lines(diff, "create", "alter"):
            click.echo(line)
        if not yes:
            click.confirm(f"apply these {len(diff.create) + len(diff.alter)} changes?", abort=True)
        try:
            created = manager.create(diff.create)
            manager.alter(diff.alter)
        except KeyshiftError as exc:
            raise click.ClickException(str(exc)) from exc
        for name in created:
            click.echo(f"created {name}")
        for change in diff.alter:
            click.echo(f"altered {change.topic}: {change.key}={change.wanted}")
    if diff.problems:
        raise SystemExit(EXIT_PROBLEMS)


@topics.command(
    epilog="""\b
Exit codes: 0 no problem; 4 problems (one line each); 1 an error.

\b
Examples:
  keyshift topics validate examples.wordcount:app
  keyshift topics validate examples.wordcount:app --min-replication 3"""
)
@click.argument("app_ref", metavar="MODULE:APP")
@APP_BROKERS
@click.option(
    "--min-replication",
    type=click.IntRange(min=1),
    help="Least replication factor accepted [default: the app's replication_factor "
    "setting, or 1 when the broker's default applies].",
)
def validate(app_ref: str, brokers: str | None, min_replication: int | None) -> None:
    """Check MODULE:APP's topics as a worker does at start: co-partitioning (each
    changelog has its input's partition count, each repartition topic the count
    its readers expect), a source whose partition count changed since its state
    was built, and replication below the minimum. Prints one line per problem."""
    app, manager, topic_plan, cluster = _survey(app_ref, brokers, configs=False)
    problems = validate_topics(
        app.topology,
        topic_plan,
        cluster,
        min_replication=min_replication or manager.min_replication,
    )
    for problem in problems:
        click.echo(problem)
    if problems:
        raise SystemExit(EXIT_PROBLEMS)
    click.echo(f"ok: {len(cluster)} topics of {app.app_id} checked")
