"""Planned rebalances, prepared by the workers themselves over the control topic.

Every join or leave of a consumer group is a rebalance, and each moved
partition pauses from its old owner's last record to its new owner's first.
Three things make that pause long, and the workers avoid them together, with
no supervisor and no shared files (see :mod:`keyshift.runtime.control`):

**Joining together.** Processes started by one scaling step (``docker compose
up --scale``, a Deployment's new replicas, ``keyshift run``) get ready seconds
apart. Each says ``hello`` when it starts, and again every
:data:`HELLO_EVERY_S` while it gets ready, and ``join`` once ready; it
subscribes only when every process still saying ``hello`` has said ``join``
too (or :data:`JOIN_TIMEOUT_S` passed): one rebalance, not one per process,
and no partition moves twice. A process that died while starting stops
saying ``hello`` and is not waited for after :data:`HELLO_EXPIRES_S`.

**Committing ahead.** A moved partition's pause includes its old owner's
commit of it, and any regular commit that owner is in the middle of. Running
members answer a ``join`` or ``leave`` by committing at once (and connecting
to the Redis servers the next restores may read) and saying ``ack``; the
joiner subscribes, or the leaver leaves, once every running member acked (at
most :data:`ACK_TIMEOUT_S`). The rebalance then finds them with little to
commit and no commit under way.

**Leaving together.** Workers stopped by one step (a scale-in's SIGTERMs)
say ``leave``, commit, and keep processing until the others stopped with them
have said so (no new ``leave`` for :data:`LEAVE_SETTLE_S`) and the staying
members acked; then each makes its last commit, says ``last``, and waits (at
most :data:`LAST_COMMIT_TIMEOUT_S`) for the others' ``last`` before leaving
the group: they leave at once, and no partition of one is given to another
that is about to leave.

Every wait is bounded: a lost or forged control record can only delay a
rebalance, never stop one. Members are the group's members as the broker
describes them (:func:`group_instances`), named by their client id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from keyshift.runtime.control import ControlChannel, ControlMessage

log = logging.getLogger("keyshift.coordinator")

#: Longest a starting worker waits for the others starting with it and for the
#: running members' commits.
JOIN_TIMEOUT_S = 20.0
#: A starting process repeats ``hello`` this often until it joins ...
HELLO_EVERY_S = 1.0
#: ... and one silent for this long died while starting.
HELLO_EXPIRES_S = 3.0
#: Longest a joiner or leaver waits for the running members' ``ack``.
ACK_TIMEOUT_S = 5.0
#: A leaving worker leaves once no other ``leave`` came for this long.
LEAVE_SETTLE_S = 0.3
#: Longest a leaving worker waits before leaving, whatever the others do.
LEAVE_TIMEOUT_S = 5.0
#: Longest a leaving worker, after its last commit, waits for the others'.
LAST_COMMIT_TIMEOUT_S = 1.0
#: How often waits look at the control topic (and the group's members).
POLL_S = 0.01
MEMBERS_EVERY_S = 0.25


@dataclass(frozen=True, slots=True)
class Request:
    """Another worker asks this one to commit ahead of its join or leave."""

    kind: str  # "join" or "leave"
    instance: str
    incarnation: str


@dataclass
class _View:
    """What the control topic said, by incarnation."""

    hellos: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> (instance, when)
    joined: set[str] = field(default_factory=set)
    leaving: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> (instance, when)
    last: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    acks: dict[str, set[str]] = field(default_factory=dict)  # about -> instances


class Coordinator:
    """One worker's side of the planned-rebalance protocol (module docstring).

    Args:
        channel: the control topic.
        members: the instances in the consumer group now (from the broker).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        channel: ControlChannel,
        members: Callable[[], set[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.channel = channel
        self._members_of_group = members
        self._clock = clock
        self._sleep = sleep
        self._view = _View()
        self._requests: list[Request] = []
        self._members: set[str] = set()
        self._members_read = -MEMBERS_EVERY_S
        self._leave_started: float | None = None
        self._joined = threading.Event()
        self.me = channel.incarnation

    # -- reading ---------------------------------------------------------------------
    def _read(self) -> None:
        now = self._clock()
        for msg in self.channel.read():
            self._note(msg, now)

    def _note(self, msg: ControlMessage, now: float) -> None:
        view, inc = self._view, msg.incarnation
        if msg.kind == "hello":
            view.hellos[inc] = (msg.instance, now)
        elif msg.kind == "join":
            view.joined.add(inc)
            self._request("join", msg)
        elif msg.kind == "leave":
            view.leaving[inc] = (msg.instance, now)
            self._request("leave", msg)
        elif msg.kind == "last":
            view.last.add(inc)
        elif msg.kind == "bye":
            view.gone.add(inc)
        elif msg.kind == "ack" and msg.about is not None:
            view.acks.setdefault(msg.about, set()).add(msg.instance)

    def _request(self, kind: str, msg: ControlMessage) -> None:
        """Another worker's join or leave asks this one to commit, once this one is
        a member itself: what it read before (the look-back, fellow joiners) is
        not its to answer."""
        if msg.incarnation != self.me and self._joined.is_set():
            self._requests.append(Request(kind, msg.instance, msg.incarnation))

    def members(self, *, fresh: bool = False) -> set[str]:
        now = self._clock()
        if fresh or now - self._members_read >= MEMBERS_EVERY_S:
            self._members = self._members_of_group()
            self._members_read = now
        return self._members

    def _waiting_for_acks(self) -> set[str]:
        """Running members that have not acked this incarnation's request yet."""
        leaving = {
            instance
            for inc, (instance, _) in self._view.leaving.items()
            if inc not in self._view.gone
        }
        acked = self._view.acks.get(self.me, set())
        return self.members() - leaving - acked - {self.channel.instance}

    # -- joining ------------------------------------------------------------------------
    def hello(self) -> None:
        """Announce a start (call first thing); repeated until :meth:`join` returns."""
        self.channel.start()
        self.channel.publish("hello")
        threading.Thread(target=self._repeat_hello, name="keyshift-hello", daemon=True).start()

    def _repeat_hello(self) -> None:
        while not self._joined.wait(HELLO_EVERY_S):
            self.channel.publish("hello")

    def join(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Say ``join``, then wait for the others starting with this worker and for
        the running members' commits. True if all came in time."""
        self.channel.publish("join")
        try:
            return self._await_joiners(stopping)
        finally:
            self._joined.set()

    def _await_joiners(self, stopping: Callable[[], bool]) -> bool:
        began = self._clock()
        self.members(fresh=True)
        while not stopping():
            self._read()
            now = self._clock()
            starting = {
                inc
                for inc, (_, when) in self._view.hellos.items()
                if inc != self.me
                and inc not in self._view.joined
                and inc not in self._view.gone
                and now - when < HELLO_EXPIRES_S
            }
            waiting = self._waiting_for_acks() if now - began < ACK_TIMEOUT_S else set()
            if not starting and not waiting:
                log.info(
                    "joining",
                    extra={
                        "instance": self.channel.instance,
                        "waited_ms": round((now - began) * 1000),
                    },
                )
                return True
            if now - began > JOIN_TIMEOUT_S:
                log.warning(
                    "joining without the others",
                    extra={
                        "instance": self.channel.instance,
                        "starting": len(starting),
                        "not_acked": ",".join(sorted(waiting)),
                    },
                )
                return False
            self._sleep(POLL_S)
        return False

    # -- serving others ------------------------------------------------------------------
    def requests(self) -> list[Request]:
        """Others' joins and leaves seen since the last call (never waits)."""
        self._read()
        out, self._requests = self._requests, []
        return out

    def acknowledge(self, requests: list[Request]) -> None:
        """This worker committed ahead of ``requests``."""
        for request in requests:
            self.channel.publish("ack", about=request.incarnation)
        self.channel.flush(1.0)

    # -- leaving -----------------------------------------------------------------------
    def leave(self) -> None:
        """Say ``leave`` (the worker was asked to stop and has committed)."""
        self._leave_started = self._clock()
        self.members(fresh=True)
        self.channel.publish("leave")
        self.channel.flush(1.0)

    def may_leave(self) -> bool:
        """Whether the others stopped with this worker have said so and the staying
        members have acked (or the leave timeout passed). Never waits."""
        assert self._leave_started is not None
        self._read()
        now = self._clock()
        if now - self._leave_started > LEAVE_TIMEOUT_S:
            log.warning(
                "leaving without the others",
                extra={
                    "instance": self.channel.instance,
                    "not_acked": ",".join(sorted(self._waiting_for_acks())),
                },
            )
            return True
        if not self.members() - {self.channel.instance}:
            return True  # alone in the group: nobody to leave with or hand over to
        latest = max([self._leave_started, *(when for _, when in self._view.leaving.values())])
        return now - latest >= LEAVE_SETTLE_S and not self._waiting_for_acks()

    def leave_together(self) -> bool:
        """Last commit made: say ``last`` and wait for the other leavers' (bounded)."""
        self.channel.publish("last")
        self.channel.flush(1.0)
        began = self._clock()
        while True:
            self._read()
            others = {
                inc
                for inc in self._view.leaving
                if inc != self.me and inc not in self._view.last and inc not in self._view.gone
            }
            if not others:
                return True
            if self._clock() - began > LAST_COMMIT_TIMEOUT_S:
                log.warning(
                    "the others' last commits took too long; leaving alone",
                    extra={"instance": self.channel.instance},
                )
                return False
            self._sleep(POLL_S)

    def bye(self) -> None:
        """Left the group."""
        self.channel.publish("bye")
        self.channel.flush(2.0)

    def close(self) -> None:
        self._joined.set()
        self.channel.close()


def group_instances(describe: Callable[[], list[str]], app_id: str) -> set[str]:
    """Instances in the group, from its members' client ids (``<app>--<instance>``);
    members of other software in the group are not waited for."""
    prefix = f"{app_id}--"
    return {cid[len(prefix) :] for cid in describe() if cid.startswith(prefix)}
