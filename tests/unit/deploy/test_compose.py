"""Static checks that docker-compose.yml and the Dockerfile match keyshift.config.

Pure unit tests: nothing here needs Docker, Kafka or Redis.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from keyshift.config import ENV_PREFIX, Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KAFKA_PASSTHROUGH = ENV_PREFIX + "KAFKA_"
SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))

_DEFAULT_RE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def expand_defaults(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (as compose would with VAR unset)."""
    return _DEFAULT_RE.sub(lambda m: m.group("default") or "", value)


def env_mapping(raw: Any) -> dict[str, str]:
    """Compose ``environment`` in either map or list form, as a dict of strings."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    result: dict[str, str] = {}
    for item in raw:
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def is_known_setting(var: str) -> bool:
    assert var.startswith(ENV_PREFIX), var
    if var.startswith(KAFKA_PASSTHROUGH) and len(var) > len(KAFKA_PASSTHROUGH):
        return True
    name = var[len(ENV_PREFIX) :].lower()
    return name in SETTING_NAMES and name != "app_id" and name != "kafka"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose.get("services")
    assert isinstance(services, dict)
    return services


@pytest.fixture(scope="module")
def worker_env(services: dict[str, Any]) -> dict[str, str]:
    return env_mapping(services["worker"].get("environment"))


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, Any]) -> dict[str, str]:
    return env_mapping(services["kafka"].get("environment"))


# --------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by docker
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    instructions = []
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


# ------------------------------------------------------------------- tests


def test_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "redis", "worker"} <= services.keys()


def test_worker_can_scale(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker.get("build") is not None


def test_worker_waits_for_healthy_dependencies(services: dict[str, Any]) -> None:
    depends = services["worker"]["depends_on"]
    for name in ("kafka", "redis"):
        assert depends[name]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]


def test_worker_env_vars_are_real_settings(worker_env: dict[str, str]) -> None:
    keyshift_vars = [k for k in worker_env if k.startswith(ENV_PREFIX)]
    assert keyshift_vars
    unknown = [k for k in keyshift_vars if not is_known_setting(k)]
    assert not unknown, f"not keyshift settings: {unknown}"


def test_brokers_point_at_an_advertised_listener(
    worker_env: dict[str, str], kafka_env: dict[str, str]
) -> None:
    advertised = {
        urlsplit(listener.strip()).netloc
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    brokers = expand_defaults(worker_env["KEYSHIFT_BROKERS"]).split(",")
    for broker in brokers:
        assert broker.strip() in advertised, f"{broker} not in {sorted(advertised)}"


def test_state_points_at_redis_service(
    worker_env: dict[str, str], services: dict[str, Any]
) -> None:
    url = urlsplit(expand_defaults(worker_env["KEYSHIFT_STATE"]))
    assert url.scheme in ("redis", "rediss")
    assert url.hostname == "redis"
    assert url.hostname in services


def test_kafka_is_kraft_without_auto_create(kafka_env: dict[str, str]) -> None:
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    listeners = kafka_env["KAFKA_LISTENERS"]
    for port in ("9092", "9093", "29092"):
        assert f":{port}" in listeners
    controller = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}:" in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]


def test_host_ports_bound_to_loopback(services: dict[str, Any]) -> None:
    bindings = [
        (name, str(port)) for name, svc in services.items() for port in svc.get("ports", [])
    ]
    assert bindings
    for name, port in bindings:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_settings_accept_worker_env(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    expanded = {k: expand_defaults(v) for k, v in worker_env.items()}
    for key, value in expanded.items():
        monkeypatch.setenv(key, value)
    settings = Settings.build("x")
    assert settings.brokers == expanded["KEYSHIFT_BROKERS"]
    assert settings.state == expanded["KEYSHIFT_STATE"]
    if "KEYSHIFT_GUARANTEE" in expanded:
        assert settings.guarantee == expanded["KEYSHIFT_GUARANTEE"]


def test_dockerfile_entrypoint_is_worker() -> None:
    entrypoints = [args for kw, args in dockerfile_instructions() if kw == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the final stage"
    assert exec_form(entrypoints[-1]) == ["keyshift", "worker"]


def test_dockerfile_runs_as_non_root() -> None:
    users = [args for kw, args in dockerfile_instructions() if kw == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0", "")


def test_dockerfile_env_defaults_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    assert env
    unknown = [k for k in env if not is_known_setting(k)]
    assert not unknown, f"not keyshift settings: {unknown}"
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Settings.build("x")


def test_expand_defaults() -> None:
    assert expand_defaults("${KEYSHIFT_GUARANTEE:-at_least_once}") == "at_least_once"
    assert expand_defaults("${A-b}") == "b"
    assert expand_defaults("${A}") == ""
    assert expand_defaults("plain") == "plain"


def test_the_image_health_check_probes_the_workers_endpoint() -> None:
    env = dockerfile_env()
    settings = Settings.build(
        "x",
        metrics_port=env["KEYSHIFT_METRICS_PORT"],
        metrics_host=env["KEYSHIFT_METRICS_HOST"],
    )
    assert settings.metrics_host == "0.0.0.0"  # reachable inside the container's namespace
    checks = [args for kw, args in dockerfile_instructions() if kw == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK in the final stage"
    assert f"127.0.0.1:{settings.metrics_port}/healthz" in checks[-1]


def test_compose_workers_serve_the_endpoint_the_image_probes(worker_env: dict[str, str]) -> None:
    assert worker_env["KEYSHIFT_METRICS_PORT"] == dockerfile_env()["KEYSHIFT_METRICS_PORT"]
    assert worker_env["KEYSHIFT_METRICS_HOST"] == "0.0.0.0"
