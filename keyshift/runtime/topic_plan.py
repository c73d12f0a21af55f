"""The topics an app needs, compared with what a cluster has: pure functions.

:func:`plan_topics` lists every topic of an app as a :class:`TopicSpec`: its
sources (they must exist: their partition counts decide every other count),
its sinks (created when missing) and keyshift's own topics (repartition,
changelog, state locations, events, dead letters, control, rates), with
partitions, replication factor and the configs keyshift sets.
:func:`diff_topics` compares a plan with the cluster's topics
(:class:`TopicState`): what to create, which configs to alter, and what no
tool should change by itself (a missing source, a partition count that
differs). :func:`validate_topics` finds what makes the topics unfit to run
on: partition counts that break co-partitioning (a source whose count changed
since its state was built, above all: keys then hash to other partitions than
their state) and replication below a minimum.

The CLI (``keyshift topics plan|apply|validate``) and the worker's start
(:meth:`keyshift.runtime.topics.TopicManager.prepare`) use the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from keyshift.operators.topology import SubTopology, Topology
from keyshift.runtime.control import RETENTION_MS as CONTROL_RETENTION_MS
from keyshift.runtime.rates import RETENTION_MS as RATES_RETENTION_MS

Role = Literal[
    "source",
    "sink",
    "repartition",
    "changelog",
    "locations",
    "events",
    "dlq",
    "control",
    "rates",
]

#: Roles whose partition count keyshift relies on: a changelog partition per
#: task, a repartition topic as its readers expect, one partition for the
#: topics read as a single log. Sinks, events and the dead-letter topic take
#: any count.
EXACT_PARTITIONS: frozenset[str] = frozenset(
    {"repartition", "changelog", "locations", "control", "rates"}
)
#: Roles of the topics read as one log.
SINGLE_LOG: frozenset[str] = frozenset({"locations", "control", "rates"})


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the app needs.

    ``replication`` is -1 for the broker's ``default.replication.factor``.
    ``config`` holds the configs keyshift sets; for a topic that exists, they
    are compared with its own (other configs are the cluster's business).
    ``managed`` is False for sources: keyshift never creates them.
    """

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication: int = -1
    role: Role = "sink"
    managed: bool = True

    @property
    def exact_partitions(self) -> bool:
        return self.role in EXACT_PARTITIONS

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "managed": self.managed,
            "partitions": self.partitions,
            "replication_factor": self.replication,
            "config": dict(self.config),
        }


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as the cluster has it. ``config`` may be empty when configs were
    not read (the worker's start checks only partitions and replicas)."""

    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """Every topic of an app (:func:`plan_topics`).

    ``counts`` is the partition count of each sub-topology (by index) that
    could be planned; sub-topologies fed by a missing source have none, and
    neither do their topics.
    """

    specs: list[TopicSpec]
    counts: dict[int, int]
    missing_sources: list[str]

    def spec(self, name: str) -> TopicSpec | None:
        """The spec of topic ``name``, None if the app does not need it."""
        return next((s for s in self.specs if s.name == name), None)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    topic: str
    key: str
    current: str | None
    wanted: str


@dataclass(frozen=True, slots=True)
class TopicDiff:
    """What differs between a plan and the cluster.

    ``create`` and ``alter`` are what ``keyshift topics apply`` does;
    ``problems`` are differences it leaves alone (one line each): a missing
    source, a partition count that differs (keyshift never deletes a topic
    and never lowers a partition count).
    """

    create: list[TopicSpec]
    alter: list[ConfigChange]
    problems: list[str]

    @property
    def changes(self) -> bool:
        return bool(self.create or self.alter)

    @property
    def in_sync(self) -> bool:
        return not (self.changes or self.problems)

    def to_dict(self) -> dict[str, object]:
        return {
            "in_sync": self.in_sync,
            "create": [s.to_dict() for s in self.create],
            "alter": [
                {"topic": c.topic, "config": c.key, "current": c.current, "wanted": c.wanted}
                for c in self.alter
            ],
            "problems": list(self.problems),
        }


#: What to do about partition counts that no longer fit the state: Kafka never
#: lowers a partition count, so the state is rebuilt from the inputs.
RESET = (
    "rebuild the state: stop the app, reset it (keyshift reset MODULE:APP "
    "--delete-internal) and start it again"
)


def min_insync_replicas(replication: int) -> int | None:
    """``min.insync.replicas`` of keyshift's own topics at ``replication`` replicas:
    one fewer, at most 2, so that with ``acks=all`` an acknowledged write is on
    two replicas (with 3 or more) while one broker may be down. None (the
    broker's value) at the broker's default factor or a single replica."""
    if replication < 2:
        return None
    return min(2, replication - 1)


def source_missing(topic: str) -> str:
    return (
        f"source topic {topic!r} does not exist; create it first "
        f"(keyshift topics create {topic} --partitions N)"
    )


def plan_topics(topology: Topology, counts: Mapping[str, int], replication: int = -1) -> TopicPlan:
    """Every topic ``topology`` needs, given the partition counts of the topics
    that exist (``counts``) and the replication factor of the topics keyshift
    creates (-1: the broker's default)."""
    sub_counts: dict[int, int] = {}
    missing: list[str] = []
    specs: dict[str, TopicSpec] = {}
    isr = min_insync_replicas(replication)
    own = {} if isr is None else {"min.insync.replicas": str(isr)}

    def add(name: str, partitions: int, role: Role, config: dict[str, str] | None = None) -> None:
        if name not in specs:  # a topic both read and written is a source
            managed = role != "source"
            cfg = {**own, **(config or {})} if managed and role != "sink" else dict(config or {})
            specs[name] = TopicSpec(
                name,
                partitions,
                cfg,
                replication if managed else -1,
                role,
                managed,
            )

    for sub in topology.subtopologies:
        if not sub.internal:
            if sub.topic in counts:
                sub_counts[sub.index] = counts[sub.topic]
                add(sub.topic, counts[sub.topic], "source")
            else:
                missing.append(sub.topic)
            continue
        assert sub.upstream is not None
        upstream = sub_counts.get(sub.upstream.index)
        n = sub.partitions or upstream
        if n is not None:
            sub_counts[sub.index] = n
            add(sub.topic, n, "repartition")
    for sub in topology.subtopologies:
        n = sub_counts.get(sub.index)
        if n is None:
            continue
        for store in sub.stores():
            add(topology.changelog_topic(store), n, "changelog", {"cleanup.policy": "compact"})
        for sink in sub.sinks():
            add(sink, n, "sink")
    add(topology.locations_topic, 1, "locations", {"cleanup.policy": "compact"})
    add(topology.events_topic, 1, "events")
    add(topology.dlq_topic, 1, "dlq")
    add(
        topology.control_topic,
        1,
        "control",
        {"cleanup.policy": "delete", "retention.ms": str(CONTROL_RETENTION_MS)},
    )
    add(
        topology.rates_topic,
        1,
        "rates",
        {"cleanup.policy": "delete", "retention.ms": str(RATES_RETENTION_MS)},
    )
    return TopicPlan(list(specs.values()), sub_counts, missing)


def diff_topics(plan: TopicPlan, cluster: Mapping[str, TopicState]) -> TopicDiff:
    """What ``keyshift topics apply`` would change, and what it would not (see
    :class:`TopicDiff`). Configs of sinks that exist are the cluster's: only
    configs keyshift sets (on its own topics) are compared."""
    create: list[TopicSpec] = []
    alter: list[ConfigChange] = []
    problems = [source_missing(t) for t in plan.missing_sources]
    for spec in plan.specs:
        state = cluster.get(spec.name)
        if state is None:
            if spec.managed:
                create.append(spec)
            continue
        if spec.exact_partitions and state.partitions != spec.partitions:
            problems.append(
                f"{spec.role} topic {spec.name!r} has {state.partitions} partitions, "
                f"expected {spec.partitions}; keyshift never changes a partition count "
                f"(see keyshift topics validate)"
            )
        for key, wanted in spec.config.items():
            current = state.config.get(key)
            if current != wanted:
                alter.append(ConfigChange(spec.name, key, current, wanted))
    return TopicDiff(create, alter, problems)


def _stateful(topology: Topology) -> list[SubTopology]:
    return [sub for sub in topology.subtopologies if sub.stores()]


def validate_topics(
    topology: Topology,
    plan: TopicPlan,
    cluster: Mapping[str, TopicState],
    *,
    min_replication: int = 1,
) -> list[str]:
    """Problems that make the app's topics unfit to run on, one line each:

    * a missing source;
    * a stateful sub-topology's input (a source or a repartition topic) whose
      partition count is not its stores' changelogs': the changelogs were
      created with the input's count, so the input's count changed since the
      state was built, and keys now hash to other partitions than their state;
    * a repartition topic whose partition count is not the one its readers
      expect (``key_by(partitions=...)`` or its upstream topic's count);
    * a locations, control or rates topic with more than one partition;
    * a topic of the app replicated fewer than ``min_replication`` times.

    Topics that do not exist yet are not problems here (the plan creates them).
    """
    return [
        *(source_missing(t) for t in plan.missing_sources),
        *_repartition_problems(topology, plan, cluster),
        *_changelog_problems(topology, cluster),
        *_single_log_problems(plan, cluster),
        *_replication_problems(plan, cluster, min_replication),
    ]


def _repartition_problems(
    topology: Topology, plan: TopicPlan, cluster: Mapping[str, TopicState]
) -> list[str]:
    problems = []
    for sub in topology.subtopologies:
        state = cluster.get(sub.topic)
        expected = plan.counts.get(sub.index)
        if not sub.internal or state is None or expected in (None, state.partitions):
            continue
        assert sub.upstream is not None
        why = (
            f"key_by(partitions={sub.partitions})"
            if sub.partitions
            else f"the partition count of {sub.upstream.topic!r}, its upstream topic"
        )
        problems.append(
            f"repartition topic {sub.topic!r} has {state.partitions} partitions; its "
            f"readers expect {expected} ({why}); {RESET}"
        )
    return problems


def _changelog_problems(topology: Topology, cluster: Mapping[str, TopicState]) -> list[str]:
    problems = []
    for sub in _stateful(topology):
        read = cluster.get(sub.topic)
        for store in sub.stores():
            changelog = cluster.get(topology.changelog_topic(store))
            if read is None or changelog is None or changelog.partitions == read.partitions:
                continue
            kind = "repartition topic" if sub.internal else "source topic"
            problems.append(
                f"{kind} {sub.topic!r} has {read.partitions} partitions but the state of "
                f"store {store!r} was built with {changelog.partitions} (its changelog "
                f"{changelog.name!r}): the partition count changed since, so keys now hash "
                f"to other partitions than their state; {RESET}"
            )
    return problems


def _single_log_problems(plan: TopicPlan, cluster: Mapping[str, TopicState]) -> list[str]:
    problems = []
    for spec in plan.specs:
        state = cluster.get(spec.name)
        single = spec.role in SINGLE_LOG
        if single and state is not None and state.partitions != spec.partitions:
            problems.append(
                f"{spec.role} topic {spec.name!r} has {state.partitions} partitions, "
                f"expected {spec.partitions}: it is read as one log"
            )
    return problems


def _replication_problems(
    plan: TopicPlan, cluster: Mapping[str, TopicState], min_replication: int
) -> list[str]:
    problems = []
    for spec in plan.specs:
        state = cluster.get(spec.name)
        if state is not None and state.replication < min_replication:
            problems.append(
                f"{spec.role} topic {spec.name!r} has replication factor "
                f"{state.replication}, below the minimum {min_replication}"
            )
    return problems


def state_partitions(topology: Topology, plan: TopicPlan) -> dict[str, int]:
    """For each input topic of a stateful sub-topology, the partition count its
    stores' changelogs have (once the plan's topics exist and validate): a
    partition at or beyond it has no state partition and must not be run."""
    return {
        sub.topic: plan.counts[sub.index] for sub in _stateful(topology) if sub.index in plan.counts
    }


def source_expanded(topic: str, partition: int, count: int) -> str:
    """The message when ``topic[partition]`` is assigned although the state of
    ``topic`` has ``count`` partitions."""
    return (
        f"partition {partition} of {topic!r} was assigned, but the state of its "
        f"stores was built with {count} partitions: the topic's partition count "
        f"changed under the app (CreatePartitions), so keys now hash to other "
        f"partitions than their state. The worker stops rather than corrupt it; "
        f"see keyshift topics validate"
    )
