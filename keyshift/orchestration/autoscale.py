"""Elasticity policies: how many instances a job needs (``keyshift autoscale``).

Two policies decide from one :class:`Observation` of the job:

``ds2``  DS2 (Kalavri et al., OSDI 2018): from each instance's *true processing
         rate* (records per busy second, measured by the workers themselves, see
         :mod:`keyshift.runtime.rates`) the count that serves the arrival rate at
         the target utilization, plus draining the backlog within a bound. The
         true rate does not change with the instance count (the work per record
         does not), so one decision reaches the right count, and a second one
         corrects what the first measurement missed; counts inside a band around
         the target are left alone, so noise never makes it flap.
``lag``  the rule users deploy with KEDA's Kafka scaler: ``ceil(total lag /
         lag threshold)``. It sees the backlog, not the rates: a load step builds
         a large lag, which it answers with too many instances, then too few once
         the lag is gone.

Both are capped by the source partitions (an instance beyond them gets no task)
and by ``--min`` / ``--max``. Every decision carries its inputs and its reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Observation:
    """The job as the autoscaler measured it over the last window."""

    #: Instances running now.
    instances: int
    #: Partitions of the source topics: the most instances that get a task.
    partitions: int
    #: Records per second arriving at the source topics (over the whole window).
    arrival_rate: float
    #: Records one instance processes per busy second (0: not measured yet).
    processing_rate: float
    #: Records in the sources not processed yet (the group's lag).
    backlog: int
    #: The arrival rates over the window's first two thirds and its last third
    #: (None: not measured): far apart, the load is changing right now.
    arrival_trend: tuple[float, float] | None = None

    def load_changing(self, tolerance: float) -> bool:
        """Whether the window's two parts saw arrival rates more than
        ``tolerance`` (a share of the larger) apart."""
        if self.arrival_trend is None:
            return False
        before, now = self.arrival_trend
        if max(before, now) <= 0:
            return False
        return abs(now - before) > tolerance * max(before, now)

    def utilization(self, instances: int | None = None) -> float | None:
        """The busy share ``instances`` would have at the arrival rate (None: no rate)."""
        n = self.instances if instances is None else instances
        if self.processing_rate <= 0 or n <= 0:
            return None
        return self.arrival_rate / (n * self.processing_rate)


@dataclass(frozen=True, slots=True)
class Decision:
    """How many instances to run, why, and from what."""

    instances: int
    reason: str
    observation: Observation
    policy: str

    @property
    def changes(self) -> bool:
        return self.instances != self.observation.instances

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "instances": self.instances,
            "reason": self.reason,
            **{f"observed_{k}": v for k, v in asdict(self.observation).items()},
        }


class Policy(Protocol):
    name: str

    def decide(self, observation: Observation) -> Decision: ...


@dataclass(frozen=True)
class Bounds:
    minimum: int
    maximum: int

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.maximum < self.minimum:
            raise ValueError(f"need 1 <= min <= max, got min {self.minimum}, max {self.maximum}")

    def clamp(self, instances: int, partitions: int) -> int:
        return max(self.minimum, min(instances, self.maximum, max(partitions, self.minimum)))


class DS2Policy:
    """DS2's rule (see the module docstring).

    Args:
        bounds: the least and most instances.
        target_utilization: the busy share each instance should have, in (0, 1].
        drain_s: a backlog is to be worked off within this long (on top of the
            arrival rate).
        band: no change while the current count's utilization is within this
            much of the target and nothing is backlogged beyond one drain bound.
        steady: no change while the window's two parts saw arrival rates more
            than this share apart (a load step or a burst is under way): the
            next window measures the new load instead of a mix, so one
            decision reaches it.
    """

    name = "ds2"

    def __init__(
        self,
        bounds: Bounds,
        *,
        target_utilization: float = 0.7,
        drain_s: float = 60.0,
        band: float = 0.15,
        steady: float = 0.25,
    ) -> None:
        if not 0 < target_utilization <= 1:
            raise ValueError(f"target utilization must be in (0, 1], got {target_utilization}")
        self.bounds = bounds
        self.target = target_utilization
        self.drain_s = drain_s
        self.band = band
        self.steady = steady

    def decide(self, observation: Observation) -> Decision:
        o = observation
        keep = o.instances
        if o.processing_rate <= 0:
            return self._decision(keep, "no processing rate measured yet", o)
        rate = o.processing_rate
        # Serve the arrival rate at the target utilization; a backlog the spare
        # capacity of that count would not work off within the drain bound gets
        # instances of its own, run at full speed (they are not meant to stay).
        serving = math.ceil(o.arrival_rate / (rate * self.target) - 1e-9)
        draining = math.ceil((o.arrival_rate + o.backlog / self.drain_s) / rate - 1e-9)
        wanted = self.bounds.clamp(max(serving, draining, 1), o.partitions)
        load = o.arrival_rate / (keep * rate) if keep else math.inf
        spare = keep * rate - o.arrival_rate
        drained = o.backlog == 0 or spare * self.drain_s >= o.backlog
        what = (
            f"{o.arrival_rate:.0f}/s arriving, backlog {o.backlog}, {rate:.0f}/s per busy "
            f"instance-second"
        )
        if wanted == keep:
            return self._decision(keep, f"{what}: {keep} instances is the optimum", o)
        if o.load_changing(self.steady):
            assert o.arrival_trend is not None
            earlier, recent = o.arrival_trend
            return self._decision(
                keep,
                f"{what}: the arrival rate is changing ({earlier:.0f}/s, then {recent:.0f}/s "
                f"in this window); measuring again",
                o,
            )
        if abs(load - self.target) <= self.band and drained:
            return self._decision(
                keep,
                f"{what}: utilization {load:.2f} is within {self.band} of the target "
                f"{self.target} and the backlog drains within {self.drain_s:.0f}s; no change",
                o,
            )
        direction = "out" if wanted > keep else "in"
        return self._decision(
            wanted,
            f"{what}: utilization {load:.2f} at {keep} instances; scale {direction} to "
            f"{wanted} for {self.target}",
            o,
        )

    def _decision(self, instances: int, reason: str, o: Observation) -> Decision:
        return Decision(self.bounds.clamp(instances, o.partitions), reason, o, self.name)


class LagPolicy:
    """KEDA's Kafka scaler rule: ``ceil(total lag / lag_threshold)`` instances."""

    name = "lag"

    def __init__(self, bounds: Bounds, *, lag_threshold: int = 1000) -> None:
        if lag_threshold < 1:
            raise ValueError(f"lag threshold must be >= 1, got {lag_threshold}")
        self.bounds = bounds
        self.lag_threshold = lag_threshold

    def decide(self, observation: Observation) -> Decision:
        o = observation
        wanted = self.bounds.clamp(math.ceil(o.backlog / self.lag_threshold), o.partitions)
        return Decision(
            wanted,
            f"lag {o.backlog} / threshold {self.lag_threshold} -> {wanted} instances",
            o,
            self.name,
        )
