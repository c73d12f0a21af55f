"""What ``keyshift topics plan`` and ``apply`` print: a plan as text lines or as
a JSON document, and the changes ``apply`` makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyshift.runtime.topic_plan import TopicDiff, TopicPlan, TopicSpec, TopicState


def _count(partitions: int) -> str:
    return f"{partitions} partition" + ("" if partitions == 1 else "s")


def _replication(spec: TopicSpec) -> str:
    return "broker default" if spec.replication < 0 else str(spec.replication)


def _configs(config: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _wanted(spec: TopicSpec) -> str:
    text = f"{_count(spec.partitions)}, replication {_replication(spec)}"
    return f"{text}, {_configs(spec.config)}" if spec.config else text


def change_lines(diff: TopicDiff, create: str, alter: str) -> list[str]:
    """One line per topic to create and per config to set, each after its verb."""
    lines = [f"{create} {s.name} ({s.role}): {_wanted(s)}" for s in diff.create]
    lines += [f"{alter} {c.topic}: {c.key} {c.current} -> {c.wanted}" for c in diff.alter]
    return lines


def render_plan(
    app_ref: str,
    app_id: str,
    plan: TopicPlan,
    cluster: Mapping[str, TopicState],
    diff: TopicDiff,
) -> list[str]:
    """Every topic (what keyshift wants; what exists), the changes, the problems."""
    lines = [f"app {app_id}: {len(plan.specs) + len(plan.missing_sources)} topics"]
    lines += [
        f"  {'source':<11} {name}: missing (keyshift never creates a source; the topics "
        "fed by it are planned once it exists)"
        for name in plan.missing_sources
    ]
    created = {s.name for s in diff.create}
    for spec in plan.specs:
        state = cluster.get(spec.name)
        if state is None:
            where = "missing: to create" if spec.name in created else "missing"
        else:
            where = f"exists ({_count(state.partitions)}, replication {state.replication})"
        wanted = f"{_wanted(spec)}; " if spec.managed else ""
        lines.append(f"  {spec.role:<11} {spec.name}: {wanted}{where}")
    if diff.changes:
        lines.append(f"changes (keyshift topics apply {app_ref}):")
        lines += change_lines(diff, "  + create", "  ~ alter")
    lines += [f"problem: {problem}" for problem in diff.problems]
    if diff.in_sync:
        lines.append("in sync: nothing to change")
    return lines


def plan_document(
    app_id: str, plan: TopicPlan, cluster: Mapping[str, TopicState], diff: TopicDiff
) -> dict[str, Any]:
    """The plan as JSON for pipelines: every topic with what exists of it (the
    configs keyshift sets, as the cluster has them), and the diff."""
    topics = []
    for spec in plan.specs:
        state = cluster.get(spec.name)
        current = None
        if state is not None:
            current = {
                "partitions": state.partitions,
                "replication_factor": state.replication,
                "config": {k: state.config.get(k) for k in sorted(spec.config)},
            }
        topics.append({**spec.to_dict(), "exists": state is not None, "current": current})
    return {
        "app": app_id,
        "topics": topics,
        "missing_sources": list(plan.missing_sources),
        **diff.to_dict(),
    }
