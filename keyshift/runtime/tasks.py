"""Which tasks this worker runs: open, dispatch records to, fence and drop them.

A task is *fenced* when another instance has claimed its state (a newer owner
epoch in the store): this worker's view of the group is stale. The task is
dropped and its partition paused, so its records are neither processed nor
silently fetched and ignored; the group's next rebalance takes the partition
away. If it is still assigned here after :attr:`TaskManager.fenced_limit_s`
(twice the session timeout), something else is wrong (typically two workers
with one instance id) and :meth:`TaskManager.check_fenced` stops the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import KafkaError, Message, TopicPartition

from keyshift.errors import BrokerError, StateLostError, TopologyError
from keyshift.migrations.events import now_ms
from keyshift.migrations.tracker import MigrationTracker
from keyshift.operators.topology import SubTopology
from keyshift.runtime.metrics import Metrics
from keyshift.runtime.producer import RecordProducer
from keyshift.runtime.reaper import Reaper
from keyshift.runtime.task import Task
from keyshift.runtime.topic_plan import source_expanded
from keyshift.state.table import Table, read_owner_epochs

log = logging.getLogger("keyshift.tasks")

TaskKey = tuple[str, int]

#: One task's share of a batch taking longer than this is logged with where it went.
SLOW_GROUP_S = 0.2


class TaskManager:
    """The tasks of one worker.

    Args:
        subs: the sub-topology reading each input topic.
        records: sends the tasks' outputs and dead letters.
        metrics: the worker's metrics.
        pause: pauses fetching of partitions (the consumer's ``pause``).
        migrations: the worker's in-flight migrations (told when tasks go).
        raise_on_error: ``on_error="raise"``.
        fenced_limit_s: how long a fenced task's partition may stay assigned.
        state_partitions: per input topic of a stateful sub-topology, how many
            partitions its stores' changelogs have (see :meth:`check_assigned`).
    """

    def __init__(
        self,
        subs: dict[str, SubTopology],
        *,
        records: RecordProducer,
        metrics: Metrics,
        pause: Callable[[list[TopicPartition]], None],
        migrations: MigrationTracker | None = None,
        raise_on_error: bool = False,
        fenced_limit_s: float = 20.0,
        state_partitions: Mapping[str, int] | None = None,
    ) -> None:
        self.subs = subs
        self.records = records
        self.metrics = metrics
        self.migrations = migrations
        self.raise_on_error = raise_on_error
        self.fenced_limit_s = fenced_limit_s
        self.state_partitions = dict(state_partitions or {})
        self._pause = pause
        self.tasks: dict[TaskKey, Task] = {}
        self.reaper = Reaper()
        #: Fenced partitions still assigned here, and since when (monotonic).
        self.fenced: dict[TaskKey, float] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, key: TaskKey) -> Task | None:
        return self.tasks.get(key)

    def items(self) -> list[tuple[TaskKey, Task]]:
        return list(self.tasks.items())

    def check_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Refuse partitions that have no state partition: the input topic was
        expanded under the app, and its keys now hash to other partitions than
        their state.

        Raises:
            TopologyError: a partition is at or beyond its stores' changelog count.
        """
        for tp in partitions:
            count = self.state_partitions.get(tp.topic)
            if count is not None and tp.partition >= count:
                raise TopologyError(source_expanded(tp.topic, tp.partition, count))

    # -- opening and dropping ------------------------------------------------------------
    def open(self, topic: str, partition: int, tables: dict[str, Table]) -> Task:
        """Run ``topic[partition]`` here over its restored tables."""
        task = Task(
            self.subs[topic],
            partition,
            tables,
            self.records.send_output,
            self.records.dead_letter,
            raise_on_error=self.raise_on_error,
        )
        task.adopt_upstream([t.stamp for t in tables.values()])
        start = task.start_offset()
        if start is not None:
            task.resume_at(start)
        self.tasks[(topic, partition)] = task
        self.fenced.pop((topic, partition), None)
        return task

    def drop(self, topic: str, partition: int) -> None:
        """Forget a task that left this worker; its caches go to the reaper."""
        task = self.tasks.pop((topic, partition), None)
        if task is not None:
            self.reaper.add(task.release())
        if self.migrations is not None:
            self.migrations.dropped((topic, partition))

    def unassigned(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """The group took ``partitions`` away: drop their tasks. Returns those of
        them paused by a fence, which the caller must resume before unassigning:
        librdkafka keeps a partition paused across its unassignment, so one
        given back later would never be fetched again."""
        paused: list[TopicPartition] = []
        for tp in partitions:
            self.drop(tp.topic, tp.partition)
            if self.fenced.pop((tp.topic, tp.partition), None) is not None:
                paused.append(TopicPartition(tp.topic, tp.partition))
        return paused

    # -- fencing --------------------------------------------------------------------------
    def drop_fenced(self, tasks: Sequence[Task]) -> list[Task]:
        """Drop those of ``tasks`` another instance has claimed (one batched read of
        their owner epochs); returns them.

        Raises:
            StateLostError: a partition's stored owner epoch is older than the
                task's: its state is gone from the store.
        """
        pairs = [(task, table) for task in tasks for table in task.tables.values()]
        if not pairs:
            return []
        epochs = read_owner_epochs([table for _, table in pairs])
        fenced: list[Task] = []
        for (task, table), current in zip(pairs, epochs, strict=True):
            if current < table.epoch:
                raise StateLostError(
                    f"{task.topic}[{task.partition}]", f"owner epoch {current} < {table.epoch}"
                )
            if current > table.epoch and task not in fenced:
                fenced.append(task)
                self.fence(task, f"owner epoch {current} > {table.epoch}")
        return fenced

    def fence(self, task: Task, why: str) -> None:
        """Another instance owns ``task`` now: drop it and pause its partition."""
        key = (task.topic, task.partition)
        if key not in self.tasks:
            return
        log.error(
            "task fenced: another instance owns its state now; dropped, partition paused "
            "until the group takes it away",
            extra={"topic": task.topic, "partition": task.partition, "reason": why},
        )
        self.drop(task.topic, task.partition)
        self.metrics.fenced_tasks += 1
        self.fenced[key] = time.monotonic()
        self._pause([TopicPartition(task.topic, task.partition)])

    def check_fenced(self) -> None:
        """Raises BrokerError when a fenced partition stayed assigned too long."""
        now = time.monotonic()
        stale = [k for k, since in self.fenced.items() if now - since > self.fenced_limit_s]
        if stale:
            names = ", ".join(f"{t}[{p}]" for t, p in stale)
            raise BrokerError(
                f"{names} still assigned to this worker {self.fenced_limit_s:.0f}s after "
                f"another instance claimed its state; is another worker running with the "
                f"same instance id?"
            )

    # -- processing -------------------------------------------------------------------
    def process(self, msgs: list[Message], gc_seconds: Callable[[], float]) -> int:
        """Dispatch a batch to its tasks; returns how many records were processed.

        Newly assigned tasks go first: their first record ends a migration's pause.
        """
        groups: dict[TaskKey, list[Message]] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise BrokerError(f"fatal consumer error: {err}")
                log.warning("consumer error", extra={"error": str(err)})
                continue
            key = (msg.topic(), msg.partition())
            group = groups.get(key)
            if group is None:
                groups[key] = [msg]
            else:
                group.append(msg)
        migrations = self.migrations
        order: Iterable[TaskKey] = groups
        if migrations:
            migrations.received(list(groups), now_ms())
            order = sorted(groups, key=lambda k: k not in migrations)
        processed = 0
        for key in order:
            task = self.tasks.get(key)
            if task is None:
                continue
            group = groups[key]
            self._run(task, group, gc_seconds)
            if migrations is not None:
                migrations.processed_first(key)
            processed += len(group)
        return processed

    def _run(self, task: Task, group: list[Message], gc_seconds: Callable[[], float]) -> None:
        before = task.duplicates
        began, gc_before = time.monotonic(), gc_seconds()
        reads_before = task.read_seconds()
        task.process(group)
        took = time.monotonic() - began
        if took > SLOW_GROUP_S:
            local, remote = (a - b for a, b in zip(task.read_seconds(), reads_before, strict=True))
            log.warning(
                "slow batch",
                extra={
                    "task": f"{task.topic}[{task.partition}]",
                    "records": len(group),
                    "seconds": round(took, 3),
                    "gc_seconds": round(gc_seconds() - gc_before, 3),
                    "state_read_seconds": round(local, 3),
                    "source_read_seconds": round(remote, 3),
                },
            )
        self.metrics.records_in += len(group)
        self.metrics.records_in_by_topic[task.topic] += len(group)
        self.metrics.records_in_by_task[f"{task.topic}[{task.partition}]"] += len(group)
        self.metrics.duplicates_dropped += task.duplicates - before

    def update_lag(self, high_watermark: Callable[[str, int], int | None]) -> None:
        """Lag and state size per task, from cached high watermarks."""
        for (topic, partition), task in self.tasks.items():
            if task.position is None:
                continue
            high = high_watermark(topic, partition)
            if high is None:
                continue
            self.metrics.lag[f"{topic}[{partition}]"] = max(0, high - task.position)
            for store, table in task.tables.items():
                self.metrics.state_keys[f"{store}[{partition}]"] = len(table)
