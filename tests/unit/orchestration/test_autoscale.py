"""The elasticity policies in a closed loop against a simulated job: a load trace,
instances of a known true rate, a pause after every change (the migration), noisy
measurements. DS2 settles each step in at most two decisions, never overshoots
and never flaps; the lag rule, on the same trace, does."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from keyshift.orchestration.autoscale import (
    Bounds,
    Decision,
    DS2Policy,
    LagPolicy,
    Observation,
    Policy,
)

pytestmark = pytest.mark.unit

CAPACITY = 1000.0  # records per busy second of one instance
PARTITIONS = 12
TRACE = [(500, 240), (4000, 240), (1500, 240), (6000, 240), (500, 240)]


@dataclass
class Step:
    rate: float
    counts: list[int] = field(default_factory=list)  # instances after each decision
    changes: int = 0


@dataclass
class Run:
    steps: list[Step]
    instance_seconds: float
    max_backlog: float

    def overshoot(self, step: Step) -> int:
        """Instances above the step's final count, chosen during the step."""
        return max([0, *(c - step.counts[-1] for c in step.counts[1:])])

    def oscillations(self, step: Step) -> int:
        moves = [b - a for a, b in zip(step.counts, step.counts[1:], strict=False) if b != a]
        return sum(1 for a, b in zip(moves, moves[1:], strict=False) if (a > 0) != (b > 0))


def simulate(
    policy: Policy,
    trace: list[tuple[float, int]],
    *,
    seed: int = 7,
    noise: float = 0.05,
    window_s: int = 10,
    settle_s: int = 10,
    pause_s: int = 3,
) -> Run:
    rng = random.Random(seed)
    instances, backlog, paused_until = 1, 0.0, 0
    arrived: list[float] = []
    steps: list[Step] = []
    next_decision = window_s
    instance_seconds, max_backlog, t = 0.0, 0.0, 0
    for rate, seconds in trace:
        step = Step(rate, [instances])
        steps.append(step)
        for _ in range(seconds):
            t += 1
            arrival = rate * (1 + rng.uniform(-noise, noise))
            arrived.append(arrival)
            capacity = instances * CAPACITY * (0.5 if t < paused_until else 1.0)
            processed = min(backlog + arrival, capacity)
            backlog += arrival - processed
            instance_seconds += instances
            max_backlog = max(max_backlog, backlog)
            if t < next_decision:
                continue
            window = arrived[-window_s:]
            earlier, tail = window[: -window_s // 3], window[-window_s // 3 :]
            observation = Observation(
                instances=instances,
                partitions=PARTITIONS,
                arrival_rate=sum(window) / len(window),
                arrival_trend=(sum(earlier) / len(earlier), sum(tail) / len(tail)),
                processing_rate=CAPACITY * (1 + rng.uniform(-noise / 2, noise / 2)),
                backlog=int(backlog),
            )
            decision: Decision = policy.decide(observation)
            assert decision.reason and decision.observation == observation
            if decision.changes:
                instances = decision.instances
                step.changes += 1
                step.counts.append(instances)
                paused_until = t + pause_s
                next_decision = t + settle_s + window_s  # moved tasks run, fresh rates
            else:
                next_decision = t + window_s
    return Run(steps, instance_seconds, max_backlog)


def optimum(rate: float, target: float = 0.7) -> int:
    return min(PARTITIONS, max(1, math.ceil(rate / (CAPACITY * target))))


def test_ds2_settles_each_step_in_at_most_two_decisions_without_overshoot() -> None:
    run = simulate(DS2Policy(Bounds(1, 12)), TRACE)
    for step in run.steps:
        assert step.changes <= 2, step
        assert run.overshoot(step) == 0, step
        assert run.oscillations(step) == 0, step
        assert step.counts[-1] == optimum(step.rate), step


def test_ds2_leaves_a_steady_noisy_load_alone() -> None:
    run = simulate(DS2Policy(Bounds(1, 12)), [(3000, 1200)], noise=0.10)
    (step,) = run.steps
    assert step.changes == 1 and step.counts == [1, optimum(3000)]


def test_the_lag_rule_overshoots_and_flaps_on_the_same_trace() -> None:
    ds2 = simulate(DS2Policy(Bounds(1, 12)), TRACE)
    lag = simulate(LagPolicy(Bounds(1, 12), lag_threshold=1000), TRACE)
    assert sum(lag.oscillations(s) for s in lag.steps) > 0
    assert sum(lag.overshoot(s) for s in lag.steps) > 0
    assert sum(s.changes for s in lag.steps) > 2 * sum(s.changes for s in ds2.steps)


def test_ds2_waits_for_a_measured_rate_and_respects_its_bounds() -> None:
    policy = DS2Policy(Bounds(2, 5))
    unmeasured = Observation(3, 12, 5000.0, 0.0, 0)
    assert policy.decide(unmeasured).instances == 3
    assert "no processing rate" in policy.decide(unmeasured).reason
    flood = Observation(3, 12, 50_000.0, 1000.0, 10**6)
    assert policy.decide(flood).instances == 5  # --max
    idle = Observation(3, 12, 0.0, 1000.0, 0)
    assert policy.decide(idle).instances == 2  # --min
    few_partitions = Observation(1, 2, 50_000.0, 1000.0, 0)
    assert policy.decide(few_partitions).instances == 2  # an instance beyond gets no task


def test_ds2_drains_a_backlog_the_serving_count_would_not_work_off_in_time() -> None:
    policy = DS2Policy(Bounds(1, 12), drain_s=60)
    # 4 instances serve 2,000/s at 0.5 utilization: 2,000/s spare drains 100k in 50 s.
    assert policy.decide(Observation(4, 12, 2000.0, 1000.0, 100_000)).instances == 4
    # 400k would take 200 s: enough instances to work it off within 60 s.
    decided = policy.decide(Observation(4, 12, 2000.0, 1000.0, 400_000))
    assert decided.instances == math.ceil((2000 + 400_000 / 60) / 1000)
    assert decided.to_dict()["observed_backlog"] == 400_000


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="min"):
        Bounds(0, 3)
    with pytest.raises(ValueError, match="min"):
        Bounds(4, 3)


def test_ds2_measures_again_while_the_load_is_changing() -> None:
    policy = DS2Policy(Bounds(1, 12))
    stepping = Observation(1, 12, 1200.0, 1000.0, 0, arrival_trend=(400.0, 2800.0))
    decided = policy.decide(stepping)
    assert decided.instances == 1 and "changing" in decided.reason
    steady = Observation(1, 12, 1200.0, 1000.0, 0, arrival_trend=(1150.0, 1250.0))
    assert policy.decide(steady).instances == 2
    # The lag rule has no such notion.
    assert LagPolicy(Bounds(1, 12)).decide(stepping).instances == 1
