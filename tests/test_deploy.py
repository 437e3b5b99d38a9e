"""The Kubernetes manifests, checked without a cluster: each is valid against the Kubernetes
schemas, they agree with each other (labels, ports, mounts, Secret keys), the hardening is in
place, the README's commands (create the Secret, apply the kustomization) leave the created key
alone, and the config they ship passes the exporter's own validation with that Secret's files."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.cli import DEFAULT_PORT
from exporter.config import ConfigError, parse_config
from tests.conftest import ROOT
from tests.test_cli import run

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


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is needed to render the kustomization (kubectl kustomize)"
    return found


def kubernetes_commands() -> str:
    """The README's sh block that creates the Secret and applies the kustomization."""
    section = (ROOT / "README.md").read_text().split("\n### Kubernetes\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@dataclass
class Walk:
    """What the README's Kubernetes commands did: each kubectl call, the Secret the `create
    secret` made, and every object the `apply -k` applied."""

    calls: list[str]
    secret: dict[str, Any]
    applied: list[dict[str, Any]]


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    """Run the README's block with bash, as written, against no cluster: `kubectl` is a stand-in
    that answers `create namespace`, makes the Secret with the real kubectl's
    `--dry-run=client -o yaml`, and applies with the real `kubectl kustomize`."""
    base = tmp_path_factory.mktemp("kubernetes")
    (base / "bin").mkdir()
    (base / "deploy").symlink_to(ROOT / "deploy")
    shim = base / "bin" / "kubectl"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {base}/calls\n'
        'case "$*" in\n'
        '  "create namespace "*) exit 0 ;;\n'
        f'  "apply -k "*) exec {kubectl()} kustomize "$3" > {base}/applied.yaml ;;\n'
        f'  *" create secret "*) exec {kubectl()} "$@" --dry-run=client -o yaml'
        f" > {base}/secret.yaml ;;\n"
        "esac\n"
        "exit 99\n"
    )
    shim.chmod(0o755)
    result = subprocess.run(
        ["bash", "-euc", kubernetes_commands()],
        cwd=base,
        env={"PATH": f"{base / 'bin'}:/usr/bin:/bin", "WINDSURF_SERVICE_KEY": "sk-real-key"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (base / "service-key").exists(), "the key file is removed once in the Secret"
    return Walk(
        calls=(base / "calls").read_text().splitlines(),
        secret=yaml.safe_load((base / "secret.yaml").read_text()),
        applied=list(yaml.safe_load_all((base / "applied.yaml").read_text())),
    )


def secret_files(walk: Walk) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in walk.secret["data"].items()}


def test_every_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert set(manifests()) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_and_the_created_secret_are_valid_kubernetes_with_no_unknown_fields(
    kinds: dict[str, dict[str, Any]], walk: Walk, version: str
) -> None:
    for kind in ("ConfigMap", "Deployment", "Service"):
        kubernetes_validate.validate(kinds[kind], version, strict=True)
    kubernetes_validate.validate(walk.secret, version, strict=True)


def test_kustomize_renders_everything_into_one_namespace(walk: Walk) -> None:
    assert {d["kind"] for d in walk.applied} == set(manifests())
    assert {d["metadata"]["namespace"] for d in walk.applied} == {"monitoring"}


def test_the_readme_sequence_creates_the_secret_and_the_apply_never_overwrites_it(
    walk: Walk, pod: dict[str, Any]
) -> None:
    assert [c.split(" --")[0] for c in walk.calls] == [
        "create namespace monitoring",
        "-n monitoring create secret generic windsurf-exporter",
        "apply -k deploy/kubernetes",
    ]
    assert walk.secret["metadata"] == {
        "name": "windsurf-exporter",
        "namespace": "monitoring",
        "creationTimestamp": None,
    }
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == walk.secret["metadata"]["name"]
    assert secret_files(walk)["service-key"] == "sk-real-key"
    assert len(secret_files(walk)["hash-salt"]) == 64
    assert [d["metadata"]["name"] for d in walk.applied if d["kind"] == "Secret"] == []


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


def test_shipped_config_passes_config_check_with_the_created_secrets_files(
    tmp_path: Path,
    pod: dict[str, Any],
    container: dict[str, Any],
    kinds: dict[str, dict[str, Any]],
    walk: Walk,
) -> None:
    """The pod's files laid out under tmp_path: the ConfigMap's config and the README's Secret
    at their mount paths; the exporter's own --config.check accepts them."""
    objects = {**kinds, "Secret": walk.secret}
    (flag,) = [a for a in container["args"] if a.startswith("--config.file=")]
    config_path = flag.split("=", 1)[1]
    kind, _, key = mounted(config_path, pod, container, objects)
    assert kind == "ConfigMap"
    text = kinds["ConfigMap"]["data"][key]
    raw = yaml.safe_load(text)
    files = {
        "api.service_key_file": raw["api"]["service_key_file"],
        "labels.hash_salt_file": raw["labels"]["hash_salt_file"],
    }
    for where, path in files.items():
        kind, _, key = mounted(path, pod, container, objects)
        assert kind == "Secret", f"{where}: {path} should come from the Secret"
        assert key in secret_files(walk), f"{where}: the Secret has no key {key!r}"
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(secret_files(walk)[key])
    local_config = tmp_path / config_path.lstrip("/")
    local_config.parent.mkdir(parents=True, exist_ok=True)
    local_config.write_text(
        text.replace("/etc/windsurf-exporter/", f"{tmp_path}/etc/windsurf-exporter/")
    )
    result = run("--config.check", f"--config.file={local_config}")
    assert (result.returncode, result.stdout) == (
        0,
        f"OK: {local_config} is valid (1 group(s), 2 window(s))\n",
    ), result.stderr
    assert raw["labels"]["user"] == "hash"


def test_the_old_placeholder_secret_is_refused_by_the_exporter(
    tmp_path: Path, kinds: dict[str, dict[str, Any]]
) -> None:
    """A Secret still holding the placeholders of the former secret.yaml stops the exporter,
    instead of every poll getting a 401 and every user an unsalted pseudonym."""
    raw = yaml.safe_load(kinds["ConfigMap"]["data"]["config.yaml"])
    for key, placeholder in (
        ("service-key", "REPLACE-with-a-service-key-with-Teams-Read-only-permission"),
        ("hash-salt", "REPLACE-with-a-long-random-string"),
    ):
        (tmp_path / key).write_text(placeholder)
    raw["api"]["service_key_file"] = str(tmp_path / "service-key")
    raw["labels"]["hash_salt_file"] = str(tmp_path / "hash-salt")
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ={})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "api.service_key_file",
        "labels.hash_salt_file",
    ]


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
