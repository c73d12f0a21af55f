"""What ``keyshift topics plan`` prints, as text and as JSON."""

from __future__ import annotations

import pytest

from keyshift import App
from keyshift.cli.topic_report import change_lines, plan_document, render_plan
from keyshift.runtime.topic_plan import TopicState, diff_topics, plan_topics

pytestmark = pytest.mark.unit


def survey() -> tuple[App, dict[str, TopicState]]:
    app = App("app", brokers="fake:1", state="memory://")
    app.stream("in").count(store="c").to("out")
    cluster = {
        "in": TopicState("in", 3, 1),
        "out": TopicState("out", 6, 1),
        "app--c-changelog": TopicState("app--c-changelog", 3, 1, {"cleanup.policy": "delete"}),
    }
    return app, cluster


def test_the_text_lists_every_topic_then_the_changes_and_problems() -> None:
    app, cluster = survey()
    cluster["app--control"] = TopicState("app--control", 2, 1, {"cleanup.policy": "delete"})
    plan = plan_topics(app.topology, {n: t.partitions for n, t in cluster.items()})
    lines = render_plan("pkg.mod:app", "app", plan, cluster, diff_topics(plan, cluster))
    assert lines[0] == "app app: 8 topics"
    assert "  source      in: exists (3 partitions, replication 1)" in lines
    assert (
        "  sink        out: 3 partitions, replication broker default; exists (6 partitions, "
        "replication 1)" in lines
    )
    assert (
        "  changelog   app--c-changelog: 3 partitions, replication broker default, "
        "cleanup.policy=compact; exists (3 partitions, replication 1)" in lines
    )
    assert (
        "  events      app--events: 1 partition, replication broker default; missing: to create"
        in lines
    )
    start = lines.index("changes (keyshift topics apply pkg.mod:app):")
    assert lines[start + 1 :] == [
        "  + create app--state-locations (locations): 1 partition, replication broker "
        "default, cleanup.policy=compact",
        "  + create app--events (events): 1 partition, replication broker default",
        "  + create app--dlq (dlq): 1 partition, replication broker default",
        "  + create app--rates (rates): 1 partition, replication broker default, "
        "cleanup.policy=delete, retention.ms=3600000",
        "  ~ alter app--c-changelog: cleanup.policy delete -> compact",
        "  ~ alter app--control: retention.ms None -> 3600000",
        "problem: control topic 'app--control' has 2 partitions, expected 1; keyshift never "
        "changes a partition count (see keyshift topics validate)",
    ]


def test_a_missing_source_is_listed_and_an_in_sync_plan_says_so() -> None:
    app, _ = survey()
    plan = plan_topics(app.topology, {})
    lines = render_plan("m:app", "app", plan, {}, diff_topics(plan, {}))
    assert lines[1].startswith("  source      in: missing (keyshift never creates a source")
    plan = plan_topics(app.topology, {"in": 3})
    in_sync = {s.name: TopicState(s.name, s.partitions, 1, s.config) for s in plan.specs}
    assert render_plan("m:app", "app", plan, in_sync, diff_topics(plan, in_sync))[-1] == (
        "in sync: nothing to change"
    )


def test_the_json_document_has_each_topic_with_what_exists_and_the_diff() -> None:
    app, cluster = survey()
    plan = plan_topics(app.topology, {n: t.partitions for n, t in cluster.items()})
    diff = diff_topics(plan, cluster)
    document = plan_document("app", plan, cluster, diff)
    assert document["app"] == "app" and document["missing_sources"] == []
    assert document["in_sync"] is False and document["problems"] == []
    topics = {t["name"]: t for t in document["topics"]}
    assert topics["app--c-changelog"] == {
        "name": "app--c-changelog",
        "role": "changelog",
        "managed": True,
        "partitions": 3,
        "replication_factor": -1,
        "config": {"cleanup.policy": "compact"},
        "exists": True,
        "current": {
            "partitions": 3,
            "replication_factor": 1,
            "config": {"cleanup.policy": "delete"},
        },
    }
    assert topics["app--dlq"]["exists"] is False and topics["app--dlq"]["current"] is None
    assert [c["name"] for c in document["create"]] == [
        "app--state-locations",
        "app--events",
        "app--dlq",
        "app--control",
        "app--rates",
    ]
    assert document["alter"] == [
        {
            "topic": "app--c-changelog",
            "config": "cleanup.policy",
            "current": "delete",
            "wanted": "compact",
        }
    ]
    assert change_lines(diff, "would create", "would alter")[-1] == (
        "would alter app--c-changelog: cleanup.policy delete -> compact"
    )
