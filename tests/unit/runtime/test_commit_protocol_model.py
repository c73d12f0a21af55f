"""A model-based test of the commit protocol: crash anywhere, restore any way.

Hypothesis drives a word count through workers on the in-memory cluster. Each
worker is killed (as by kill -9) at a random event: an output or changelog
record produced, a record delivered, a flush, a store write, an offset commit,
a transaction commit. The next worker restores the state by handoff (the same
store), transfer (progressive or stop-and-copy from the last store) or replay
from scratch (a new, empty store), with records delivered across partitions in
random order. After every clean run:

* the state is exact: each word's last output is its number of inputs, and a
  replay of the changelog from scratch (as written, and as compaction would
  leave it) gives every word's exact count;
* at-least-once: every input record's output exists (each count 1..N of each
  word was produced at least once);
* exactly-once: the committed outputs of each word are exactly 1..N, in order.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from fakes import Crash, FakeCluster, Life, wait_for
from keyshift import App
from keyshift.migrations.replay import ChangelogApplier
from keyshift.runtime import coordinator
from keyshift.state.memory.store import MemoryPartition

pytestmark = pytest.mark.unit

WORDS = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}  # word -> input partition
POINTS = ["produce", "deliver", "flush", "store_commit", "commit_offsets", "commit_transaction"]
STRATEGIES = ["handoff", "replay", "progressive", "stop-and-copy"]
CHANGELOG = "m--counts-changelog"


class CommitProtocol(RuleBasedStateMachine):
    guarantee = "at_least_once"

    #: Killed workers never say goodbye on the control topic: the others' waits for
    #: them are cut short (they are bounded anyway) to keep examples fast.
    FAST = {
        "HELLO_EXPIRES_S": 0.2,
        "LAST_COMMIT_TIMEOUT_S": 0.05,
        "LEAVE_SETTLE_S": 0.0,
        "ACK_TIMEOUT_S": 0.5,
    }

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self._timing = {name: getattr(coordinator, name) for name in self.FAST}
        for name, value in self.FAST.items():
            setattr(coordinator, name, value)
        self.cluster = FakeCluster()
        self.cluster.create_topic("words", 2)
        self.cluster.shuffle = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.urls = ["memory://s0"]
        self.feed = self.cluster.clients().producer({})

    def teardown(self) -> None:
        for name, value in getattr(self, "_timing", {}).items():
            setattr(coordinator, name, value)

    # -- rules ----------------------------------------------------------------------------
    @rule(words=st.lists(st.sampled_from(sorted(WORDS)), min_size=1, max_size=12))
    def produce(self, words: list[str]) -> None:
        for word in words:
            self.feed.produce("words", orjson.dumps(word), word.encode(), partition=WORDS[word])
            self.counts[word] += 1
        self.feed.flush()

    @rule(
        words=st.lists(st.sampled_from(sorted(WORDS)), max_size=12),
        strategy=st.sampled_from(STRATEGIES),
        point=st.sampled_from(POINTS),
        nth=st.integers(1, 25),
    )
    def crash_run(self, words: list[str], strategy: str, point: str, nth: int) -> None:
        if words:
            self.produce(words)
        self._run(strategy, crash=(point, nth))

    @rule(strategy=st.sampled_from(STRATEGIES))
    def clean_run(self, strategy: str) -> None:
        self._run(strategy)
        self._check()

    # -- running a worker ---------------------------------------------------------------
    def _run(self, strategy: str, crash: tuple[str, int] | None = None) -> None:
        migration = {
            "handoff": "auto",
            "replay": "replay",
            "progressive": "progressive",
            "stop-and-copy": "stop-and-copy",
        }[strategy]
        if strategy != "handoff":
            self.urls.append(f"memory://s{len(self.urls)}")
        app = App(
            "m",
            brokers="fake:1",
            state=self.urls[-1],
            guarantee=self.guarantee,
            commit_interval_ms=5,
            migration=migration,
            peers=",".join(self.urls[:-1]),
            instance_id=f"w{len(self.urls)}",
        )
        app.stream("words").count(store="counts").to("totals")
        life = Life()
        worker = app.worker(clients=self.cluster.clients(life))
        if crash is not None:
            point, nth = crash
            self.cluster.crash_at = {point: self.cluster.events.get(point, 0) + nth}
        failure: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except Crash:
                pass
            except BaseException as exc:  # reported to the test thread
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert wait_for(lambda: life.dead or bool(failure) or self._caught_up(), 10), (
            "the worker did not catch up"
        )
        worker.stop()
        if crash is not None:
            event(f"crashed at {crash[0]}" if life.dead else "no crash")
        thread.join(20)
        self.cluster.crash_at = {}
        assert not thread.is_alive()
        if failure:
            raise failure[0]

    def _caught_up(self) -> bool:
        offsets = self.cluster.offsets
        return all(
            offsets.get(("m", "words", p), 0) >= self.cluster.high("words", p) for p in range(2)
        )

    # -- checks -------------------------------------------------------------------------
    def _check(self) -> None:
        outputs: dict[str, list[int]] = {}
        committed = self.guarantee == "exactly_once"
        for msg in self.cluster.records("totals", committed=committed):
            outputs.setdefault(msg.key().decode(), []).append(orjson.loads(msg.value()))
        for word, n in self.counts.items():
            values = outputs.get(word, [])
            assert values and values[-1] == n, (word, n, values)
            if committed:
                assert values == list(range(1, n + 1)), (word, values)
            else:
                assert set(range(1, n + 1)) <= set(values), (word, n, values)
        for compacted in (False, True):
            assert self._replayed(compacted) == dict(self.counts), compacted

    def _replayed(self, compacted: bool) -> dict[str, int]:
        """Each word's count, rebuilt from the changelog from scratch."""
        if CHANGELOG not in self.cluster.logs:
            return {}
        state: dict[str, int] = {}
        committed = self.guarantee == "exactly_once"
        for partition in range(self.cluster.partitions(CHANGELOG)):
            msgs = [
                m
                for m in self.cluster.records(CHANGELOG, committed=committed)
                if m.partition() == partition
            ]
            if compacted:
                last = {m.key(): i for i, m in enumerate(msgs)}
                msgs = [m for i, m in enumerate(msgs) if last[m.key()] == i]
            backend = MemoryPartition()
            applier = ChangelogApplier(backend, None, backend.claim("check"))
            for msg in msgs:
                applier.feed(msg)
            applier.finish()
            for key, value in backend.data.items():
                state[key.decode()] = orjson.loads(value)
        return state


class ExactlyOnceCommitProtocol(CommitProtocol):
    guarantee = "exactly_once"


# KEYSHIFT_MODEL_EXAMPLES=1000 for a longer search than the suite's default.
_SETTINGS: Any = settings(
    max_examples=int(os.environ.get("KEYSHIFT_MODEL_EXAMPLES", "60")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestAtLeastOnce = CommitProtocol.TestCase
TestAtLeastOnce.settings = _SETTINGS
TestExactlyOnce = ExactlyOnceCommitProtocol.TestCase
TestExactlyOnce.settings = _SETTINGS
