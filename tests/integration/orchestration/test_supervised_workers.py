"""Workers under the local supervisor (`keyshift run`): one killed with kill -9
mid-stream is restarted, and the outputs are exact."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from kafkautil import (
    assert_strictly_increasing,
    children,
    committed,
    control,
    converged,
    create_topic,
    expected_counts,
    group_holds,
    keyshift_cmd,
    produce_json,
    sentences,
    spawn,
    stop,
    wait_for,
    write_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize(
    ("guarantee", "protocol"),
    [("at_least_once", "classic"), ("exactly_once", "classic"), ("exactly_once", "consumer")],
)
def test_kill9_worker_mid_stream(guarantee, protocol, brokers, admin, unique, tmp_path: Path):
    """Exact counts after a kill -9, also under KIP-848 (where the dead member's
    partitions move once the group session timeout keyshift set has passed)."""
    app_id, source, sink = unique("crash"), unique("sentences"), unique("counts")
    create_topic(admin, source, 6)
    data = sentences(20000)
    ref = write_app(tmp_path, "crashapp", app_id, source, sink, guarantee, group_protocol=protocol)
    log = tmp_path / "run.log"
    sup = spawn(keyshift_cmd("run", ref, "--instances", "2"), tmp_path, log)
    producer = threading.Thread(
        target=produce_json, args=(brokers, source, data), kwargs={"rate": 2500}
    )
    repartition = f"{app_id}--keyby-1-repartition"
    try:
        assert wait_for(lambda: len(children(sup.pid)) == 2, 30)
        # Both workers are in the group, every partition held.
        assert wait_for(lambda: group_holds(admin, app_id, [source, repartition], 2), 60), (
            log.read_text()[-4000:]
        )
        producer.start()
        # Mid-stream: about a third of the input is processed and committed.
        assert wait_for(lambda: committed(admin, app_id, source) >= len(data) // 3, 60), (
            log.read_text()[-4000:]
        )
        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        producer.join()
        expected = expected_counts(data)
        assert wait_for(lambda: converged(brokers, sink, expected), 150), log.read_text()[-4000:]
        # The supervisor replaced the killed worker.
        assert wait_for(lambda: len(children(sup.pid)) == 2, 30)
        assert victim not in children(sup.pid)
    finally:
        assert stop(sup, 90) == 0
    # Three processes joined: the two started first, and the one restarted in
    # the killed one's slot (same instance, a new incarnation).
    joins = [m for m in control(brokers, app_id) if m["kind"] == "join"]
    incarnations = {(m["instance"], m["incarnation"]) for m in joins}
    assert len(incarnations) == 3, joins
    assert len({instance for instance, _ in incarnations}) == 2, joins
    if guarantee == "exactly_once":
        assert_strictly_increasing(brokers, sink)
