"""The topics an app needs, their diff with a cluster and their validation
(pure functions), and the checks a worker makes with them at start and on
assignment."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import TopicPartition

from fakes import FakeCluster, WorkerThread, wait_for
from keyshift import App
from keyshift.config import Settings
from keyshift.errors import TopologyError
from keyshift.operators.topology import Topology
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.tasks import TaskManager
from keyshift.runtime.topic_plan import (
    TopicPlan,
    TopicSpec,
    TopicState,
    diff_topics,
    min_insync_replicas,
    plan_topics,
    state_partitions,
    validate_topics,
)
from keyshift.runtime.topics import TopicManager

pytestmark = pytest.mark.unit


def counting(app_id: str = "app", *, keyby_partitions: int | None = None) -> Topology:
    """``in`` counted by its own keys (store ``c``) to ``out``; ``in2`` re-keyed
    and counted (store ``d``) to ``out``."""
    app = App(app_id, brokers="fake:1", state="memory://")
    app.stream("in").count(store="c").to("out")
    (
        app.stream("in2")
        .key_by(lambda v: str(v), partitions=keyby_partitions)
        .count(store="d")
        .to("out")
    )
    return app.topology


def cluster_of(plan: TopicPlan, **overrides: TopicState) -> dict[str, TopicState]:
    """The cluster ``plan`` asks for (one replica each), with ``overrides``."""
    cluster = {s.name: TopicState(s.name, s.partitions, 1, dict(s.config)) for s in plan.specs}
    cluster.update({state.name: state for state in overrides.values()})
    return cluster


def by_name(plan: TopicPlan) -> dict[str, TopicSpec]:
    return {s.name: s for s in plan.specs}


# -- plan -------------------------------------------------------------------------------


def test_the_plan_names_every_topic_with_its_role_partitions_and_configs() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    specs = by_name(plan)
    assert {name: (s.role, s.partitions, s.managed) for name, s in specs.items()} == {
        "in": ("source", 3, False),
        "in2": ("source", 2, False),
        "app--keyby-1-repartition": ("repartition", 2, True),
        "app--c-changelog": ("changelog", 3, True),
        "app--d-changelog": ("changelog", 2, True),
        "out": ("sink", 3, True),
        "app--state-locations": ("locations", 1, True),
        "app--events": ("events", 1, True),
        "app--dlq": ("dlq", 1, True),
        "app--control": ("control", 1, True),
        "app--rates": ("rates", 1, True),
    }
    assert specs["app--c-changelog"].config == {"cleanup.policy": "compact"}
    assert specs["app--state-locations"].config == {"cleanup.policy": "compact"}
    assert specs["app--control"].config == {"cleanup.policy": "delete", "retention.ms": "3600000"}
    assert specs["app--rates"].config == {"cleanup.policy": "delete", "retention.ms": "3600000"}
    assert specs["out"].config == {} and specs["app--events"].config == {}
    assert all(s.replication == -1 for s in plan.specs)
    assert plan.missing_sources == []


def test_a_plan_finds_a_topics_spec_by_name() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    spec = plan.spec("app--d-changelog")
    assert spec is not None and (spec.role, spec.partitions) == ("changelog", 2)
    assert plan.spec("elsewhere") is None


def test_a_key_by_with_partitions_gives_its_repartition_topic_and_changelogs_that_count() -> None:
    specs = by_name(plan_topics(counting(keyby_partitions=5), {"in": 3, "in2": 2}))
    assert specs["app--keyby-1-repartition"].partitions == 5
    assert specs["app--d-changelog"].partitions == 5


@pytest.mark.parametrize(("replication", "isr"), [(3, "2"), (2, "1"), (5, "2")])
def test_a_replication_factor_sets_min_insync_replicas_on_keyshifts_own_topics(
    replication: int, isr: str
) -> None:
    specs = by_name(plan_topics(counting(), {"in": 3, "in2": 2}, replication))
    for name in ("app--c-changelog", "app--keyby-1-repartition", "app--control", "app--dlq"):
        assert specs[name].replication == replication
        assert specs[name].config["min.insync.replicas"] == isr
    assert specs["app--c-changelog"].config["cleanup.policy"] == "compact"
    # a sink is created with the factor, but its configs are the cluster's
    assert specs["out"].replication == replication and specs["out"].config == {}
    # sources are never created: nothing is asked of them
    assert specs["in"].replication == -1 and specs["in"].config == {}


@pytest.mark.parametrize(("replication", "isr"), [(-1, None), (1, None), (2, 1), (3, 2), (7, 2)])
def test_min_insync_replicas(replication: int, isr: int | None) -> None:
    assert min_insync_replicas(replication) == isr


def test_a_missing_source_leaves_its_topics_unplanned() -> None:
    plan = plan_topics(counting(), {"in2": 2})
    assert plan.missing_sources == ["in"]
    specs = by_name(plan)
    assert "app--c-changelog" not in specs and "in" not in specs
    assert specs["app--d-changelog"].partitions == 2
    assert specs["out"].partitions == 2  # written by the planned sub-topology too
    assert "app--control" in specs


def test_a_topic_both_read_and_written_is_a_source() -> None:
    app = App("app", brokers="fake:1", state="memory://")
    app.stream("a").to("b")
    app.stream("b").count(store="s").to("c")
    specs = by_name(plan_topics(app.topology, {"a": 2, "b": 4}))
    assert specs["b"].role == "source" and not specs["b"].managed
    assert specs["app--s-changelog"].partitions == 4


# -- diff -------------------------------------------------------------------------------


def test_on_an_empty_cluster_every_managed_topic_is_created() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    diff = diff_topics(plan, {"in": TopicState("in", 3, 1), "in2": TopicState("in2", 2, 1)})
    assert {s.name for s in diff.create} == {s.name for s in plan.specs if s.managed}
    assert diff.alter == [] and diff.problems == [] and diff.changes and not diff.in_sync


def test_a_cluster_as_planned_is_in_sync_and_stays_so() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2}, 3)
    diff = diff_topics(plan, cluster_of(plan))
    assert diff.in_sync and not diff.changes
    assert diff.to_dict() == {"in_sync": True, "create": [], "alter": [], "problems": []}


def test_configs_that_differ_are_altered_and_others_left_alone() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    changelog = TopicState(
        "app--c-changelog", 3, 1, {"cleanup.policy": "delete", "segment.ms": "1000"}
    )
    control = TopicState("app--control", 1, 1, {"cleanup.policy": "delete"})
    diff = diff_topics(plan, cluster_of(plan, changelog=changelog, control=control))
    assert [(c.topic, c.key, c.current, c.wanted) for c in diff.alter] == [
        ("app--c-changelog", "cleanup.policy", "delete", "compact"),
        ("app--control", "retention.ms", None, "3600000"),
    ]
    assert diff.create == [] and diff.problems == []
    assert diff.to_dict()["alter"] == [
        {
            "topic": "app--c-changelog",
            "config": "cleanup.policy",
            "current": "delete",
            "wanted": "compact",
        },
        {"topic": "app--control", "config": "retention.ms", "current": None, "wanted": "3600000"},
    ]


def test_a_partition_count_that_differs_is_a_problem_not_a_change() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    cluster = cluster_of(
        plan,
        changelog=TopicState("app--c-changelog", 6, 1, {"cleanup.policy": "compact"}),
        repartition=TopicState("app--keyby-1-repartition", 1, 1),
    )
    diff = diff_topics(plan, cluster)
    assert not diff.changes
    assert len(diff.problems) == 2
    problems = "\n".join(diff.problems)
    assert "changelog topic 'app--c-changelog' has 6 partitions, expected 3" in problems
    assert "repartition topic 'app--keyby-1-repartition' has 1 partitions, expected 2" in problems
    assert "keyshift never changes a partition count" in problems


def test_sinks_events_and_dead_letters_take_any_partition_count() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    cluster = cluster_of(
        plan,
        sink=TopicState("out", 12, 1, {"cleanup.policy": "compact"}),
        events=TopicState("app--events", 3, 1),
        dlq=TopicState("app--dlq", 6, 1),
    )
    assert diff_topics(plan, cluster).in_sync


def test_a_missing_source_is_a_problem_apply_cannot_fix() -> None:
    plan = plan_topics(counting(), {"in2": 2})
    diff = diff_topics(plan, {"in2": TopicState("in2", 2, 1)})
    assert diff.problems == [
        "source topic 'in' does not exist; create it first "
        "(keyshift topics create in --partitions N)"
    ]
    assert "in" not in {s.name for s in diff.create}


# -- validation -------------------------------------------------------------------------


def test_topics_as_planned_validate() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    assert validate_topics(counting(), plan, cluster_of(plan)) == []


def test_missing_topics_other_than_sources_are_no_validation_problem() -> None:
    plan = plan_topics(counting(), {"in": 3, "in2": 2})
    cluster = {"in": TopicState("in", 3, 1), "in2": TopicState("in2", 2, 1)}
    assert validate_topics(counting(), plan, cluster) == []


def test_a_source_expanded_since_its_state_was_built_is_caught() -> None:
    topology = counting()
    built = plan_topics(topology, {"in": 3, "in2": 2})
    cluster = cluster_of(built, source=TopicState("in", 4, 1))  # CreatePartitions: 3 -> 4
    now = plan_topics(topology, {n: t.partitions for n, t in cluster.items()})
    problems = validate_topics(topology, now, cluster)
    assert len(problems) == 1
    assert problems[0].startswith(
        "source topic 'in' has 4 partitions but the state of store 'c' was built with 3 "
        "(its changelog 'app--c-changelog')"
    )
    assert "keys now hash to other partitions" in problems[0]
    assert "keyshift reset MODULE:APP --delete-internal" in problems[0]


def test_an_expanded_source_upstream_of_a_key_by_breaks_its_repartition_topic() -> None:
    topology = counting()
    built = plan_topics(topology, {"in": 3, "in2": 2})
    cluster = cluster_of(built, source=TopicState("in2", 5, 1))
    now = plan_topics(topology, {n: t.partitions for n, t in cluster.items()})
    problems = validate_topics(topology, now, cluster)
    assert problems == [
        "repartition topic 'app--keyby-1-repartition' has 2 partitions; its readers expect 5 "
        "(the partition count of 'in2', its upstream topic); rebuild the state: stop the "
        "app, reset it (keyshift reset MODULE:APP --delete-internal) and start it again"
    ]


def test_a_repartition_topic_without_the_count_key_by_asks_for_is_caught() -> None:
    topology = counting(keyby_partitions=4)
    plan = plan_topics(topology, {"in": 3, "in2": 2})
    cluster = cluster_of(
        plan,
        repartition=TopicState("app--keyby-1-repartition", 6, 1),
    )
    problems = validate_topics(topology, plan, cluster)
    assert len(problems) == 2
    assert "has 6 partitions; its readers expect 4 (key_by(partitions=4))" in problems[0]
    # and the state read from it was built with the planned count
    assert problems[1].startswith(
        "repartition topic 'app--keyby-1-repartition' has 6 partitions but the state of "
        "store 'd' was built with 4"
    )


@pytest.mark.parametrize(
    ("role", "name"),
    [("locations", "app--state-locations"), ("control", "app--control"), ("rates", "app--rates")],
)
def test_a_topic_read_as_one_log_with_more_partitions_is_caught(role: str, name: str) -> None:
    topology = counting()
    plan = plan_topics(topology, {"in": 3, "in2": 2})
    cluster = cluster_of(plan, single=TopicState(name, 2, 1))
    assert validate_topics(topology, plan, cluster) == [
        f"{role} topic {name!r} has 2 partitions, expected 1: it is read as one log"
    ]


def test_replication_below_the_minimum_is_caught_per_topic() -> None:
    topology = counting()
    plan = plan_topics(topology, {"in": 3, "in2": 2})
    cluster = cluster_of(plan, changelog=TopicState("app--c-changelog", 3, 3))
    problems = validate_topics(topology, plan, cluster, min_replication=2)
    assert len(problems) == len(plan.specs) - 1
    assert "changelog topic 'app--d-changelog' has replication factor 1, below the minimum 2" in (
        problems
    )
    assert not any("'app--c-changelog'" in p for p in problems)
    assert validate_topics(topology, plan, cluster, min_replication=1) == []


def test_validation_reports_a_missing_source() -> None:
    topology = counting()
    plan = plan_topics(topology, {"in2": 2})
    problems = validate_topics(topology, plan, {"in2": TopicState("in2", 2, 1)})
    assert problems == [
        "source topic 'in' does not exist; create it first "
        "(keyshift topics create in --partitions N)"
    ]


def test_state_partitions_are_the_stateful_inputs_counts() -> None:
    app = App("app", brokers="fake:1", state="memory://")
    app.stream("in").count(store="c").to("out")
    app.stream("plain").map(lambda v: v).to("out2")  # stateless: no limit
    app.stream("in2").key_by(lambda v: str(v), partitions=7).count(store="d").to("out")
    plan = plan_topics(app.topology, {"in": 3, "plain": 4, "in2": 2})
    assert state_partitions(app.topology, plan) == {"in": 3, "app--keyby-1-repartition": 7}


# -- the worker's checks ------------------------------------------------------------------


def tasks(limits: dict[str, int]) -> TaskManager:
    return TaskManager(
        {},
        records=cast(Any, None),
        metrics=Metrics(),
        pause=lambda _: None,
        state_partitions=limits,
    )


def test_an_assigned_partition_beyond_the_state_stops_the_worker() -> None:
    manager = tasks({"in": 3})
    manager.check_assigned([TopicPartition("in", 0), TopicPartition("in", 2)])
    manager.check_assigned([TopicPartition("plain", 9)])  # stateless: any partition
    with pytest.raises(TopologyError) as caught:
        manager.check_assigned([TopicPartition("in", 1), TopicPartition("in", 3)])
    assert str(caught.value).startswith(
        "partition 3 of 'in' was assigned, but the state of its stores was built with 3 partitions"
    )


def settings(**given: Any) -> Settings:
    return Settings.build("app", brokers="fake:1", state="memory://", **given)


def app_on(cluster: FakeCluster) -> Topology:
    topology = counting()
    cluster.create_topic("in", 3)
    cluster.create_topic("in2", 2)
    return topology


def test_prepare_creates_the_missing_topics_by_default() -> None:
    cluster = FakeCluster()
    topology = app_on(cluster)
    manager = TopicManager(settings(), cluster.clients().admin)
    plan = manager.prepare(topology)
    assert {s.name for s in plan.specs} <= set(cluster.logs)
    assert len(cluster.logs["app--c-changelog"]) == 3
    assert cluster.configs["app--c-changelog"]["cleanup.policy"] == "compact"


def test_prepare_without_create_topics_lists_the_missing_ones_and_the_command() -> None:
    cluster = FakeCluster()
    topology = app_on(cluster)
    topology.app_ref = "mypkg.pipeline:app"
    manager = TopicManager(settings(create_topics=False), cluster.clients().admin)
    with pytest.raises(TopologyError) as caught:
        manager.prepare(topology)
    message = str(caught.value)
    managed = [s.name for s in plan_topics(topology, {"in": 3, "in2": 2}).specs if s.managed]
    assert message.startswith("9 topic(s) the app needs are missing and create_topics is off")
    assert all(f"\n  {name} (" in message for name in managed)
    assert message.endswith("create them with: keyshift topics apply mypkg.pipeline:app")
    assert set(cluster.logs) == {"in", "in2"}  # nothing created
    manager.create([s for s in plan_topics(topology, {"in": 3, "in2": 2}).specs if s.managed])
    manager.prepare(topology)  # everything there now


def test_prepare_names_the_placeholder_when_the_app_reference_is_unknown() -> None:
    cluster = FakeCluster()
    manager = TopicManager(settings(create_topics=False), cluster.clients().admin)
    with pytest.raises(TopologyError, match="keyshift topics apply MODULE:APP$"):
        manager.prepare(app_on(cluster))


def test_prepare_refuses_a_source_expanded_since_its_state_was_built() -> None:
    cluster = FakeCluster()
    topology = app_on(cluster)
    manager = TopicManager(settings(), cluster.clients().admin)
    manager.prepare(topology)
    cluster.logs["in"].append([])  # CreatePartitions: 3 -> 4
    with pytest.raises(TopologyError) as caught:
        manager.prepare(topology)
    assert "source topic 'in' has 4 partitions but the state of store 'c'" in str(caught.value)
    assert "the worker stops rather than corrupt state" in str(caught.value)


def test_prepare_refuses_replication_below_the_configured_factor() -> None:
    cluster = FakeCluster()
    topology = app_on(cluster)
    manager = TopicManager(settings(replication_factor=2), cluster.clients().admin)
    assert manager.min_replication == 2
    with pytest.raises(TopologyError, match="source topic 'in' has replication factor 1"):
        manager.prepare(topology)
    assert TopicManager(settings(), cluster.clients().admin).min_replication == 1


def test_prepare_refuses_a_missing_source() -> None:
    cluster = FakeCluster()
    cluster.create_topic("in2", 2)
    manager = TopicManager(settings(), cluster.clients().admin)
    with pytest.raises(TopologyError, match="source topic 'in' does not exist"):
        manager.prepare(counting())
    assert set(cluster.logs) == {"in2"}


def test_a_worker_stops_when_its_stateful_source_is_expanded_under_it() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    app = App("wc", brokers="fake:1", state="memory://one", commit_interval_ms=20)
    app.stream("words").count(store="counts").to("totals")
    producer = cluster.clients().producer({})
    producer.produce("words", b'"a"', b"a", partition=0)
    producer.flush()
    with WorkerThread(app.worker(clients=cluster.clients())) as running:
        assert wait_for(lambda: len(cluster.records("totals")) == 1)
        cluster.logs["words"].append([])  # CreatePartitions: 2 -> 3
        assert wait_for(lambda: running.done, 10)
    assert isinstance(running.error, TopologyError)
    assert str(running.error).startswith(
        "partition 2 of 'words' was assigned, but the state of its stores was built with 2"
    )
