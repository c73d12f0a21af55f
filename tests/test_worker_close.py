"""Worker commit and close under faults: aborted transactions, failed or stuck
closes (pure unit tests: stand-in Kafka clients, real tasks, tables, memory state)."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from keyshift.app import worker as worker_module
from keyshift.app.app import App
from keyshift.app.task import Task
from keyshift.app.worker import MAX_ABORTS_IN_ROW, Worker
from keyshift.errors import BrokerError, TransactionAbortable
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit


class _Consumer:
    """Records what the worker asks of its consumer."""

    def __init__(self, close_blocks: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.seeks: list[tuple[str, int, int]] = []
        self._close_blocks = close_blocks

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, **kwargs: Any) -> None:
        self.calls.append("commit")

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("unassign")

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, 100

    def close(self) -> None:
        self.calls.append("close")
        if self._close_blocks is not None:
            self._close_blocks.wait(30)


class _Producer:
    """A transactional producer whose offset commit fails with ``error`` (if any)."""

    def __init__(self, error: KafkaError | None = None) -> None:
        self.calls: list[str] = []
        self.produced: list[tuple[str, bytes | None, bytes | None]] = []
        self.error = error
        self.pending: list[tuple[Any, Message]] = []  # delivery reports not yet served
        self._purged = False
        self.refuse: KafkaError | None = None  # produce() raises this while set

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                **kwargs: Any) -> None:
        if self.refuse is not None:
            raise KafkaException(self.refuse)
        self.produced.append((topic, key, value))
        on_delivery = kwargs.get("on_delivery")
        if on_delivery is not None:
            self.pending.append((on_delivery, Message(
                topic=topic, partition=kwargs.get("partition", 0), offset=len(self.produced))))

    def _serve(self, err: KafkaError | None) -> None:
        pending, self.pending = self.pending, []
        for on_delivery, msg in pending:
            on_delivery(err, msg)

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("send_offsets")
        if self.error is not None:
            raise KafkaException(self.error)

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        self._serve(None)

    def abort_transaction(self, timeout: float) -> None:
        """Like librdkafka: records not yet sent are purged, and their delivery
        reports wait for the next poll."""
        self.calls.append("abort")
        self._purged = True

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def poll(self, timeout: float) -> int:
        if self._purged:
            self._purged = False
            self._serve(KafkaError(KafkaError._PURGE_QUEUE, "Purged in queue"))
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        self.poll(0)
        self._serve(None)
        return 0


def _rebalancing(abortable: bool = True) -> KafkaError:
    return KafkaError(KafkaError.ILLEGAL_GENERATION, "group rebalancing",
                      txn_requires_abort=abortable)


def _msgs(start: int, words: list[str], partition: int = 0) -> list[Message]:
    return [Message(topic="words", partition=partition, offset=start + i, key=w.encode(),
                    value=orjson.dumps(w), timestamp=(1, 0)) for i, w in enumerate(words)]


def _setup(guarantee: str = "exactly_once", error: KafkaError | None = None,
           close_blocks: threading.Event | None = None
           ) -> tuple[Worker, Task, MemoryPartition, _Consumer, _Producer]:
    app = App("app", brokers="b:1", state="memory://", guarantee=guarantee)
    app.stream("words").count(store="counts").to("totals")
    worker = app.worker()
    consumer, producer = _Consumer(close_blocks), _Producer(error)
    worker._consumer, worker._producer = consumer, producer  # type: ignore[assignment]
    task, backend = _add_task(worker, 0)
    return worker, task, backend, consumer, producer


def _add_task(worker: Worker, partition: int) -> tuple[Task, MemoryPartition]:
    """A task of ``words[partition]`` with its own memory state."""
    backend = MemoryPartition()
    table = Table(backend)
    table.adopt(None, backend.claim("me"))
    sub = worker.topology.by_topic()["words"]
    task = Task(sub, partition, {"counts": table}, worker._produce, worker._dead_letter)
    worker.tasks[("words", partition)] = task
    return task, backend


def _totals(producer: _Producer) -> list[tuple[str, int]]:
    return [(k.decode(), orjson.loads(v)) for t, k, v in producer.produced
            if t == "totals" and k is not None and v is not None]


def test_a_rejected_transaction_is_aborted_and_its_tasks_rewound() -> None:
    worker, task, backend, consumer, producer = _setup()
    task.process(_msgs(10, ["a", "b", "a"]))
    worker.commit()  # succeeds: a=2, b=1 committed up to offset 13
    assert backend.data == {b"a": b"2", b"b": b"1"}
    producer.error = _rebalancing()
    task.process(_msgs(13, ["a", "c"]))
    worker.commit()  # rejected: aborted, rewound to 13, nothing raised
    assert producer.calls[-3:] == ["send_offsets", "abort", "begin"]
    assert consumer.seeks == [("words", 0, 13)]
    assert task.position == 13 and not task.has_progress()
    assert backend.data == {b"a": b"2", b"b": b"1"}  # the aborted changes never landed
    assert worker.metrics.aborted_transactions == 1
    # Messages fetched before the rewind are skipped until the rewound input arrives.
    producer.produced.clear()
    task.process(_msgs(15, ["z"]))
    assert task.position == 13 and _totals(producer) == []
    producer.error = None
    task.process(_msgs(13, ["a", "c", "z"]))
    assert _totals(producer) == [("a", 3), ("c", 1), ("z", 1)]  # counted once, from Redis
    worker.commit()
    assert backend.data == {b"a": b"3", b"b": b"1", b"c": b"1", b"z": b"1"}
    assert task.committed_position == 16


def test_after_the_batch_of_the_rewind_all_input_is_fresh() -> None:
    """The client drops messages fetched before a seek; only the batch being
    fetched when the rewind happened can hold stale ones. Once the worker has
    moved on, a message beyond the old position (the rewound range is gone, say
    by retention) is processed, not skipped forever."""
    worker, task, _, _, producer = _setup(error=_rebalancing())
    task.process(_msgs(10, ["a", "b"]))
    worker.commit()
    assert worker._rewound == [task]
    task.fresh_input()
    producer.produced.clear()
    task.process(_msgs(12, ["c"]))
    assert _totals(producer) == [("c", 1)] and task.position == 13


def _failed_state() -> KafkaError:
    return KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state")


def test_a_transaction_failing_mid_batch_is_aborted_not_dead_lettered() -> None:
    """The producer refuses records once the open transaction has failed: that
    is no fault of the record, so the batch is cut short, the transaction
    aborted and the task, even one that never finished a batch, rewound."""
    worker, task, backend, consumer, producer = _setup()
    producer.refuse = _failed_state()
    with pytest.raises(TransactionAbortable):
        task.process(_msgs(42, ["a", "b"]))
    assert worker.metrics.dead_letters == 0 and task.mid_batch
    worker._abort("cannot produce")
    assert producer.calls[-2:] == ["abort", "begin"]
    assert consumer.seeks == [("words", 0, 42)] and not task.mid_batch
    producer.refuse = None
    task.process(_msgs(42, ["a", "b"]))
    worker.commit()
    assert backend.data == {b"a": b"1", b"b": b"1"}  # the cut batch left nothing behind


def test_a_transaction_failing_while_the_commit_writes_the_changelog_is_aborted() -> None:
    worker, task, backend, consumer, producer = _setup()
    task.process(_msgs(7, ["a"]))
    producer.refuse = _failed_state()
    worker.commit()
    assert "send_offsets" not in producer.calls and producer.calls[-2:] == ["abort", "begin"]
    assert consumer.seeks == [("words", 0, 7)] and backend.data == {}


def test_at_least_once_produce_errors_still_raise() -> None:
    worker, task, _, _, producer = _setup("at_least_once")
    producer.refuse = _failed_state()
    with pytest.raises(KafkaException):
        task.process(_msgs(0, ["a"]))


def test_a_task_with_nothing_committed_rewinds_to_its_first_offset() -> None:
    worker, task, _, consumer, producer = _setup(error=_rebalancing())
    task.process(_msgs(42, ["a", "b"]))
    worker.commit()
    assert consumer.seeks == [("words", 0, 42)]
    assert task.position is None


def test_too_many_aborts_in_a_row_give_up() -> None:
    worker, task, _, _, _ = _setup(error=_rebalancing())
    for _ in range(MAX_ABORTS_IN_ROW):
        task.process(_msgs(0, ["a"]))
        worker.commit()
    task.process(_msgs(0, ["a"]))
    with pytest.raises(BrokerError, match="in a row"):
        worker.commit()


def test_revoked_tasks_are_not_rewound_but_dropped() -> None:
    worker, task, _, consumer, _ = _setup(error=_rebalancing())
    task.process(_msgs(0, ["a"]))
    worker._on_revoke(consumer, [TopicPartition("words", 0)])  # type: ignore[arg-type]
    assert consumer.seeks == [] and worker.tasks == {} and worker._rewound == []
    assert consumer.calls == ["unassign"]


def test_lost_partitions_under_exactly_once_abort_and_rewind_the_rest() -> None:
    worker, task, _, consumer, producer = _setup()
    other = MemoryPartition()
    kept = Task(task.sub, 1, {"counts": Table(other)}, worker._produce, worker._dead_letter)
    worker.tasks[("words", 1)] = kept
    task.process(_msgs(5, ["a"]))
    kept.process([Message(topic="words", partition=1, offset=7, key=b"k",
                          value=orjson.dumps("k"), timestamp=(1, 0))])
    worker._on_lost(consumer, [TopicPartition("words", 0)])  # type: ignore[arg-type]
    assert producer.calls == ["abort", "begin"]
    assert consumer.seeks == [("words", 1, 7)]
    assert list(worker.tasks) == [("words", 1)] and consumer.calls == ["unassign"]


def test_exactly_once_close_aborts_a_rejected_final_transaction() -> None:
    worker, task, backend, consumer, producer = _setup(error=_rebalancing())
    task.process(_msgs(0, ["a"]))
    worker.close()  # no exception: a graceful stop, not a crash
    assert consumer.calls == ["close"]
    assert producer.calls == ["send_offsets", "abort", "begin", "flush"]
    assert backend.data == {}


def test_a_fatal_final_commit_error_still_raises() -> None:
    worker, task, _, consumer, producer = _setup(error=_rebalancing(abortable=False))
    task.process(_msgs(0, ["a"]))
    with pytest.raises(BrokerError):
        worker.close()
    assert consumer.calls == ["close"]
    assert producer.calls == ["send_offsets", "abort", "flush"]  # close() aborts


def test_at_least_once_commit_errors_still_raise() -> None:
    worker, task, _, _, producer = _setup("at_least_once")
    worker._delivery_errors.append("totals[0]: broker down")
    task.process(_msgs(0, ["a"]))
    with pytest.raises(BrokerError, match="broker down"):
        worker.close()


def test_a_consumer_close_that_hangs_does_not_keep_the_worker(monkeypatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(worker_module, "CLOSE_TIMEOUT_S", 0.2)
    worker, _, _, consumer, producer = _setup(close_blocks=release)
    try:
        with pytest.raises(BrokerError, match="did not close"):
            worker.close()
        assert consumer.calls == ["close"]
        assert producer.calls[-2:] == ["abort", "flush"]  # the rest is released
    finally:
        release.set()


def test_a_slow_batch_is_logged_with_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker, _, _, _, _ = _setup()
    monkeypatch.setattr(worker_module, "SLOW_GROUP_S", 0.0)
    with caplog.at_level("WARNING", logger="keyshift.worker"):
        worker._process(_msgs(0, ["a", "b", "a"]))
    slow = [r for r in caplog.records if r.getMessage() == "slow batch"]
    assert len(slow) == 1
    fields = slow[0].__dict__
    assert fields["task"] == "words[0]" and fields["records"] == 3
    for name in ("seconds", "gc_seconds", "state_read_seconds", "source_read_seconds"):
        assert isinstance(fields[name], float) and fields[name] >= 0, name
    assert worker.metrics.records_in == 3


def test_a_revoked_task_hands_its_cache_to_the_reaper_not_the_garbage_collector() -> None:
    """Dropped tasks sit in reference cycles: left to the garbage collector, their
    caches were freed all at once in a full collection, which stalled a worker
    for 1.6 s mid-migration; freed inside the revocation callback, they delayed
    the unassignment's acknowledgement by 313 ms (both seen in the benchmark)."""
    worker, task, backend, consumer, _ = _setup()
    task.process(_msgs(0, ["a", "b"]))
    table = task.tables["counts"]
    worker._on_revoke(consumer, [TopicPartition("words", 0)])  # type: ignore[arg-type]
    assert consumer.calls[-1] == "unassign"
    assert len(table) == 0 and table.source is None  # the dropped task holds nothing
    assert worker._reaper.pending() == 2  # freed from the loop instead
    assert ("words", 0) not in worker.tasks
    assert backend.data == {b"a": b"1", b"b": b"1"}  # committed before it was dropped
    worker._reaper.reap()
    assert worker._reaper.pending() == 0


def test_a_revocation_commits_only_the_revoked_tasks_under_at_least_once() -> None:
    """The revoked tasks' pause runs until the unassignment, so the others'
    progress waits for the next regular commit."""
    worker, task, backend, consumer, _ = _setup(guarantee="at_least_once")
    staying, staying_backend = _add_task(worker, 1)
    task.process(_msgs(0, ["a"]))
    staying.process(_msgs(0, ["b"], partition=1))
    worker._on_revoke(consumer, [TopicPartition("words", 0)])  # type: ignore[arg-type]
    assert backend.data == {b"a": b"1"} and backend.stamp is not None
    assert staying_backend.data == {} and staying.has_progress()
    worker.commit()
    assert staying_backend.data == {b"b": b"1"} and not staying.has_progress()


def test_a_revocation_commits_every_task_under_exactly_once() -> None:
    worker, task, backend, consumer, _ = _setup(guarantee="exactly_once")
    staying, staying_backend = _add_task(worker, 1)
    task.process(_msgs(0, ["a"]))
    staying.process(_msgs(0, ["b"], partition=1))
    worker._on_revoke(consumer, [TopicPartition("words", 0)])  # type: ignore[arg-type]
    assert backend.data == {b"a": b"1"}
    assert staying_backend.data == {b"b": b"1"} and not staying.has_progress()
