"""The Kubernetes manifests, checked without a cluster: each is valid against the Kubernetes
schemas, they agree with each other (labels, ports, mounts, Secret keys), the hardening is in
place, and the config they ship passes the exporter's own validation."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.cli import DEFAULT_PORT
from exporter.config import parse_config
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The oldest Kubernetes the schemas cover, and the newest.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def manifests() -> dict[str, dict[str, Any]]:
    """Every resource of the folder by kind (one resource per file)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        (document,) = list(yaml.safe_load_all(path.read_text()))
        assert document["kind"] not in found, f"{path.name}: a second {document['kind']}"
        found[document["kind"]] = document
    return found


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def pod(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = kinds["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return dict(only)


def test_every_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {"ConfigMap", "Secret", "Deployment", "Service", "ServiceMonitor"} <= set(manifests())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_are_valid_kubernetes_with_no_unknown_fields(
    kinds: dict[str, dict[str, Any]], version: str
) -> None:
    for kind in ("ConfigMap", "Secret", "Deployment", "Service"):
        kubernetes_validate.validate(kinds[kind], version, strict=True)


def test_kustomize_renders_everything_into_one_namespace() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    documents = list(yaml.safe_load_all(rendered))
    assert {d["kind"] for d in documents} == set(manifests())
    assert {d["metadata"]["namespace"] for d in documents} == {"monitoring"}


def test_pod_runs_hardened(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


def test_image_user_matches_the_pod_user(pod: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = pod["securityContext"]["runAsUser"]
    group = pod["securityContext"]["runAsGroup"]
    assert f"\nUSER {user}:{group}\n" in dockerfile


def test_image_tag_is_the_package_version(container: dict[str, Any]) -> None:
    assert container["image"].rsplit(":", 1)[1] == VERSION


def test_probes_service_and_service_monitor_meet_on_the_metrics_port(
    kinds: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    (port,) = container["ports"]
    assert port["containerPort"] == DEFAULT_PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": port["name"]}

    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = kinds["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]

    monitor = kinds["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [service_port["name"]]
    assert {e["path"] for e in monitor["endpoints"]} == {"/metrics"}


def mounted(
    path: str, pod: dict[str, Any], container: dict[str, Any], kinds: dict[str, dict[str, Any]]
) -> tuple[str, str, str]:
    """Which volume and key a file path in the container comes from: (volume kind, object
    name, key), failing when no mount provides it."""
    file = PurePosixPath(path)
    for mount in container["volumeMounts"]:
        if file.parent != PurePosixPath(mount["mountPath"]):
            continue
        assert mount.get("readOnly") is True, f"{mount['mountPath']} is mounted writable"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        if "secret" in volume:
            name, kind = volume["secret"]["secretName"], "Secret"
        else:
            name, kind = volume["configMap"]["name"], "ConfigMap"
        assert kinds[kind]["metadata"]["name"] == name, f"{path}: no {kind} named {name}"
        return kind, name, file.name
    raise AssertionError(f"{path}: no volume is mounted at {file.parent}")


def test_shipped_config_passes_the_exporters_validation_with_the_mounted_files(
    tmp_path: Path,
    pod: dict[str, Any],
    container: dict[str, Any],
    kinds: dict[str, dict[str, Any]],
) -> None:
    (flag,) = [a for a in container["args"] if a.startswith("--config.file=")]
    kind, _, key = mounted(flag.split("=", 1)[1], pod, container, kinds)
    assert kind == "ConfigMap"
    raw = yaml.safe_load(kinds["ConfigMap"]["data"][key])

    # The files the config names, written where the pod would see them, under tmp_path.
    secret = kinds["Secret"]["stringData"]
    files = {
        "api.service_key_file": raw["api"]["service_key_file"],
        "labels.hash_salt_file": raw["labels"]["hash_salt_file"],
    }
    for where, path in files.items():
        kind, _, key = mounted(path, pod, container, kinds)
        assert kind == "Secret", f"{where}: {path} should come from the Secret"
        assert key in secret, f"{where}: the Secret has no key {key!r}"
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(secret[key])
    raw["api"]["service_key_file"] = str(tmp_path / files["api.service_key_file"].lstrip("/"))
    raw["labels"]["hash_salt_file"] = str(tmp_path / files["labels.hash_salt_file"].lstrip("/"))

    config = parse_config(raw, source="configmap.yaml", environ={}, require_key=False)
    assert config.labels.user == "hash"
    assert config.labels.hash_salt.reveal() == secret["hash-salt"]
    assert config.warnings() == []


def test_secret_volume_is_readable_by_the_pod_group_only(pod: dict[str, Any]) -> None:
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def expected_prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule the Operator loads: exactly the groups of prometheus/rules.yml."""
    rules = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "windsurf-exporter",
            "labels": {
                "app.kubernetes.io/name": "windsurf-exporter",
                "app.kubernetes.io/component": "exporter",
            },
        },
        "spec": {"groups": rules["groups"]},
    }


def test_the_prometheus_rule_holds_exactly_the_rules_file() -> None:
    """Regenerate after editing prometheus/rules.yml: UPDATE_GOLDEN=1 uv run pytest."""
    path = DEPLOY / "prometheusrule.yaml"
    expected = expected_prometheus_rule()
    if os.environ.get("UPDATE_GOLDEN"):
        header = (
            "# Generated from prometheus/rules.yml by tests/test_deploy.py"
            " (UPDATE_GOLDEN=1 uv run pytest);\n# do not edit by hand."
            " Label it for your Operator's ruleSelector.\n"
        )
        path.write_text(header + yaml.safe_dump(expected, sort_keys=False, width=100))
    assert yaml.safe_load(path.read_text()) == expected
