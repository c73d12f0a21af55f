"""The local Kafka + Redis sandbox behind ``keyshift dev up | down | status``.

Layout of the run directory (``$KEYSHIFT_HOME/sandbox``, default
``~/.cache/keyshift/sandbox``)::

    state.json              versions, cluster id and ports of the sandbox
    env                     ``export KEYSHIFT_BROKERS=...`` lines (written by ``up``)
    kafka-<n>.pid           PID of broker node n
    kafka-<n>/              server.properties, data/ (removed by ``down``), kafka.log
    redis-<n>.pid           PID of Redis instance n (n=0 is the main one)
    redis-<n>/              working directory and redis.log

``up`` is idempotent: it reuses every service whose PID file names a live
process of ours that answers on its port, restarts dead ones and never stops
anything. ``down`` stops exactly the processes named by the PID files (after
checking they are ours): SIGTERM, wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from keyshift.dev import kafka, redis_server
from keyshift.dev.kafka import DEFAULT_VERSION, KafkaNode
from keyshift.dev.paths import (
    env_file,
    kafka_dir,
    kafka_log,
    kafka_pid_file,
    kafka_props,
    redis_dir,
    redis_log,
    redis_pid_file,
    run_dir,
)
from keyshift.dev.ports import assign_ports, port_in_use, port_open
from keyshift.errors import SandboxError
from keyshift.procs import owned_pid, read_pid, spawn_detached, stop_pids, write_pid

log = logging.getLogger("keyshift.dev")

DEFAULT_TIMEOUT = 90.0
STATE_FILE = "state.json"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Service:
    """One sandbox process as seen by ``status`` (and returned by ``up``/``down``)."""

    name: str
    kind: Literal["kafka", "redis"]
    pid: int | None
    address: str
    log: str
    version: str | None = None
    controller: str | None = None
    responding: bool = False
    reused: bool = False

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Addresses and services of the sandbox."""

    brokers: str
    redis_urls: list[str]
    services: list[Service]
    run_dir: str

    @property
    def redis_url(self) -> str:
        return self.redis_urls[0] if self.redis_urls else ""

    @property
    def running(self) -> bool:
        return any(s.running for s in self.services)

    def env(self) -> dict[str, str]:
        """The ``KEYSHIFT_*`` variables pointing at this sandbox."""
        return {
            "KEYSHIFT_BROKERS": self.brokers,
            "KEYSHIFT_REDIS": self.redis_url,
            "KEYSHIFT_STATE": self.redis_url,
            "KEYSHIFT_REDIS_URLS": ",".join(self.redis_urls),
        }

    def exports(self) -> str:
        """``export NAME=value`` lines, ready for ``eval``."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for service in data["services"]:
            service["running"] = service["pid"] is not None
        data["running"] = self.running
        data["env"] = self.env()
        return data


@dataclass(slots=True)
class State:
    """What ``up`` planned, persisted in ``state.json``."""

    kafka_version: str | None = None
    cluster_id: str | None = None
    nodes: list[KafkaNode] = field(default_factory=list)
    redis_ports: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, run: Path) -> State:
        try:
            raw = json.loads((run / STATE_FILE).read_text())
            return cls(
                kafka_version=raw.get("kafka_version"),
                cluster_id=raw.get("cluster_id"),
                nodes=[KafkaNode(**node) for node in raw.get("nodes", [])],
                redis_ports=[int(p) for p in raw.get("redis_ports", [])],
            )
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", run / STATE_FILE, exc)
            return cls()

    def save(self, run: Path) -> None:
        data = {
            "kafka_version": self.kafka_version,
            "cluster_id": self.cluster_id,
            "nodes": [asdict(n) for n in self.nodes],
            "redis_ports": self.redis_ports,
        }
        tmp = run / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(run / STATE_FILE)


# --------------------------------------------------------------------------- pids


def kafka_pid(run: Path, index: int) -> int | None:
    """PID of our live broker node ``index`` (None if not running)."""
    return owned_pid(kafka_pid_file(run, index), kafka.broker_markers(kafka_props(run, index)))


def redis_pid(run: Path, index: int) -> int | None:
    """PID of our live Redis instance ``index`` (None if not running)."""
    pid = read_pid(redis_pid_file(run, index))
    if pid is None or not redis_server.is_ours(pid, redis_dir(run, index)):
        return None
    return pid


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    """Serialize ``up``/``down`` of one run directory across processes."""
    run.mkdir(parents=True, exist_ok=True)
    with (run / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `keyshift dev` command on %s", run)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- up


def up(
    brokers: int = 1,
    redis_instances: int = 0,
    kafka_version: str = DEFAULT_VERSION,
    auto_ports: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    kafka_port: int = kafka.DEFAULT_PORT,
    redis_port: int = redis_server.DEFAULT_PORT,
) -> Sandbox:
    """Start (or reuse) Kafka and Redis; write the env file; return the addresses.

    ``brokers`` combined broker+controller nodes listen on ``kafka_port + n``
    (controllers on ``kafka_port + 100 + n``); Redis on ``redis_port`` plus
    ``redis_instances`` extra servers on the following ports.
    """
    kafka.check_version(kafka_version)
    if brokers < 1:
        raise SandboxError(f"--brokers must be at least 1, got {brokers}")
    if redis_instances < 0:
        raise SandboxError(f"--redis-instances must be >= 0, got {redis_instances}")
    run = run_dir()
    with _locked(run):
        return _up(run, brokers, redis_instances, kafka_version, auto_ports, timeout,
                   kafka_port, redis_port)  # fmt: skip


@dataclass
class _Plan:
    """What ``up`` keeps running and what it (re)starts, on which ports."""

    nodes: list[KafkaNode]
    cluster_id: str
    kafka_alive: dict[int, int]
    kafka_start: list[KafkaNode]
    redis_ports: list[int]
    redis_alive: dict[int, int]
    redis_start: list[int]


def _up(
    run: Path,
    brokers: int,
    redis_instances: int,
    version: str,
    auto_ports: bool,
    timeout: float,
    kafka_port: int,
    redis_port: int,
) -> Sandbox:
    state = State.load(run)
    plan = _plan(run, state, brokers, redis_instances, version, kafka_port, redis_port)
    _assign_ports(plan, auto_ports)
    if plan.kafka_start:
        kafka.java()
    if plan.redis_start:
        redis_server.redis_server()
    libs = kafka.fetch_jars(version) if plan.kafka_start else None
    State(version, plan.cluster_id, plan.nodes, plan.redis_ports).save(run)
    _start(run, plan, libs, timeout)
    sandbox = _describe(
        run,
        State(version, plan.cluster_id, plan.nodes, plan.redis_ports),
        plan.kafka_alive,
        plan.redis_alive,
    )
    _write_env(sandbox)
    return sandbox


def _plan(
    run: Path,
    state: State,
    brokers: int,
    redis_instances: int,
    version: str,
    kafka_port: int,
    redis_port: int,
) -> _Plan:
    # Kafka: reuse a live cluster (restarting dead nodes in place) or plan a fresh one.
    kafka_alive = {n.index: pid for n in state.nodes if (pid := kafka_pid(run, n.index))}
    if kafka_alive:
        if len(state.nodes) != brokers or state.kafka_version != version:
            raise SandboxError(
                f"a {len(state.nodes)}-broker Kafka {state.kafka_version} sandbox is running; "
                f"run `keyshift dev down` before asking for {brokers} broker(s) of Kafka {version}"
            )
        nodes = list(state.nodes)
        cluster_id = state.cluster_id or kafka.new_cluster_id()
    else:
        _remove_kafka_dirs(run)
        nodes = kafka.plan_nodes(brokers, kafka_port)
        cluster_id = kafka.new_cluster_id()
    # Redis: keep live instances on their ports, (re)start the rest.
    redis_alive = {i: pid for i in range(len(state.redis_ports)) if (pid := redis_pid(run, i))}
    count = max([1 + redis_instances] + [i + 1 for i in redis_alive])
    if redis_alive:
        base = state.redis_ports[0]
        redis_ports = [state.redis_ports[i] if i < len(state.redis_ports) else base + i
                       for i in range(count)]  # fmt: skip
    else:
        redis_ports = [redis_port + i for i in range(count)]
    return _Plan(
        nodes,
        cluster_id,
        kafka_alive,
        [n for n in nodes if n.index not in kafka_alive],
        redis_ports,
        redis_alive,
        [i for i in range(count) if i not in redis_alive],
    )


def _assign_ports(plan: _Plan, auto_ports: bool) -> None:
    """A restarted node of a live cluster keeps its ports; new services may move
    (with ``auto_ports``) when theirs are taken."""
    ours = {n.port for n in plan.nodes if n.index in plan.kafka_alive}
    ours |= {n.controller_port for n in plan.nodes if n.index in plan.kafka_alive}
    ours |= {plan.redis_ports[i] for i in plan.redis_alive}

    def taken(port: int) -> bool:
        return port in ours or port_in_use(port)

    fixed: dict[str, int] = {}
    movable: dict[str, int] = {}
    for node in plan.kafka_start:
        target = fixed if plan.kafka_alive else movable
        target[f"kafka node {node.index} client"] = node.port
        target[f"kafka node {node.index} controller"] = node.controller_port
    for i in plan.redis_start:
        movable[f"redis {i}"] = plan.redis_ports[i]
    assign_ports(fixed, auto=False, in_use=taken)
    moved = assign_ports(movable, auto=auto_ports, in_use=lambda p: taken(p) or p in fixed.values())
    if not plan.kafka_alive:
        plan.nodes = [
            KafkaNode(
                n.index,
                moved[f"kafka node {n.index} client"],
                moved[f"kafka node {n.index} controller"],
            )
            for n in plan.nodes
        ]
        plan.kafka_start = plan.nodes
    for i in plan.redis_start:
        plan.redis_ports[i] = moved[f"redis {i}"]
    for name, port in moved.items():
        if movable[name] != port:
            log.info("port %d is taken: %s uses port %d instead", movable[name], name, port)


def _start(run: Path, plan: _Plan, libs: Path | None, timeout: float) -> None:
    """Start what the plan says and wait until it answers; on failure, stop what
    this call started."""
    started: list[tuple[Path, int]] = []
    try:
        for node in plan.kafka_start:
            assert libs is not None
            started.append(_start_kafka_node(run, libs, node, plan.nodes, plan.cluster_id))
        for i in plan.redis_start:
            started.append(_start_redis(run, i, plan.redis_ports[i]))

        def kafka_alive_now() -> bool:
            return all(kafka_pid(run, n.index) for n in plan.nodes)

        kafka.wait_ready(
            plan.nodes, timeout, [kafka_log(run, n.index) for n in plan.nodes], kafka_alive_now
        )
        for i, port in enumerate(plan.redis_ports):
            redis_server.wait_ready(
                port, min(timeout, 30.0), redis_log(run, i), _redis_alive(run, i)
            )
    except BaseException:
        if started:
            log.warning("start failed: stopping the %d process(es) started now", len(started))
            stop_pids([pid for _, pid in started])
            for pid_file, _ in started:
                pid_file.unlink(missing_ok=True)
        raise


def _redis_alive(run: Path, index: int) -> Callable[[], bool]:
    return lambda: redis_pid(run, index) is not None


def _start_kafka_node(
    run: Path, libs: Path, node: KafkaNode, nodes: list[KafkaNode], cluster_id: str
) -> tuple[Path, int]:
    home = kafka_dir(run, node.index)
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = kafka_props(run, node.index)
    props.write_text(kafka.server_properties(node, nodes, data))
    if not (data / "meta.properties").exists():
        kafka.format_storage(libs, props, cluster_id)
    log.info(
        "starting Kafka node=%d address=%s controller=%s log=%s",
        node.index, node.address, node.controller_address, kafka_log(run, node.index),
    )  # fmt: skip
    pid = spawn_detached(kafka.broker_command(libs, props), kafka_log(run, node.index), cwd=home)
    pid_file = kafka_pid_file(run, node.index)
    write_pid(pid_file, pid)
    return pid_file, pid


def _start_redis(run: Path, index: int, port: int) -> tuple[Path, int]:
    home = redis_dir(run, index)
    home.mkdir(parents=True, exist_ok=True)
    log.info("starting Redis instance=%d url=%s log=%s", index, redis_server.url(port),
             redis_log(run, index))  # fmt: skip
    pid = spawn_detached(redis_server.command(port), redis_log(run, index), cwd=home)
    pid_file = redis_pid_file(run, index)
    write_pid(pid_file, pid)
    return pid_file, pid


def _remove_kafka_dirs(run: Path) -> None:
    for path in run.glob("kafka-*"):
        if path.is_dir():
            shutil.rmtree(path / "data", ignore_errors=True)


def _write_env(sandbox: Sandbox) -> None:
    path = env_file()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(sandbox.exports())
    tmp.replace(path)


# --------------------------------------------------------------------------- status


def _describe(
    run: Path,
    state: State,
    kafka_reused: dict[int, int] | None = None,
    redis_reused: dict[int, int] | None = None,
) -> Sandbox:
    services: list[Service] = []
    for node in state.nodes:
        pid = kafka_pid(run, node.index)
        services.append(Service(
            name=f"kafka-{node.index}", kind="kafka", pid=pid, address=node.address,
            log=str(kafka_log(run, node.index)), version=state.kafka_version,
            controller=node.controller_address,
            responding=pid is not None and port_open(node.port),
            reused=node.index in (kafka_reused or {}),
        ))  # fmt: skip
    for i, port in enumerate(state.redis_ports):
        pid = redis_pid(run, i)
        services.append(Service(
            name=f"redis-{i}", kind="redis", pid=pid, address=redis_server.url(port),
            log=str(redis_log(run, i)), responding=pid is not None and port_open(port),
            reused=i in (redis_reused or {}),
        ))  # fmt: skip
    return Sandbox(
        brokers=",".join(n.address for n in state.nodes),
        redis_urls=[redis_server.url(p) for p in state.redis_ports],
        services=services,
        run_dir=str(run),
    )


def status() -> Sandbox:
    """What the sandbox runs now (services not running have ``pid=None``)."""
    run = run_dir()
    return _describe(run, State.load(run))


# --------------------------------------------------------------------------- down


def down(timeout: float = 20.0) -> list[Service]:
    """Stop every sandbox process named by a PID file; remove Kafka data and env file."""
    run = run_dir()
    if not run.is_dir():
        return []
    with _locked(run):
        before = _describe(run, State.load(run))
        targets: dict[Path, int | None] = {}
        for pid_file in run.glob("kafka-*.pid"):
            targets[pid_file] = owned_pid(
                pid_file, kafka.broker_markers(run / pid_file.stem / "server.properties")
            )
        for pid_file in run.glob("redis-*.pid"):
            pid = read_pid(pid_file)
            ok = pid is not None and redis_server.is_ours(pid, run / pid_file.stem)
            targets[pid_file] = pid if ok else None
        pids = [pid for pid in targets.values() if pid is not None]
        for pid_file, pid in sorted(targets.items()):
            if pid is not None:
                log.info("stopping %s pid=%d", pid_file.stem, pid)
        stop_pids(pids, timeout)
        for pid_file in targets:
            pid_file.unlink(missing_ok=True)
        _remove_kafka_dirs(run)
        env_file().unlink(missing_ok=True)
        (run / STATE_FILE).unlink(missing_ok=True)
    return [s for s in before.services if s.pid in pids]


def stop_kafka_node(index: int, kill: bool = False, timeout: float = 20.0) -> int:
    """Stop one broker node (for fault tests); ``up`` restarts it with its data.

    Returns the PID that was stopped. ``kill`` sends SIGKILL right away.
    """
    run = run_dir()
    pid = kafka_pid(run, index)
    if pid is None:
        raise SandboxError(f"Kafka node {index} of the sandbox is not running")
    if kill:
        os.kill(pid, signal.SIGKILL)
    stop_pids([pid], timeout)
    return pid


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """The variables of an env file written by ``up`` ({} if missing)."""
    try:
        text = (path or env_file()).read_text()
    except FileNotFoundError:
        return {}
    env = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env
