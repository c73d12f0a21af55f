"""Worker commit and close under faults, on the in-memory cluster: rejected and
failed transactions, revoked and lost partitions, failed or stuck closes.

Most tests run whole workers and check what reached the cluster. A few drive a
:class:`~keyshift.runtime.committer.Committer` and its
:class:`~keyshift.runtime.tasks.TaskManager` step by step (:class:`Steps`), for
what only shows between two steps of the worker's loop: input fetched before a
rewind, and which consumer positions a rewind moves.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from fakes import FakeAdmin, FakeCluster, FakeConsumer, FakeProducer, WorkerThread, wait_for
from keyshift import App
from keyshift.errors import BrokerError, TransactionAbortable
from keyshift.runtime import lost_revocation, membership
from keyshift.runtime import tasks as tasks_module
from keyshift.runtime.committer import MAX_ABORTS_IN_ROW, Committer
from keyshift.runtime.kafka import consumer_config, producer_config
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.producer import RecordProducer
from keyshift.runtime.task import Task
from keyshift.runtime.tasks import TaskManager
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit

CHANGELOG = "wc--counts-changelog"
DLQ = "wc--dlq"
SEND_OFFSETS = "send_offsets_to_transaction"
#: A commit interval no test lasts: the only commits are those the test causes
#: (a revocation, a stop). Exactly-once needs a transaction timeout beyond it.
NEVER_MS = 600_000


def make_app(guarantee: str = "exactly_once", **settings: object) -> App:
    settings.setdefault("commit_interval_ms", 20)
    if settings["commit_interval_ms"] == NEVER_MS:
        settings["kafka"] = {"transaction.timeout.ms": str(2 * NEVER_MS)}
    app = App("wc", brokers="fake:1", state="memory://one", guarantee=guarantee, **settings)
    app.stream("words").count(store="counts").to("totals")
    return app


def feed(cluster: FakeCluster, words: list[str], partition: int = 0) -> None:
    producer = cluster.clients().producer({})
    for word in words:
        producer.produce("words", orjson.dumps(word), word.encode(), partition=partition)
    producer.flush()


def totals(cluster: FakeCluster, *, committed: bool = True) -> list[tuple[str, int]]:
    """The outputs, as read_committed (or read_uncommitted) readers see them."""
    return [
        (m.key().decode(), orjson.loads(m.value()))
        for m in cluster.records("totals", committed=committed)
    ]


def backend(cluster: FakeCluster, partition: int = 0) -> MemoryPartition:
    return cluster.store("memory://one").partition("wc", "counts", partition)


def counts(cluster: FakeCluster, partition: int = 0) -> dict[str, int]:
    """What the state store holds for counts[partition]."""
    return {k.decode(): int(v) for k, v in backend(cluster, partition).data.items()}


def stamped(cluster: FakeCluster, partition: int = 0) -> int | None:
    """The input offset the store's stamp of counts[partition] covers (written last
    in a commit)."""
    stamp = backend(cluster, partition).read_stamp()
    return None if stamp is None else stamp.input_offset


def offset(cluster: FakeCluster, partition: int = 0) -> int | None:
    """The group's committed offset of words[partition]."""
    return cluster.offsets.get(("wc", "words", partition))


def open_transaction(cluster: FakeCluster, topic: str = "totals") -> bool:
    """Whether a transaction is still open on ``topic`` (its stable end lags)."""
    return any(
        cluster.stable(topic, p) < cluster.high(topic, p) for p in range(cluster.partitions(topic))
    )


def dead_letters(cluster: FakeCluster) -> list[Message]:
    return cluster.records(DLQ) if DLQ in cluster.logs else []


def rebalancing(*, abortable: bool = True) -> KafkaError:
    """The broker's answer to a transaction's offsets while the group rebalances."""
    return KafkaError(
        KafkaError.ILLEGAL_GENERATION, "group rebalancing", txn_requires_abort=abortable
    )


def failed_state() -> KafkaError:
    return KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state")


def main_producer(cluster: FakeCluster) -> FakeProducer:
    """The (one) worker's producer, once it exists."""

    def found() -> list[FakeProducer]:
        return [p for p in cluster.producers if p.config.get("client.id") == "wc-producer"]

    assert wait_for(lambda: len(found()) == 1)
    return found()[0]


def main_consumer(cluster: FakeCluster) -> FakeConsumer:
    """The group consumer of the worker (its client id is ``wc--<instance>``), once it
    exists."""

    def found() -> list[FakeConsumer]:
        return [
            c
            for c in cluster.consumers
            if c.group_id == "wc" and str(c.config.get("client.id")).startswith("wc--")
        ]

    assert wait_for(lambda: len(found()) == 1)
    return found()[0]


def join_group(cluster: FakeCluster) -> FakeConsumer:
    """Another member joins the group: the workers' next fetch revokes what it is
    to get. It takes that only when it consumes (these tests never let it): so no
    instance claims a revoked task's state while its revocation still commits."""
    other = cluster.clients().consumer({"group.id": "wc"})
    other.subscribe(
        ["words"],
        on_assign=lambda c, parts: c.incremental_assign(parts),
        on_revoke=lambda c, parts: c.incremental_unassign(parts),
        on_lost=lambda c, parts: c.incremental_unassign(parts),
    )
    return other


class Steps:
    """A Committer and its TaskManager on fake clients (exactly-once), with a task
    per partition of ``words``, driven step by step as the worker's loop drives
    them."""

    def __init__(self, cluster: FakeCluster, partitions: int = 1) -> None:
        app = make_app()
        settings, topology = app.settings, app.topology
        cluster.create_topic("words", partitions)
        for topic in ("totals", CHANGELOG, DLQ):
            cluster.create_topic(topic, partitions)
        clients = cluster.clients()
        self.metrics = Metrics()
        self.records = RecordProducer(
            producer_config(settings, "wc-steps"),
            metrics=self.metrics,
            dlq_topic=DLQ,
            app_id="wc",
            transactional=True,
            factory=clients.producer,
        )
        self.producer = self.records.producer
        self.producer.init_transactions()
        self.producer.begin_transaction()
        self.consumer = clients.consumer(consumer_config(settings, "stepper"))
        self.consumer.subscribe(
            ["words"],
            on_assign=lambda c, parts: c.incremental_assign(parts),
            on_revoke=lambda c, parts: c.incremental_unassign(parts),
            on_lost=lambda c, parts: c.incremental_unassign(parts),
        )
        self.tasks = TaskManager(
            topology.by_topic(),
            records=self.records,
            metrics=self.metrics,
            pause=self.consumer.pause,
        )
        self.committer = Committer(
            producer=self.producer,
            records=self.records,
            consumer=self.consumer,
            tasks=self.tasks,
            topology=topology,
            settings=settings,
            metrics=self.metrics,
        )
        store = clients.store(settings.state)
        for partition in range(partitions):
            state = store.partition("wc", "counts", partition)
            table = Table(state)
            table.adopt(None, state.claim("steps"))
            self.tasks.open("words", partition, {"counts": table})

    def task(self, partition: int = 0) -> Task:
        task = self.tasks.get(("words", partition))
        assert task is not None
        return task

    def fetch(self) -> list[Message]:
        return self.consumer.consume(100, 0)

    def process(self, msgs: list[Message]) -> None:
        """A batch, then the producer's poll (which sends its outputs), as in the loop."""
        self.tasks.process(msgs, lambda: 0.0)
        self.producer.poll(0)


# -- rejected and failed transactions (exactly-once) -------------------------------------
def test_a_rejected_transaction_is_aborted_and_its_input_processed_again_once() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    feed(cluster, ["a", "b", "a"])
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: stamped(cluster) == 3)
        assert counts(cluster) == {"a": 2, "b": 1}
        cluster.failures[SEND_OFFSETS] = [rebalancing()]
        feed(cluster, ["a", "c"])
        assert wait_for(lambda: stamped(cluster) == 5)
    assert running.error is None  # a rejection is no crash
    assert cluster.failures[SEND_OFFSETS] == []  # the commit was rejected
    assert worker.metrics.aborted_transactions == 1
    # The rejected transaction's outputs are hidden for good; its input was
    # processed again from the last commit and counted once, from the store.
    assert totals(cluster) == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("c", 1)]
    assert totals(cluster, committed=False).count(("a", 3)) == 2
    assert not open_transaction(cluster)
    assert counts(cluster) == {"a": 3, "b": 1, "c": 1}
    assert offset(cluster) == 5


def test_input_fetched_before_a_rewind_is_skipped_until_the_rewound_input_arrives() -> None:
    cluster = FakeCluster()
    steps = Steps(cluster)
    task = steps.task()
    feed(cluster, ["a", "b", "a"])
    steps.process(steps.fetch())
    steps.committer.commit()
    assert counts(cluster) == {"a": 2, "b": 1} and offset(cluster) == 3
    cluster.failures[SEND_OFFSETS] = [rebalancing()]
    feed(cluster, ["a", "c", "z"])
    batch = steps.fetch()
    assert [m.offset() for m in batch] == [3, 4, 5]
    steps.process(batch[:2])
    steps.committer.commit()  # rejected: aborted and rewound, nothing raised
    assert cluster.failures[SEND_OFFSETS] == [] and steps.metrics.aborted_transactions == 1
    assert task.position == 3 and not task.has_progress()
    assert counts(cluster) == {"a": 2, "b": 1} and offset(cluster) == 3  # nothing landed
    assert totals(cluster) == [("a", 1), ("b", 1), ("a", 2)]  # its outputs were aborted
    assert ("a", 3) in totals(cluster, committed=False)
    # The rest of the batch fetched before the rewind is skipped...
    out = steps.metrics.records_out
    steps.process(batch[2:])
    assert task.position == 3 and steps.metrics.records_out == out
    # ...until the rewound input arrives (the consumer was sought back to 3).
    rewound = steps.fetch()
    assert [m.offset() for m in rewound] == [3, 4, 5]
    steps.process(rewound)
    steps.committer.commit()
    assert totals(cluster)[3:] == [("a", 3), ("c", 1), ("z", 1)]  # counted once
    assert counts(cluster) == {"a": 3, "b": 1, "c": 1, "z": 1}
    assert offset(cluster) == 6 and task.committed_position == 6


def test_after_the_batch_of_the_rewind_all_input_is_fresh() -> None:
    """The client drops messages fetched before a seek; only the batch being
    fetched when the rewind happened can hold stale ones. Once the loop has
    moved on (it marks the rewound tasks' input fresh before its next fetch), a
    message beyond the old position (the rewound range is gone, say by
    retention) is processed, not skipped forever."""
    cluster = FakeCluster()
    steps = Steps(cluster)
    cluster.failures[SEND_OFFSETS] = [rebalancing()]
    feed(cluster, ["a", "b", "c"])
    batch = steps.fetch()
    steps.process(batch[:2])
    steps.committer.commit()  # rejected: the task is rewound
    assert steps.committer.rewound == [steps.task()]
    for task in steps.committer.rewound:  # what the loop does before its next fetch
        task.fresh_input()
    steps.committer.rewound.clear()
    out = steps.metrics.records_out
    steps.process(batch[2:])  # offset 2: the position before the rewind
    assert steps.metrics.records_out == out + 1 and steps.task().position == 3
    steps.committer.commit()
    assert totals(cluster) == [("c", 1)]
    assert counts(cluster) == {"c": 1} and offset(cluster) == 3


def test_a_transaction_failing_mid_batch_is_aborted_not_dead_lettered() -> None:
    """The producer refuses records once the open transaction has failed: that
    is no fault of the record, so the batch is cut short, the transaction
    aborted and the task, even one that never finished a batch, rewound."""
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        main_producer(cluster).fail_transaction_on = "totals"
        feed(cluster, ["a", "b"])
        assert wait_for(lambda: stamped(cluster) == 2)
    assert running.error is None
    assert worker.metrics.aborted_transactions == 1
    assert worker.metrics.dead_letters == 0 and dead_letters(cluster) == []
    assert totals(cluster) == [("a", 1), ("b", 1)]
    assert counts(cluster) == {"a": 1, "b": 1}  # the cut batch left nothing behind
    assert offset(cluster) == 2


def test_a_transaction_failing_while_the_commit_writes_the_changelog_is_aborted() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        main_producer(cluster).fail_transaction_on = CHANGELOG
        feed(cluster, ["a"])
        assert wait_for(lambda: stamped(cluster) == 1)
    assert running.error is None
    assert worker.metrics.aborted_transactions == 1
    # The failed commit stopped before sending its offsets; the next one did.
    assert cluster.events[SEND_OFFSETS] == 1
    assert totals(cluster) == [("a", 1)]
    assert totals(cluster, committed=False) == [("a", 1), ("a", 1)]  # first one aborted
    assert counts(cluster) == {"a": 1} and offset(cluster) == 1


def test_at_least_once_produce_errors_still_raise() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app("at_least_once").worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        main_producer(cluster).refuse = failed_state()
        feed(cluster, ["a"])
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, BrokerError)
    assert not isinstance(running.error, TransactionAbortable)  # no transaction to abort
    assert worker.metrics.aborted_transactions == 0
    assert worker.metrics.dead_letters == 0 and dead_letters(cluster) == []
    assert counts(cluster) == {} and offset(cluster) is None


def test_a_task_with_nothing_committed_rewinds_to_its_first_offset() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    feed(cluster, ["a", "b", "c", "d"])
    cluster.offsets[("wc", "words", 0)] = 2  # no state yet: input starts at offset 2
    cluster.failures[SEND_OFFSETS] = [rebalancing()]
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: stamped(cluster) == 4)
    assert running.error is None
    assert cluster.failures[SEND_OFFSETS] == [] and worker.metrics.aborted_transactions == 1
    # Rewound to 2: neither to the partition's start nor nowhere.
    assert totals(cluster) == [("c", 1), ("d", 1)]
    assert totals(cluster, committed=False) == [("c", 1), ("d", 1), ("c", 1), ("d", 1)]
    assert counts(cluster) == {"c": 1, "d": 1} and offset(cluster) == 4


def test_too_many_aborts_in_a_row_give_up() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    feed(cluster, ["a"])
    cluster.failures[SEND_OFFSETS] = [rebalancing()] * (MAX_ABORTS_IN_ROW + 1)
    worker = make_app().worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: running.done)
    assert isinstance(running.error, BrokerError) and "in a row" in str(running.error)
    assert cluster.failures[SEND_OFFSETS] == []  # every commit tried, one more given up
    assert worker.metrics.aborted_transactions == MAX_ABORTS_IN_ROW
    # Each attempt's output was aborted; nothing was committed anywhere.
    assert totals(cluster) == []
    assert totals(cluster, committed=False) == [("a", 1)] * (MAX_ABORTS_IN_ROW + 1)
    assert not open_transaction(cluster)
    assert counts(cluster) == {} and stamped(cluster) is None and offset(cluster) is None


# -- revoked and lost partitions ------------------------------------------------------
def test_revoked_tasks_are_not_rewound_but_dropped() -> None:
    """The transaction committed at a revocation is rejected: the task being
    revoked is dropped with its uncommitted progress, and its next owner
    processes its input again from the last commit."""
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: set(worker.tasks) == {("words", 0), ("words", 1)})
        feed(cluster, ["b"], partition=1)
        assert wait_for(lambda: worker.metrics.records_in == 1)
        cluster.failures[SEND_OFFSETS] = [rebalancing()]
        other = join_group(cluster)  # words[1] goes to it
        assert wait_for(lambda: ("words", 1) not in worker.tasks)
        assert running.error is None and not running.done  # nothing raised
        assert cluster.failures[SEND_OFFSETS] == [] and worker.metrics.aborted_transactions == 1
        assert set(worker.tasks) == {("words", 0)}
        assert counts(cluster, 1) == {} and offset(cluster, 1) is None  # dropped, uncommitted
        assert worker.metrics.records_in == 1  # not processed again here
        other.close()  # it leaves before taking words[1]: the worker is its next owner
        assert wait_for(lambda: worker.metrics.records_in == 2)
    assert running.error is None
    assert totals(cluster) == [("b", 1)]  # once
    assert totals(cluster, committed=False) == [("b", 1), ("b", 1)]  # the first aborted
    assert counts(cluster, 1) == {"b": 1} and offset(cluster, 1) == 1


def test_an_abort_rewinds_the_tasks_that_stay_not_those_leaving() -> None:
    cluster = FakeCluster()
    steps = Steps(cluster, partitions=2)
    feed(cluster, ["a"], partition=0)
    feed(cluster, ["k"], partition=1)
    steps.process(steps.fetch())
    leaving, staying = steps.task(0), steps.task(1)
    steps.committer.abort("partitions lost", leaving={("words", 0)})
    assert steps.committer.rewound == [staying]
    assert not leaving.has_progress() and not staying.has_progress()  # both rolled back
    # Only the staying task's input is fetched again.
    assert [(m.partition(), m.offset()) for m in steps.fetch()] == [(1, 0)]
    assert steps.metrics.aborted_transactions == 1 and totals(cluster) == []


def test_lost_partitions_under_exactly_once_abort_and_rewind_the_rest() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    feed(cluster, ["a"], partition=0)
    feed(cluster, ["k"], partition=1)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.metrics.records_in == 2)
        assert worker.metrics.restores == 2
        main_consumer(cluster).lose([("words", 0)])
        # words[0] is dropped, assigned again and restored; words[1] is rewound:
        # both are processed again.
        assert wait_for(lambda: worker.metrics.records_in == 4)
        assert worker.metrics.aborted_transactions == 1 and worker.metrics.restores == 3
    assert running.error is None
    # The transaction that covered the lost task never committed: every input
    # is counted once.
    assert sorted(totals(cluster)) == [("a", 1), ("k", 1)]
    assert sorted(totals(cluster, committed=False)) == [("a", 1), ("a", 1), ("k", 1), ("k", 1)]
    assert counts(cluster, 0) == {"a": 1} and counts(cluster, 1) == {"k": 1}
    assert offset(cluster, 0) == 1 and offset(cluster, 1) == 1


def test_a_revoked_task_hands_its_cache_to_the_reaper_not_the_garbage_collector() -> None:
    """Dropped tasks sit in reference cycles: left to the garbage collector, their
    caches were freed all at once in a full collection, which stalled a worker
    for 1.6 s mid-migration; freed inside the revocation callback, they delayed
    the unassignment's acknowledgement by 313 ms (both seen in the benchmark)."""
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        feed(cluster, ["a", "b"], partition=1)
        assert wait_for(lambda: worker.metrics.records_in == 2)
        table = worker.tasks[("words", 1)].tables["counts"]
        assert len(table) == 2
        join_group(cluster)
        assert wait_for(lambda: ("words", 1) not in worker.tasks)
        assert len(table) == 0 and table.source is None  # the dropped task holds nothing
        assert counts(cluster, 1) == {"a": 1, "b": 1}  # committed before it was dropped
        assert offset(cluster, 1) == 2
    assert running.error is None


def test_a_dropped_tasks_cache_is_freed_by_the_reaper_a_slice_at_a_time() -> None:
    cluster = FakeCluster()
    steps = Steps(cluster)
    feed(cluster, ["a", "b"])
    steps.process(steps.fetch())
    table = steps.task().tables["counts"]
    assert len(table) == 2
    steps.tasks.unassigned([TopicPartition("words", 0)])
    assert steps.tasks.get(("words", 0)) is None
    assert len(table) == 0 and table.source is None
    assert steps.tasks.reaper.pending() == 2  # freed from the loop instead
    steps.tasks.reaper.reap()
    assert steps.tasks.reaper.pending() == 0


def test_a_revocation_commits_only_the_revoked_tasks_under_at_least_once() -> None:
    """The revoked tasks' pause runs until the unassignment, so the others'
    progress waits for the next regular commit."""
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    worker = make_app("at_least_once", commit_interval_ms=NEVER_MS).worker(
        clients=cluster.clients()
    )
    with WorkerThread(worker) as running:
        feed(cluster, ["a"], partition=0)
        feed(cluster, ["b"], partition=1)
        assert wait_for(lambda: worker.metrics.records_in == 2)
        join_group(cluster)
        assert wait_for(lambda: ("words", 1) not in worker.tasks)
        assert counts(cluster, 1) == {"b": 1} and stamped(cluster, 1) == 1
        assert offset(cluster, 1) == 1
        assert counts(cluster, 0) == {} and stamped(cluster, 0) is None  # not yet
        assert offset(cluster, 0) is None
    assert running.error is None  # its last commit, at the stop, takes the rest
    assert counts(cluster, 0) == {"a": 1} and stamped(cluster, 0) == 1
    assert offset(cluster, 0) == 1


def test_a_revocation_commits_every_task_under_exactly_once() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        feed(cluster, ["a"], partition=0)
        feed(cluster, ["b"], partition=1)
        assert wait_for(lambda: worker.metrics.records_in == 2)
        join_group(cluster)
        assert wait_for(lambda: ("words", 1) not in worker.tasks)
        assert counts(cluster, 0) == {"a": 1} and counts(cluster, 1) == {"b": 1}
        assert offset(cluster, 0) == 1 and offset(cluster, 1) == 1
        assert sorted(totals(cluster)) == [("a", 1), ("b", 1)]
    assert running.error is None


# -- close -----------------------------------------------------------------------------
def test_exactly_once_close_aborts_a_rejected_final_transaction() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        feed(cluster, ["a"])
        assert wait_for(lambda: worker.metrics.records_in == 1)
        cluster.failures[SEND_OFFSETS] = [rebalancing()]
        running.stop()  # its commit on the way out is rejected
    assert running.error is None  # a graceful stop, not a crash
    assert cluster.failures[SEND_OFFSETS] == [] and worker.metrics.aborted_transactions == 1
    assert main_consumer(cluster).closed and cluster.group("wc").members == []
    # The rejected transaction was aborted and nothing of it is visible; a worker
    # alone in its group leaves at once, so the next owner processes the record.
    assert totals(cluster) == [] and offset(cluster) is None
    assert not open_transaction(cluster)
    successor = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(successor) as running:
        assert wait_for(lambda: successor.metrics.records_in == 1)
    assert running.error is None
    assert totals(cluster) == [("a", 1)]
    assert counts(cluster) == {"a": 1} and offset(cluster) == 1


def test_a_fatal_final_commit_error_still_raises() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        feed(cluster, ["a"])
        assert wait_for(lambda: worker.metrics.records_in == 1)
        cluster.failures[SEND_OFFSETS] = [rebalancing(abortable=False)]
        running.stop()
    assert isinstance(running.error, BrokerError)
    assert not isinstance(running.error, TransactionAbortable)
    assert main_consumer(cluster).closed and cluster.group("wc").members == []
    # close() aborted the open transaction on its way out.
    assert totals(cluster) == [] and totals(cluster, committed=False) == [("a", 1)]
    assert not open_transaction(cluster)
    assert counts(cluster) == {} and offset(cluster) is None


def test_at_least_once_commit_errors_still_raise() -> None:
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app("at_least_once", commit_interval_ms=NEVER_MS).worker(
        clients=cluster.clients()
    )
    with WorkerThread(worker) as running:
        consumer = main_consumer(cluster)
        cluster.delete_topic("totals")  # outputs fail, not for their own fault
        feed(cluster, ["a"])
        assert wait_for(lambda: worker.metrics.records_in == 1)
        running.stop()
    assert isinstance(running.error, BrokerError) and "totals" in str(running.error)
    assert consumer.closed
    assert counts(cluster) == {} and stamped(cluster) is None and offset(cluster) is None
    assert dead_letters(cluster) == []


def test_a_consumer_close_that_hangs_does_not_keep_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(membership, "CLOSE_TIMEOUT_S", 0.2)
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    worker = make_app(commit_interval_ms=NEVER_MS).worker(clients=cluster.clients())
    release = threading.Event()
    try:
        with WorkerThread(worker) as running:
            consumer = main_consumer(cluster)
            feed(cluster, ["a"])
            assert wait_for(lambda: worker.metrics.records_in == 1)
            consumer.close_gate = release
            running.stop()  # returns: the worker did not wait for the close
        assert isinstance(running.error, BrokerError) and "did not close" in str(running.error)
        assert not consumer.closed  # still hanging
        # The last commit came before the close; the transaction is not left open.
        assert totals(cluster) == [("a", 1)] and not open_transaction(cluster)
        assert counts(cluster) == {"a": 1} and offset(cluster) == 1
    finally:
        release.set()
    # The close ends in the background, and its revocation commits nothing more.
    assert wait_for(lambda: consumer.closed)
    assert cluster.group("wc").members == []
    assert counts(cluster) == {"a": 1} and totals(cluster, committed=False) == [("a", 1)]


# -- processing ---------------------------------------------------------------------------
def test_a_slow_batch_is_logged_with_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks_module, "SLOW_GROUP_S", 0.0)
    cluster = FakeCluster()
    cluster.create_topic("words", 1)
    feed(cluster, ["a", "b", "a"])  # one batch
    worker = make_app().worker(clients=cluster.clients())
    with caplog.at_level("WARNING", logger="keyshift.tasks"), WorkerThread(worker):
        assert wait_for(lambda: worker.metrics.records_in == 3)
    # The structured fields of the warning, not its text.
    slow = [
        r
        for r in caplog.records
        if r.name == "keyshift.tasks" and getattr(r, "task", None) == "words[0]"
    ]
    assert len(slow) == 1
    fields = slow[0].__dict__
    assert slow[0].levelname == "WARNING" and fields["records"] == 3
    for name in ("seconds", "gc_seconds", "state_read_seconds", "source_read_seconds"):
        assert isinstance(fields[name], float) and fields[name] >= 0, name
    assert worker.metrics.records_in == 3


# -- a revocation that never reached the consumer ------------------------------------
def test_a_worker_holding_partitions_the_group_gave_away_rejoins_as_a_new_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coordinator's target for the worker's first member leaves words[1] out,
    and no revocation reaches it (its heartbeat answer was lost): the worker
    commits, leaves and joins again with a new consumer, and loses nothing."""
    monkeypatch.setattr(lost_revocation, "CHECK_EVERY_S", 0.05)
    monkeypatch.setattr(lost_revocation, "STUCK_AFTER_S", 0.3)
    cluster = FakeCluster()
    cluster.create_topic("words", 2)
    describe = FakeAdmin.describe_consumer_groups
    first: list[FakeConsumer] = []

    def unheard(self: FakeAdmin, group_ids: list[str], **kwargs: Any) -> Any:
        futures = describe(self, group_ids, **kwargs)
        for member in futures[group_ids[0]].result().members:
            if first and member.member_id == first[0].memberid():
                member.target_assignment.topic_partitions = [
                    tp for tp in member.target_assignment.topic_partitions if tp.partition != 1
                ]
        return futures

    monkeypatch.setattr(FakeAdmin, "describe_consumer_groups", unheard)
    worker = make_app("at_least_once").worker(clients=cluster.clients())
    with WorkerThread(worker) as running:
        first.append(main_consumer(cluster))
        feed(cluster, ["a"], partition=0)
        feed(cluster, ["b"], partition=1)
        assert wait_for(lambda: worker.metrics.rejoins == 1)
        assert wait_for(lambda: first[0].closed)
        feed(cluster, ["a", "b"], partition=0)
        feed(cluster, ["b"], partition=1)
        assert wait_for(lambda: worker.metrics.records_in == 5)
    assert running.error is None
    assert worker.metrics.rejoins == 1  # the new member hears its revocations
    assert counts(cluster, 0) == {"a": 2, "b": 1} and counts(cluster, 1) == {"b": 2}
    assert sorted(totals(cluster)) == [("a", 1), ("a", 2), ("b", 1), ("b", 1), ("b", 2)]
