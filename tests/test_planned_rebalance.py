"""Planned rebalances: running workers commit ahead of a join, and stopping
workers go on processing while they wait to leave (pure unit tests: the real
worker loop with stand-in Kafka clients, real tasks, tables and memory state)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message, TopicPartition
from test_worker_close import _add_task, _Consumer, _msgs, _Producer

from keyshift.app.app import App
from keyshift.app.group_gate import Checkpoints, CheckpointWatch, GroupGate
from keyshift.migrations.events import MigrationEvent, now_ms
from keyshift.migrations.restore import Restored
from keyshift.runtime.worker import LEAVING_BATCH, RESUME_FIRST_S, Worker
from keyshift.state.memory.store import MemoryPartition

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _thawed_heap() -> Iterator[None]:
    """Workers freeze the heap ahead of a rebalance: leave pytest's as it was."""
    yield
    gc.unfreeze()


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

    def __init__(self, batches: list[list[Message]], on_call: dict[int, object],
                 call_s: float = 0.0) -> None:
        super().__init__()
        self.call_s = call_s
        self.batches = batches
        self.on_call = on_call
        self.asked = 0
        self.sizes: list[int] = []  # num_messages of each call

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.asked += 1
        self.sizes.append(num_messages)
        time.sleep(self.call_s)
        action = self.on_call.get(self.asked)
        if callable(action):
            action()
        return self.batches.pop(0) if self.batches else []


def _gated_worker(
    tmp_path: Path, commit_interval_ms: int = 60_000,
) -> tuple[Worker, MemoryPartition, GroupGate]:
    app = App("app", brokers="b:1", state="memory://", guarantee="at_least_once",
              commit_interval_ms=commit_interval_ms)
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

    class Restorer:
        warmed = 0

        def warm_up(self) -> int:
            # Connections to the Redis servers of the partitions it may be given.
            Restorer.warmed += 1
            seen["warmed_before_done"] = not checkpoints.is_done(1, worker.instance)
            return 0

    worker._restorer = Restorer()  # type: ignore[assignment]
    worker.loop()
    # Committed at the request, long before the 60 s commit interval.
    assert requests == [1]
    assert seen == {"done": True, "a": 2, "b": 1, "warmed_before_done": True}
    assert Restorer.warmed == 1


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


@pytest.mark.parametrize("ended_by", ["callback", "deadline"])
def test_after_a_checkpoint_the_worker_takes_small_batches_and_defers_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ended_by: str,
) -> None:
    """Between a checkpoint and the rebalance it announces, a rebalance callback
    waits for at most one small batch, and never for a regular commit."""
    monkeypatch.setattr("keyshift.runtime.worker.PREPARED_GRACE_S", 0.0)
    if ended_by == "deadline":
        monkeypatch.setattr("keyshift.runtime.worker.PREPARED_S", 0.3)
    worker, _, gate = _gated_worker(tmp_path, commit_interval_ms=1)
    checkpoints = gate.checkpoints
    seen: dict[str, int] = {}

    def request() -> None:
        seen["before"] = worker.metrics.commits
        checkpoints.request([worker.instance])

    def window_ends() -> None:
        seen["in_window"] = worker.metrics.commits
        seen["frozen_in_window"] = gc.get_freeze_count()
        seen["window_calls"] = len(consumer.sizes)
        if ended_by == "callback":
            worker._rebalanced(time.monotonic())  # what both callbacks call
        else:
            time.sleep(0.35)

    def finish() -> None:
        seen["after"] = worker.metrics.commits
        seen["frozen_after"] = gc.get_freeze_count()
        gate.let_leave(worker.instance)
        worker.stop()

    batches = [_msgs(i, ["a"]) for i in range(20)]
    consumer = _FeedingConsumer(batches, {3: request, 12: window_ends, 18: finish},
                                call_s=0.005)
    worker._consumer = consumer  # type: ignore[assignment]
    worker.loop()
    # Regular commits (every 1 ms here) before the request and after the window;
    # inside it only the checkpoint's own commit, however long the turns took.
    assert seen["in_window"] == seen["before"] + 1
    assert seen["after"] > seen["in_window"]
    # The heap was frozen for the window (no full collection scans the caches
    # during the moves), and thawed after it.
    assert seen["frozen_in_window"] > 0 and seen["frozen_after"] == 0
    # One call per turn (each returns a batch): the request came during call 3,
    # the next turn saw it; calls 4-12 ran in the window, calls 13-18 after it
    # (later ones while leaving, which takes small batches too).
    sizes = consumer.sizes
    assert set(sizes[:3]) == {5000}
    assert set(sizes[3:seen["window_calls"]]) == {LEAVING_BATCH}
    assert set(sizes[seen["window_calls"]:18]) == {5000}


class _Copy:
    """A progressive copy that never ends; counts its steps."""

    def __init__(self) -> None:
        self.done = False
        self.steps = 0

    def step(self) -> bool:
        self.steps += 1
        return False


def _moved_here(worker: Worker, partition: int, assigned_ms: int) -> tuple[MigrationEvent, _Copy]:
    """Mark ``words[partition]`` as just migrated to ``worker`` by a progressive copy."""
    event = MigrationEvent(app="app", store="counts", partition=partition,
                           strategy="progressive", reason="test", from_instance="old",
                           from_url="redis://old", to_instance=worker.instance,
                           to_url="memory://", assigned_ms=assigned_ms)
    copy = _Copy()
    restored = Restored(table=None, event=event, copy=copy)  # type: ignore[arg-type]
    worker._restored.setdefault(("words", partition), []).append(restored)
    return event, copy


def test_background_copies_wait_until_the_new_task_has_processed_a_record(
    tmp_path: Path,
) -> None:
    """A copy turn taken before a moved task's first record would add to its pause."""
    worker, _, gate = _gated_worker(tmp_path)
    (tmp_path / "gates").mkdir()
    event, copy = _moved_here(worker, 0, now_ms())
    worker._restorer = object()  # type: ignore[assignment]  # (copy_finished not reached)
    worker._events = object()  # type: ignore[assignment]  # (nothing is emitted)
    seen: dict[str, int] = {}

    def before_first_record() -> None:
        seen["idle_steps"] = copy.steps

    def finish() -> None:
        seen["steps"] = copy.steps
        gate.let_leave(worker.instance)
        worker.stop()

    batches: list[list[Message]] = [[] for _ in range(6)] + [_msgs(0, ["a"])]
    consumer = _FeedingConsumer(batches, {6: before_first_record, 12: finish})
    worker._consumer = consumer  # type: ignore[assignment]
    worker.loop()
    assert seen["idle_steps"] == 0  # six idle calls: the copy waited
    assert event.first_record_ms is not None
    assert seen["steps"] > 0  # and went on once the record was processed


def test_a_task_that_gets_no_record_holds_up_copies_only_for_a_while(tmp_path: Path) -> None:
    worker, _, _ = _gated_worker(tmp_path)
    fresh, _ = _moved_here(worker, 1, now_ms())
    assert worker._resuming()
    fresh.record_first(now_ms())
    assert not worker._resuming()
    _moved_here(worker, 2, now_ms() - int(RESUME_FIRST_S * 1000) - 100)  # idle too long
    assert not worker._resuming()


def test_a_stopping_worker_does_not_commit_while_it_waits_to_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The others stopped in the step leave the moment they may; a commit under
    way then would make this worker lag behind them (and be given some of their
    partitions, which then move twice). close() commits."""
    worker, _, gate = _gated_worker(tmp_path, commit_interval_ms=1)  # due every turn
    seen: dict[str, int] = {}

    def reported() -> None:
        seen["reported"] = worker.metrics.commits

    def let_leave() -> None:
        seen["waited"] = worker.metrics.commits
        gate.let_leave(worker.instance)

    batches = [_msgs(i, ["a"]) for i in range(8)]
    consumer = _FeedingConsumer(batches, {1: worker.stop, 2: reported, 6: let_leave},
                                call_s=0.005)
    worker._consumer = consumer  # type: ignore[assignment]
    worker.loop()
    # Committed when it stopped, not during the four turns it waited, not after.
    assert seen["reported"] >= 1
    assert seen["waited"] == seen["reported"] == worker.metrics.commits
    assert consumer.asked == 6
    assert worker.tasks[("words", 0)].position == 6


def test_each_restored_partition_is_assigned_before_the_next_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its first fetch then overlaps the restores of the others. All restores of
    the assignment are asked for at once, with the assignment's time."""
    worker, _, _ = _gated_worker(tmp_path)
    steps: list[str] = []
    asked: list[object] = []

    class Recording(_Consumer):
        def incremental_assign(self, partitions: list[TopicPartition]) -> None:
            steps.extend(f"assign {tp.partition}@{tp.offset}" for tp in partitions)

    def open_task(topic: str, partition: int, restored: list[object]) -> object:
        assert restored == [f"restored {partition}"]
        task, _ = _add_task(worker, partition)
        task.adopt_upstream([])
        return task

    class Locations:
        def catch_up(self, end: int | None = None) -> None:
            pass

    class Restorer:
        def open_all(self, wanted: list[tuple[str, int, int | None]],
                     assigned_ms: int) -> Iterator[str]:
            asked.append((wanted, assigned_ms))
            for _, partition, _ in wanted:
                steps.append(f"restore {partition}")
                yield f"restored {partition}"

        def flush(self) -> None:
            steps.append("flush")

    monkeypatch.setattr("keyshift.runtime.worker.end_offsets", lambda *a, **k: {
        (worker.topology.locations_topic, 0): 0})
    monkeypatch.setattr(worker, "_open_task", open_task)
    worker._subs = worker.topology.by_topic()  # start() sets it
    worker._admin = object()  # type: ignore[assignment]
    worker._locations = Locations()  # type: ignore[assignment]
    worker._restorer = Restorer()  # type: ignore[assignment]
    before = now_ms()
    worker._on_assign(Recording(), [TopicPartition("words", 3), TopicPartition("words", 4)])
    assert [s.split("@")[0] for s in steps] == [
        "restore 3", "assign 3", "restore 4", "assign 4", "flush"]
    [(wanted, assigned_ms)] = asked  # type: ignore[misc]
    store = worker._subs["words"].stores()[0]
    assert [(s, p) for s, p, _ in wanted] == [(store, 3), (store, 4)]
    assert before <= assigned_ms <= now_ms()
