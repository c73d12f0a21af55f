"""The Kubernetes manifests: valid against the Kubernetes schemas (offline), and
carrying what the fast path needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from keyshift.config import Settings

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_workers_get_stable_ids_and_time_to_leave_together() -> None:
    spec = by_kind("StatefulSet", "keyshift-worker")["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    (worker,) = pod["containers"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["KEYSHIFT_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_config_map_is_a_valid_keyshift_configuration(
    monkeypatch: pytest.MonkeyPatch, no_keyshift_env: None
) -> None:
    data = by_kind("ConfigMap", "keyshift-config")["data"]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KEYSHIFT_INSTANCE_ID", "keyshift-worker-0")
    settings = Settings.build("wordcount")
    assert settings.group_protocol == "consumer" and not settings.static_membership


def test_worker_probes_and_scrape_use_the_operations_endpoint() -> None:
    template = by_kind("StatefulSet", "keyshift-worker")["spec"]["template"]
    (worker,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert int(env["KEYSHIFT_METRICS_PORT"]) == ports["ops"]
    assert env["KEYSHIFT_METRICS_HOST"] == "0.0.0.0"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["ops"])
    assert annotations["prometheus.io/path"] == "/metrics"
