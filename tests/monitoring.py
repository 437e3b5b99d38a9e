"""Helpers for the monitoring assets: Prometheus' own tools as real processes, and the Grafana
dashboard read the way Grafana reads it (panels inside rows, variables substituted)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, wait_for

RULES = ROOT / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "windsurf-seats.json"

# What Grafana puts in place of its built-in variables, sized for a test scraping every second.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


def require_binary(name: str) -> str:
    """The path of a Prometheus tool; CI must have it (it installs Debian's prometheus)."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"{name} is not installed (apt-get install prometheus gives prometheus and promtool)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it, see .ci/run")
        pytest.skip(reason)
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule of a rules file, each with its group's name under `group`."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [{**rule, "group": g["name"]} for g in groups for rule in g["rules"]]


def alert_expr(name: str) -> str:
    return next(r["expr"] for r in load_rules() if r.get("alert") == name)


class QueryError(AssertionError):
    """Prometheus refused or failed a query."""


@dataclass
class Server:
    """A server of the Prometheus family (Prometheus, Alertmanager) started by a test."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Prometheus(Server):
    """A real Prometheus server started by a test."""

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes back as one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, seconds: float, step: float = 1.0) -> list[dict[str, Any]]:
        end = time.time()
        return list(
            self.api("query_range", query=expr, start=end - seconds, end=end, step=step)["result"]
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_prometheus(
    workdir: Path,
    targets: list[str],
    rules: Path = RULES,
    attempts: int = 3,
    extra: Mapping[str, Any] | None = None,
    flags: tuple[str, ...] = (),
) -> Prometheus:
    """Run Prometheus scraping `targets` (host:port) every second and evaluating `rules`
    every second, with `extra` top-level config (e.g. `alerting`) and command-line `flags`.
    It cannot bind port 0, so it gets a port just seen free, and another one if that was
    taken in between."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": "windsurf", "static_configs": [{"targets": targets}]}
                ],
                **(extra or {}),
            }
        )
    )
    proc, url, log = start_server(
        "prometheus",
        workdir,
        lambda port: [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *flags,
        ],
        attempts,
    )
    return Prometheus(proc, url, log)


def start_server(
    name: str, workdir: Path, command: Callable[[int], list[str]], attempts: int = 3
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Run `command(port)` until its /-/ready answers: such a server cannot bind port 0, so it
    gets a port just seen free, and another one if that was taken in between. Returns the
    process, its URL and its log."""
    for attempt in range(attempts):
        port = _free_port()
        log = workdir / f"{name}-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def ready(proc: subprocess.Popen[bytes] = proc, url: str = url) -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=30, what=f"{name} to be ready")
        if proc.poll() is None:
            return proc, url, log
        if "address already in use" not in log.read_text():
            raise AssertionError(f"{name} exited {proc.returncode}:\n{log.read_text()}")
    raise AssertionError(f"{name} found no free port in {attempts} attempts")


def load_dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but rows, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: Mapping[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def render(expr: str, values: Mapping[str, str]) -> str:
    """Substitute Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) the way a panel's query sees
    them; an undefined variable is an error, as it would be in Grafana."""

    def substitute(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in values:
            return values[name]
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        raise KeyError(f"undefined Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(substitute, expr)
