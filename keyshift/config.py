"""One typed settings object for an application, with ``KEYSHIFT_*`` env overrides.

Precedence: explicit argument > environment variable > default. Every value is
validated when the object is built, and a bad value raises
:class:`~keyshift.errors.ConfigError` naming the setting, so a worker fails at
start rather than mid-stream.

Extra librdkafka settings (SASL, SSL, ...) pass through ``kafka`` or env vars
``KEYSHIFT_KAFKA_<NAME>`` where ``<NAME>`` is the librdkafka name upper-cased
with dots as underscores (``KEYSHIFT_KAFKA_SASL_MECHANISM`` -> ``sasl.mechanism``).
The properties keyshift sets from its own settings (:data:`KEYSHIFT_OWNED_KAFKA`)
are refused there. Redis AUTH/TLS go in the state URL
(``rediss://user:password@host:6380/0``); error messages show URLs only redacted.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from keyshift.errors import ConfigError
from keyshift.urls import redact, validate_redis_url

Guarantee = Literal["at_least_once", "exactly_once"]
GroupProtocol = Literal["classic", "consumer"]
OnError = Literal["dlq", "raise"]
Migration = Literal["auto", "progressive", "stop-and-copy", "replay"]

ENV_PREFIX = "KEYSHIFT_"
DEFAULT_BROKERS = "127.0.0.1:9092"
DEFAULT_STATE = "redis://127.0.0.1:6379/0"

#: ``transaction.timeout.ms`` of keyshift's transactional producers unless the
#: ``kafka`` settings give one. The broker aborts a transaction open longer, and
#: under exactly_once one stays open for a commit interval.
DEFAULT_TRANSACTION_TIMEOUT_MS = 10_000

#: librdkafka properties keyshift derives from its own settings, each with the
#: setting to use instead. Given through ``kafka`` they would break what keyshift
#: relies on: one consumer group per app, offsets committed only with the state,
#: the isolation level and transactions of the guarantee, the assignor migration
#: is built for.
KEYSHIFT_OWNED_KAFKA: dict[str, str] = {
    "group.id": "app_id (the consumer group is the app id)",
    "group.instance.id": "instance_id and static_membership",
    "isolation.level": "guarantee (exactly_once reads read_committed)",
    "enable.auto.commit": "commit_interval_ms (offsets are committed with the state)",
    "enable.auto.offset.store": "commit_interval_ms (offsets are committed with the state)",
    "transactional.id": "guarantee=exactly_once with instance_id (transactional ids "
    "derive from them)",
    "enable.idempotence": "guarantee (keyshift's producers are always idempotent)",
    "group.protocol": "group_protocol",
    "partition.assignment.strategy": "group_protocol (classic uses cooperative-sticky)",
}

_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper())


def _choice(setting: str, value: str, allowed: Any) -> str:
    options = get_args(allowed)
    if value not in options:
        raise ConfigError(setting, f"{value!r} is not one of {', '.join(options)}")
    return value


def _integer(setting: str, value: Any) -> int:
    """``value`` as an int, refusing what ``int()`` would round or reinterpret: an
    int (not a bool), a float with no fraction, or a string of digits (env vars)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    raise ConfigError(setting, f"{value!r} is not an integer")


def _positive_int(setting: str, value: Any) -> int:
    number = _integer(setting, value)
    if number <= 0:
        raise ConfigError(setting, f"must be > 0, got {number}")
    return number


def _port(setting: str, value: Any) -> int | None:
    """A TCP port (0: any free one), or None when not given (the endpoint is off)."""
    if value is None or value == "":
        return None
    number = _integer(setting, value)
    if not 0 <= number <= 65535:
        raise ConfigError(setting, f"must be a TCP port (0-65535), got {number}")
    return number


def _host(setting: str, value: Any) -> str:
    host = str(value).strip()
    if not host:
        raise ConfigError(setting, "no address given")
    return host


def _share(setting: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{value!r} is not a number") from None
    if not 0 < number <= 1:
        raise ConfigError(setting, f"must be in (0, 1], got {number}")
    return number


def _bool(setting: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(setting, f"{value!r} is not a boolean (true/false)")


def kafka_overrides_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings given as ``KEYSHIFT_KAFKA_<NAME>`` env vars."""
    env = os.environ if environ is None else environ
    prefix = ENV_PREFIX + "KAFKA_"
    return {
        key[len(prefix) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(prefix) and len(key) > len(prefix)
    }


def _check_app_id(app_id: str) -> None:
    if not app_id or not all((c.isascii() and c.isalnum()) or c in "._-" for c in app_id):
        raise ConfigError("app_id", f"{app_id!r} must be non-empty and use [A-Za-z0-9._-]")
    if "--" in app_id or app_id.endswith("-"):
        raise ConfigError(
            "app_id",
            f"{app_id!r} must not contain '--' or end with '-': internal topics are "
            "named <app_id>--<suffix>, and their first '--' ends the app id",
        )


def _instance_id(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not _INSTANCE_ID.fullmatch(text):
        raise ConfigError(
            "instance_id",
            f"{text!r} must be 1-200 characters of [A-Za-z0-9._-]; it becomes the "
            "group.instance.id, part of client and transactional ids, and file names",
        )
    return text


def _state(value: Any) -> str:
    state = str(value)
    scheme = state.split("://", 1)[0] if "://" in state else ""
    if scheme == "memory":
        return state
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "state", f"{redact(state)!r}: expected redis://, rediss://, unix:// or memory://"
        )
    validate_redis_url("state", state)
    return state


def _peers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        peers = tuple(p.strip() for p in value.split(",") if p.strip())
    elif isinstance(value, list | tuple):
        for i, peer in enumerate(value):
            if not isinstance(peer, str):
                raise ConfigError(
                    "peers", f"element {i} is a {type(peer).__name__}, not a URL string"
                )
        peers = tuple(value)
    else:
        raise ConfigError(
            "peers",
            f"a {type(value).__name__}; expected comma-separated URLs or a list of them",
        )
    for peer in peers:
        # Named memory:// stores are peers of one another within a process.
        if not peer.startswith("memory://"):
            validate_redis_url("peers", peer)
    return peers


def _replication_factor(value: Any) -> int:
    number = _integer("replication_factor", value)
    if number == 0 or number < -1:
        raise ConfigError(
            "replication_factor", f"must be -1 (the broker's default) or >= 1, got {number}"
        )
    return number


def _check_kafka(kafka: Mapping[str, str]) -> None:
    for name in kafka:
        instead = KEYSHIFT_OWNED_KAFKA.get(name)
        if instead is not None:
            raise ConfigError(
                f"kafka.{name}", f"keyshift sets it; use the setting {instead} instead"
            )


def transaction_timeout_ms(kafka: Mapping[str, str]) -> int:
    """The transactional producers' ``transaction.timeout.ms``: from ``kafka`` if
    given, else :data:`DEFAULT_TRANSACTION_TIMEOUT_MS`."""
    raw = kafka.get("transaction.timeout.ms")
    if raw is None:
        return DEFAULT_TRANSACTION_TIMEOUT_MS
    return _positive_int("kafka.transaction.timeout.ms", raw)


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one keyshift application (shared by all its instances).

    Attributes:
        app_id: application id; the consumer group and the prefix of internal topics.
            ``[A-Za-z0-9._-]``, without ``--`` and not ending in ``-``: internal topics
            are named ``<app_id>--<suffix>``, so the first ``--`` in a topic name ends
            the app id, and no app's topics look like another's.
        brokers: Kafka bootstrap servers (env ``KEYSHIFT_BROKERS``).
        state: state backend URL, ``redis://...``, ``rediss://...`` or ``memory://``
            (env ``KEYSHIFT_STATE``).
        guarantee: ``at_least_once`` (default) or ``exactly_once``
            (env ``KEYSHIFT_GUARANTEE``).
        commit_interval_ms: how often state is flushed and offsets committed
            (env ``KEYSHIFT_COMMIT_INTERVAL_MS``; default 1000, 100 with exactly_once).
            With exactly_once it must be below the transaction timeout
            (``transaction.timeout.ms`` in ``kafka``, default
            :data:`DEFAULT_TRANSACTION_TIMEOUT_MS`): a transaction stays open for one
            interval, and the broker aborts one open longer than its timeout.
        batch_size: most records taken from Kafka per poll (env ``KEYSHIFT_BATCH_SIZE``).
        instance_id: stable id of this instance (env ``KEYSHIFT_INSTANCE_ID``): names
            it to the other workers, in its client and transactional ids and, with
            ``static_membership``, as its ``group.instance.id``. 1-200 characters of
            ``[A-Za-z0-9._-]`` (Kafka takes those characters, up to 249).
        static_membership: use ``instance_id`` as ``group.instance.id`` (KIP-345): a
            crashed worker restarted within the session timeout gets its
            partitions back without a rebalance. A stopped one still hands them
            over at once under the classic protocol; under ``consumer`` librdkafka
            cannot make a static member leave for good, so a stop then waits for
            the session timeout. Off by default: with keyshift's fast migrations a
            rebalance costs less than that wait (env ``KEYSHIFT_STATIC_MEMBERSHIP``).
        group_protocol: ``consumer`` (KIP-848, the default: the shortest pauses;
            the broker must allow keyshift's group configs, see
            ``docs/deployment.md``) or ``classic`` (cooperative-sticky)
            (env ``KEYSHIFT_GROUP_PROTOCOL``).
        on_error: what a record the processing code raises on does: ``dlq`` sends
            it to ``<app>--dlq``; ``raise`` stops the worker. Records that cannot
            be decoded go to the dead-letter topic either way
            (env ``KEYSHIFT_ON_ERROR``).
        migration: how a task's state reaches a new owner (env ``KEYSHIFT_MIGRATION``).
        cache_max_entries: write-back cache entries kept per task between commits
            (env ``KEYSHIFT_CACHE_MAX_ENTRIES``).
        copy_share: the most of a worker's time a progressive migration's background
            copy may take, in (0, 1]. 1 (the default) copies whenever no records
            wait; lower values leave CPU to co-located processes but make the copy,
            and the time the source must stay reachable, longer
            (env ``KEYSHIFT_COPY_SHARE``).
        peers: Redis URLs, with credentials, of other instances' state, used to
            transfer state directly (env ``KEYSHIFT_PEERS``, comma-separated).
            Published locations never carry secrets; they are matched against these.
        metrics_port: the port of the worker's operations endpoint: Prometheus
            ``/metrics``, ``/healthz`` and ``/readyz`` (env ``KEYSHIFT_METRICS_PORT``;
            off when not given; 0 picks a free port).
        metrics_host: the address that endpoint binds (env ``KEYSHIFT_METRICS_HOST``;
            default 127.0.0.1: a container sets 0.0.0.0 so that its
            orchestrator's probes reach it).
        kafka: extra librdkafka settings passed to every client (SASL/SSL, ...); not
            those in :data:`KEYSHIFT_OWNED_KAFKA`, which keyshift sets itself.
        create_topics: whether a worker creates the topics the app needs that are
            missing (internal topics and sinks). On by default, for the sandbox;
            off in a cluster whose topics are set up ahead of a deployment
            (``keyshift topics apply``): a worker then fails at start, listing the
            missing topics (env ``KEYSHIFT_CREATE_TOPICS``).
        replication_factor: replication factor of the topics keyshift creates, and
            the least a worker and ``keyshift topics validate`` accept on the app's
            topics; -1 (the default) leaves it to the broker's
            ``default.replication.factor`` and accepts any. At 2 or more, keyshift's
            own topics also get ``min.insync.replicas``, one less, at most 2
            (env ``KEYSHIFT_REPLICATION_FACTOR``).
    """

    app_id: str
    brokers: str = DEFAULT_BROKERS
    state: str = DEFAULT_STATE
    guarantee: Guarantee = "at_least_once"
    commit_interval_ms: int = 1000
    batch_size: int = 5000
    instance_id: str | None = None
    static_membership: bool = False
    group_protocol: GroupProtocol = "consumer"
    on_error: OnError = "dlq"
    migration: Migration = "auto"
    cache_max_entries: int = 200_000
    copy_share: float = 1.0
    peers: tuple[str, ...] = ()
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    kafka: Mapping[str, str] = field(default_factory=dict)
    create_topics: bool = True
    replication_factor: int = -1

    @classmethod
    def build(cls, app_id: str, **given: Any) -> Settings:
        """Build settings from explicit values (None = not given), env vars, defaults.

        Raises:
            ConfigError: a value is invalid, or a name is not a setting (a typo
                would otherwise be silently ignored).
        """
        _check_app_id(app_id)
        known = {f.name for f in fields(cls)}
        for name in given:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(name, f"not a keyshift setting{hint}")

        def pick(name: str, default: Any) -> Any:
            if given.get(name) is not None:
                return given[name]
            env = _env(name)
            return default if env is None else env

        guarantee = _choice("guarantee", pick("guarantee", "at_least_once"), Guarantee)
        default_interval = 100 if guarantee == "exactly_once" else 1000
        kafka = dict(kafka_overrides_from_env())
        kafka.update({k: str(v) for k, v in (given.get("kafka") or {}).items()})
        _check_kafka(kafka)
        brokers = str(pick("brokers", DEFAULT_BROKERS))
        if not brokers.strip():
            raise ConfigError("brokers", "no bootstrap server given")
        state = _state(pick("state", DEFAULT_STATE))
        commit_interval_ms = _positive_int(
            "commit_interval_ms", pick("commit_interval_ms", default_interval)
        )
        if guarantee == "exactly_once":
            timeout = transaction_timeout_ms(kafka)
            if commit_interval_ms >= timeout:
                raise ConfigError(
                    "commit_interval_ms",
                    f"{commit_interval_ms} must be below the transaction timeout "
                    f"({timeout} ms, kafka.transaction.timeout.ms) under exactly_once: a "
                    "transaction stays open for one interval, and the broker aborts it "
                    "after the timeout",
                )
        return cls(
            app_id=app_id,
            brokers=brokers,
            state=state,
            guarantee=guarantee,  # type: ignore[arg-type]
            commit_interval_ms=commit_interval_ms,
            batch_size=_positive_int("batch_size", pick("batch_size", 5000)),
            instance_id=_instance_id(pick("instance_id", None)),
            static_membership=_bool("static_membership", pick("static_membership", False)),
            group_protocol=_choice(  # type: ignore[arg-type]
                "group_protocol", pick("group_protocol", "consumer"), GroupProtocol
            ),
            on_error=_choice("on_error", pick("on_error", "dlq"), OnError),  # type: ignore[arg-type]
            migration=_choice("migration", pick("migration", "auto"), Migration),  # type: ignore[arg-type]
            cache_max_entries=_positive_int(
                "cache_max_entries", pick("cache_max_entries", 200_000)
            ),
            copy_share=_share("copy_share", pick("copy_share", 1.0)),
            peers=_peers(pick("peers", ())),
            metrics_port=_port("metrics_port", pick("metrics_port", None)),
            metrics_host=_host("metrics_host", pick("metrics_host", "127.0.0.1")),
            kafka=kafka,
            create_topics=_bool("create_topics", pick("create_topics", True)),
            replication_factor=_replication_factor(pick("replication_factor", -1)),
        )

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly_once"

    def client_config(self) -> dict[str, str]:
        """Settings shared by every Kafka client of this app."""
        config = {"bootstrap.servers": self.brokers}
        config.update(self.kafka)
        return config
