"""Planned rebalances: running workers commit ahead of a join, and stopping
workers go on processing while they wait to leave (pure unit tests: the real
worker loop with stand-in Kafka clients, real tasks, tables and memory state)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Message, TopicPartition
from test_worker_close import _add_task, _Consumer, _msgs, _Producer

from keyshift.app.app import App
from keyshift.app.group_gate import Checkpoints, CheckpointWatch, GroupGate
from keyshift.app.worker import Worker
from keyshift.state.memory.store import MemoryPartition

pytestmark = pytest.mark.unit


def test_checkpoint_requests_are_numbered_and_answered_per_instance(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "gates")
    assert checkpoints.latest() == 0
    assert checkpoints.request(["w0"]) == 1
    assert checkpoints.request(["w0", "w1"]) == 2
    assert checkpoints.read() == (2, frozenset({"w0", "w1"}))
    assert not checkpoints.is_done(2, "w0")
    checkpoints.done(2, "w0")
    assert checkpoints.is_done(2, "w0") and not checkpoints.is_done(2, "w1")
    checkpoints.forget(2, ["w0", "w1"])
    assert sorted(p.name for p in (tmp_path / "gates").iterdir()) == ["checkpoint"]


def test_a_watch_reports_each_new_request_to_it_once(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path)
    checkpoints.request(["w0"])  # made before the worker ran: not for it
    watch = CheckpointWatch(checkpoints, "w0")
    assert watch.new_request() is None
    assert checkpoints.request(["w0", "w1"]) == 2
    assert watch.new_request() == 2
    assert watch.new_request() is None
    # Not asked (e.g. it is being stopped, and may see the request before its
    # stop signal): it does not answer.
    assert checkpoints.request(["w1"]) == 3
    assert watch.new_request() is None


class _FeedingConsumer(_Consumer):
    """Hands the worker loop one prepared batch per call (``[]`` when out), and runs
    ``on_call[n]`` when the loop asks for the n-th time."""

    def __init__(self, batches: list[list[Message]], on_call: dict[int, object]) -> None:
        super().__init__()
        self.batches = batches
        self.on_call = on_call
        self.asked = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.asked += 1
        action = self.on_call.get(self.asked)
        if callable(action):
            action()
        return self.batches.pop(0) if self.batches else []


def _gated_worker(tmp_path: Path) -> tuple[Worker, MemoryPartition, GroupGate]:
    app = App("app", brokers="b:1", state="memory://", guarantee="at_least_once",
              commit_interval_ms=60_000)
    app.stream("words").count(store="counts").to("totals")
    gate = GroupGate(tmp_path / "gates" / "gate-1")
    worker = app.worker(group_gate=gate)
    worker._producer = _Producer()  # type: ignore[assignment]
    _, backend = _add_task(worker, 0)
    worker._running = True
    worker._stall_s = 60.0  # start() sets it from the session timeout
    return worker, backend, gate


def _count(backend: MemoryPartition, word: str) -> int | None:
    raw = backend.get_many([word.encode()])[0]
    return None if raw is None else int(raw)


def test_a_stopping_worker_processes_while_it_waits_to_leave_and_commits_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    worker, backend, gate = _gated_worker(tmp_path)
    seen: dict[str, object] = {}

    def while_waiting() -> None:
        # The first batch was committed before the worker reported it is leaving.
        seen["leaving"] = gate.is_leaving(worker.instance)
        seen["committed"] = _count(backend, "a")

    def let_leave() -> None:
        gate.let_leave(worker.instance)

    consumer = _FeedingConsumer(
        [_msgs(0, ["a", "a"]), _msgs(2, ["a", "b"]), _msgs(4, ["a"])],
        {1: worker.stop, 3: while_waiting, 5: let_leave},
    )
    worker._consumer = consumer  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="keyshift.worker"):
        worker.loop()
        assert seen == {"leaving": True, "committed": 2}
        assert worker.tasks[("words", 0)].position == 5  # processed while waiting
        worker.close()
    # close() committed what was processed while waiting, and did not wait again.
    assert _count(backend, "a") == 4 and _count(backend, "b") == 1
    assert [r.message for r in caplog.records].count(
        "leaving the group with the others stopped with it") == 1
    assert consumer.calls[-1] == "close"


def test_a_running_worker_commits_when_the_supervisor_asks_and_says_so(tmp_path: Path) -> None:
    worker, backend, gate = _gated_worker(tmp_path)
    checkpoints = gate.checkpoints
    requests: list[int] = []
    seen: dict[str, object] = {}

    def check() -> None:
        seen["done"] = checkpoints.is_done(requests[0], worker.instance)
        seen["a"], seen["b"] = _count(backend, "a"), _count(backend, "b")
        gate.let_leave(worker.instance)
        worker.stop()

    # Call 1 returns the batch; calls 2-3 (one idle turn) make the request; the
    # next turn sees it and commits before call 4.
    consumer = _FeedingConsumer(
        [_msgs(0, ["a", "a", "b"])],
        {2: lambda: requests.append(checkpoints.request([worker.instance])), 4: check},
    )
    worker._consumer = consumer  # type: ignore[assignment]
    worker.loop()
    # Committed at the request, long before the 60 s commit interval.
    assert requests == [1]
    assert seen == {"done": True, "a": 2, "b": 1}


def test_partitions_given_to_a_closing_worker_are_passed_on_untouched(tmp_path: Path) -> None:
    worker, _, _ = _gated_worker(tmp_path)
    assigned: list[list[TopicPartition]] = []

    class Closing(_Consumer):
        def incremental_assign(self, partitions: list[TopicPartition]) -> None:
            assigned.append(partitions)

    worker._closing = True
    given = [TopicPartition("words", 3), TopicPartition("words", 4)]
    worker._on_assign(Closing(), given)  # type: ignore[arg-type]
    # No restore (it would claim and fence the state, and publish this instance
    # as its location): the partitions are assigned as they are and left again.
    assert assigned == [given]
    assert set(worker.tasks) == {("words", 0)}
