"""``keyshift autoscale``: keep an app at the instance count its load needs."""

from __future__ import annotations

import click
from confluent_kafka import Producer

from keyshift.cli.loader import load_app
from keyshift.cli.run import BACKEND, NAME
from keyshift.errors import KeyshiftError
from keyshift.orchestration.autoscale import Bounds, DS2Policy, LagPolicy, Policy
from keyshift.orchestration.autoscaler import Autoscaler, JobProbe
from keyshift.orchestration.scaling import Backend
from keyshift.runtime.kafka import control_producer_config


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option(
    "--min",
    "minimum",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Fewest instances.",
)
@click.option(
    "--max",
    "maximum",
    type=click.IntRange(min=1),
    required=True,
    help="Most instances (the source partitions cap it too).",
)
@BACKEND
@NAME
@click.option(
    "--policy",
    type=click.Choice(["ds2", "lag"]),
    default="ds2",
    show_default=True,
    help="ds2: from measured rates; lag: KEDA's rule, ceil(lag / --lag-threshold).",
)
@click.option(
    "--target-utilization",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.7,
    show_default=True,
    help="ds2: the busy share each instance should have.",
)
@click.option(
    "--drain-seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="ds2: a backlog is worked off within this long.",
)
@click.option(
    "--lag-threshold",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="lag: records of lag per instance.",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=1),
    default=15.0,
    show_default=True,
    help="Seconds each measurement covers.",
)
@click.option("--steps", type=click.IntRange(min=1), help="Stop after this many decisions.")
@click.option("--dry-run", is_flag=True, help="Decide and publish decisions; never scale.")
def autoscale(
    app_ref: str,
    minimum: int,
    maximum: int,
    backend: Backend,
    name: str | None,
    policy: str,
    target_utilization: float,
    drain_seconds: float,
    lag_threshold: int,
    window_s: float,
    steps: int | None,
    dry_run: bool,
) -> None:
    """Scale MODULE:APP to the instance count its load needs, again and again.

    Every window it measures the arrival rate, the backlog and each instance's
    true processing rate (records per busy second, reported by the workers),
    asks the policy, logs the decision and publishes it on <app>--events, and
    after a change waits until the moved tasks run again before it decides
    anew. Runs until interrupted (or --steps).

    \b
    Examples:
      keyshift autoscale examples.wordcount:app --min 1 --max 6
      keyshift autoscale examples.wordcount:app --max 12 --policy lag --lag-threshold 5000
      keyshift autoscale examples.wordcount:app --max 12 --backend kubernetes --dry-run
    """
    if maximum < minimum:
        raise click.BadParameter(f"--max {maximum} is below --min {minimum}")
    app = load_app(app_ref)
    bounds = Bounds(minimum, maximum)
    chosen: Policy = (
        DS2Policy(bounds, target_utilization=target_utilization, drain_s=drain_seconds)
        if policy == "ds2"
        else LagPolicy(bounds, lag_threshold=lag_threshold)
    )
    try:
        probe = JobProbe(app.settings, app.topology)
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    events = Producer(control_producer_config(app.settings))
    scaler = Autoscaler(
        probe, chosen, backend=backend, dry_run=dry_run, events=events, window_s=window_s, name=name
    )
    try:
        done = 0
        while steps is None or done < steps:
            decision = scaler.step()
            done += 1
            verb = "would scale" if dry_run and decision.changes else "scaled"
            head = f"{verb} to {decision.instances}" if decision.changes else "no change"
            click.echo(f"{head}: {decision.reason}")
    except KeyshiftError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    finally:
        probe.close()
        events.flush(5)
