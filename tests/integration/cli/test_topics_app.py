"""`keyshift topics plan|apply|validate MODULE:APP` against the sandbox's broker, and
workers that find the app's topics unfit: ``create_topics`` off and topics
missing, a source expanded under a running worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)

from fakes import WorkerThread, wait_for
from kafkautil import create_topic, produce_json, read_topic, write_app
from keyshift.cli import main
from keyshift.cli.loader import load_app
from keyshift.cli.topics import EXIT_CHANGES, EXIT_PROBLEMS
from keyshift.errors import TopologyError

pytestmark = pytest.mark.integration


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def new_topic(admin: Any, name: str, count: int) -> None:
    """Create ``name`` and wait until the broker's metadata lists it."""
    create_topic(admin, name, count)
    assert wait_for(lambda: name in admin.list_topics(timeout=10).topics, 15)


def topics(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["topics", *args], input=input)


def configs(admin: Any, topic: str) -> dict[str, str]:
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    return {k: e.value for f in futures.values() for k, e in f.result(15).items()}


def partitions(admin: Any, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def counting_app(directory: Path, module: str, app_id: str, source: str, sink: str) -> str:
    """An app counting its source's records by their own keys (state built on the
    source's partitions: no repartition topic in between)."""
    code = f"""
    from keyshift import App

    app = App({app_id!r}, commit_interval_ms=100)
    app.stream({source!r}).count(store="counts").to({sink!r})
    """
    (directory / f"{module}.py").write_text(textwrap.dedent(code))
    return f"{module}:app"


def test_plan_apply_round_trip_is_idempotent(admin: Any, unique: Callable[..., str], app_dir: Path):
    app_id, source, sink = unique("tp"), unique("in"), unique("out")
    new_topic(admin, source, 3)
    ref = write_app(app_dir, unique("mod").replace("-", "_"), app_id, source, sink, "at_least_once")
    internal = [
        f"{app_id}--keyby-1-repartition",
        f"{app_id}--counts-changelog",
        f"{app_id}--state-locations",
        f"{app_id}--events",
        f"{app_id}--dlq",
        f"{app_id}--control",
        f"{app_id}--rates",
    ]

    planned = topics("plan", ref, "--json")
    assert planned.exit_code == EXIT_CHANGES, planned.output
    body = orjson.loads(planned.output)
    assert body["in_sync"] is False and body["problems"] == []
    assert {t["name"] for t in body["create"]} == {*internal, sink}
    roles = {t["name"]: (t["role"], t["partitions"], t["exists"]) for t in body["topics"]}
    assert roles[source] == ("source", 3, True)
    assert roles[f"{app_id}--counts-changelog"] == ("changelog", 3, False)
    assert roles[sink] == ("sink", 3, False)

    dry = topics("apply", ref, "--dry-run")
    assert dry.exit_code == 0 and f"would create {sink} (sink)" in dry.output
    assert f"{app_id}--control" not in admin.list_topics(timeout=10).topics

    refused = topics("apply", ref, input="n\n")
    assert refused.exit_code == 1 and "apply these 8 changes?" in refused.output
    assert f"{app_id}--control" not in admin.list_topics(timeout=10).topics

    applied = topics("apply", ref, input="y\n")
    assert applied.exit_code == 0, applied.output
    assert all(f"created {name}" in applied.output for name in [*internal, sink])
    assert partitions(admin, f"{app_id}--counts-changelog") == 3
    assert partitions(admin, f"{app_id}--keyby-1-repartition") == 3
    assert configs(admin, f"{app_id}--counts-changelog")["cleanup.policy"] == "compact"
    assert configs(admin, f"{app_id}--state-locations")["cleanup.policy"] == "compact"
    assert configs(admin, f"{app_id}--control")["retention.ms"] == "3600000"

    again = topics("apply", ref, "--yes")
    assert again.exit_code == 0 and again.output.strip() == "nothing to change"
    in_sync = topics("plan", ref)
    assert in_sync.exit_code == 0 and "in sync: nothing to change" in in_sync.output
    assert orjson.loads(topics("plan", ref, "--json").output)["in_sync"] is True

    # A config changed behind keyshift's back is set again, and only it.
    changelog = f"{app_id}--counts-changelog"
    entry = ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
    futures = admin.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, changelog, incremental_configs=[entry])]
    )
    for future in futures.values():
        future.result(15)
    drifted = topics("plan", ref)
    assert drifted.exit_code == EXIT_CHANGES
    assert f"~ alter {changelog}: cleanup.policy delete -> compact" in drifted.output
    fixed = topics("apply", ref, "--yes")
    assert fixed.exit_code == 0 and f"altered {changelog}: cleanup.policy=compact" in fixed.output
    assert configs(admin, changelog)["cleanup.policy"] == "compact"
    assert topics("plan", ref).exit_code == 0
    assert topics("validate", ref).exit_code == 0


def test_plan_and_apply_report_what_apply_never_fixes(
    admin: Any, unique: Callable[..., str], app_dir: Path
) -> None:
    app_id, source, sink = unique("tp"), unique("in"), unique("out")
    ref = write_app(app_dir, unique("mod").replace("-", "_"), app_id, source, sink, "at_least_once")
    missing = topics("plan", ref)
    assert missing.exit_code == EXIT_PROBLEMS
    assert f"problem: source topic {source!r} does not exist" in missing.output

    new_topic(admin, source, 3)
    new_topic(admin, f"{app_id}--keyby-1-repartition", 5)  # readers expect 3
    planned = topics("plan", ref)
    assert planned.exit_code == EXIT_PROBLEMS
    assert (
        f"problem: repartition topic '{app_id}--keyby-1-repartition' has 5 partitions, "
        "expected 3" in planned.output
    )
    applied = topics("apply", ref, "--yes")
    assert applied.exit_code == EXIT_PROBLEMS  # the rest is applied
    assert f"created {app_id}--counts-changelog" in applied.output
    assert partitions(admin, f"{app_id}--keyby-1-repartition") == 5  # never changed

    validated = topics("validate", ref)
    assert validated.exit_code == EXIT_PROBLEMS
    lines = validated.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"repartition topic '{app_id}--keyby-1-repartition' has 5 partitions; its readers "
        f"expect 3 (the partition count of {source!r}, its upstream topic)"
    )
    assert lines[1].startswith(
        f"repartition topic '{app_id}--keyby-1-repartition' has 5 partitions but the state "
        "of store 'counts' was built with 3"
    )


def test_validate_catches_replication_below_the_minimum(
    admin: Any, unique: Callable[..., str], app_dir: Path
) -> None:
    app_id, source, sink = unique("tp"), unique("in"), unique("out")
    new_topic(admin, source, 2)
    ref = counting_app(app_dir, unique("mod").replace("-", "_"), app_id, source, sink)
    applied = topics("apply", ref, "--yes")
    assert applied.exit_code == 0, applied.output
    assert topics("validate", ref).exit_code == 0
    for minimum in ("2", "3"):
        result = topics("validate", ref, "--min-replication", minimum)
        assert result.exit_code == EXIT_PROBLEMS
        lines = result.output.strip().splitlines()
        assert len(lines) == 8  # source, changelog, sink, locations, events, dlq, control, rates
        assert f"source topic {source!r} has replication factor 1, below the minimum {minimum}" in (
            lines
        )
        assert (
            f"changelog topic '{app_id}--counts-changelog' has replication factor 1, "
            f"below the minimum {minimum}" in lines
        )


def test_a_worker_without_create_topics_fails_listing_them_then_runs_after_apply(
    brokers: str, admin: Any, unique: Callable[..., str], app_dir: Path
) -> None:
    app_id, source, sink = unique("tp"), unique("in"), unique("out")
    new_topic(admin, source, 2)
    ref = counting_app(app_dir, unique("mod").replace("-", "_"), app_id, source, sink)
    env = dict(os.environ, PYTHONPATH=str(app_dir), KEYSHIFT_CREATE_TOPICS="false")
    failed = subprocess.run(
        [sys.executable, "-m", "keyshift", "worker", ref],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "7 topic(s) the app needs are missing and create_topics is off" in failed.stderr
    for name in (
        f"{app_id}--counts-changelog (changelog)",
        f"{sink} (sink)",
        f"{app_id}--state-locations (locations)",
        f"{app_id}--events (events)",
        f"{app_id}--dlq (dlq)",
        f"{app_id}--control (control)",
        f"{app_id}--rates (rates)",
    ):
        assert f"  {name}\n" in failed.stderr
    assert f"create them with: keyshift topics apply {ref}" in failed.stderr
    existing = admin.list_topics(timeout=10).topics
    assert not any(name.startswith(f"{app_id}--") for name in existing) and sink not in existing

    assert topics("apply", ref, "--yes").exit_code == 0
    app = load_app(ref)
    app.configure(create_topics=False)
    assert app.settings.create_topics is False
    produce_json(brokers, source, ["x", "y", "x"])
    with WorkerThread(app.worker()) as running:
        assert wait_for(lambda: len(read_topic(brokers, sink, idle_s=0.5)) == 3, 60)
    assert running.error is None


def test_a_source_expanded_under_a_running_worker_stops_it_and_fails_validation(
    brokers: str, admin: Any, unique: Callable[..., str], app_dir: Path
) -> None:
    app_id, source, sink = unique("tp"), unique("in"), unique("out")
    new_topic(admin, source, 2)
    ref = counting_app(app_dir, unique("mod").replace("-", "_"), app_id, source, sink)
    produce_json(brokers, source, ["x"] * 5)
    worker = load_app(ref).worker()
    with WorkerThread(worker) as running:
        assert wait_for(lambda: len(read_topic(brokers, sink, idle_s=0.5)) == 5, 60)
        for future in admin.create_partitions([NewPartitions(source, 3)]).values():
            future.result(15)
        assert wait_for(lambda: running.done, 90), "the worker ran on with the new partition"
    assert isinstance(running.error, TopologyError)
    assert str(running.error).startswith(
        f"partition 2 of {source!r} was assigned, but the state of its stores was built "
        "with 2 partitions"
    )

    validated = topics("validate", ref)
    assert validated.exit_code == EXIT_PROBLEMS
    assert validated.output.strip().splitlines() == [
        f"source topic {source!r} has 3 partitions but the state of store 'counts' was "
        f"built with 2 (its changelog '{app_id}--counts-changelog'): the partition count "
        "changed since, so keys now hash to other partitions than their state; rebuild the "
        "state: stop the app, reset it (keyshift reset MODULE:APP --delete-internal) and "
        "start it again"
    ]
    # A worker started now stops at start, before touching the state.
    with WorkerThread(load_app(ref).worker()) as restarted:
        assert wait_for(lambda: restarted.done, 60)
    assert isinstance(restarted.error, TopologyError)
    assert "the worker stops rather than corrupt state" in str(restarted.error)
    assert f"source topic {source!r} has 3 partitions" in str(restarted.error)
