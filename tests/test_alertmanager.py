"""Alerts end to end: the demo exporter (a real process), a real Prometheus with the shipped
rules (`for:` shortened in a copy) and a real Alertmanager with the shipped alertmanager.yml
(its webhooks pointed at this test, its waits shortened). What arrives is what a person reads:
how many notifications, their labels, the text of a never-used seat, an idle seat and a group.
Then the exporter is stopped until Prometheus has lost the idle seats, and restarted: no alert
resolves (keep_firing_for), so nothing is notified again."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.demo import DAY, Member, synthetic_team
from tests.conftest import ROOT, wait_for
from tests.monitoring import (
    RULES,
    Prometheus,
    Server,
    promtool,
    require_binary,
    start_prometheus,
    start_server,
)

ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
ALERTMANAGER = "prometheus-alertmanager"
FOR = "2s"
# Absence is what the test causes on purpose: it keeps its real `for:` so the gap stays silent.
KEEPS_ITS_FOR = {"WindsurfExporterAbsent"}
SEAT = "WindsurfSeatIdle"
GROUP = "WindsurfGroupIdleSeatsHigh"


def require_alertmanager() -> str:
    return require_binary(ALERTMANAGER)


def test_shipped_alertmanager_config_is_valid() -> None:
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_shipped_prometheus_config_sends_alerts_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "9093:9093" in compose["services"]["alertmanager"]["ports"]
    assert "alertmanager" in compose["services"]["prometheus"]["depends_on"]
    assert promtool("check", "config", ROOT / "prometheus" / "prometheus.yml").returncode == 0


class Webhook:
    """A webhook receiver on 127.0.0.1:0 keeping every notification Alertmanager posts, with
    the path it was posted to (one per receiver)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook._lock:
                    hook.received.append({**body, "path": self.path})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def notifications(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager(Server):
    """A real Alertmanager started by a test."""

    def api(self, path: str) -> Any:
        return httpx.get(f"{self.url}/api/v2/{path}", timeout=10).json()

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        )


def alertmanager_config(webhook: Webhook) -> dict[str, Any]:
    """The shipped config with its webhooks pointed at `webhook` (one path per receiver) and
    every wait shortened to a second; nothing repeats within a test."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return config


def start_alertmanager(workdir: Path, config: dict[str, Any]) -> Alertmanager:
    """Alertmanager alone (no cluster), with `config`."""
    binary = require_alertmanager()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    proc, url, log = start_server(
        "alertmanager",
        workdir,
        lambda port: [
            binary,
            f"--config.file={path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
    )
    return Alertmanager(proc, url, log)


def shortened_rules(path: Path) -> Path:
    """rules.yml with every alert's `for:` shortened to FOR (but KEEPS_ITS_FOR); the rest,
    keep_firing_for included, as shipped."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and rule["alert"] not in KEEPS_ITS_FOR:
                rule["for"] = FOR
    path.write_text(yaml.safe_dump(rules))
    return path


class DemoExporter:
    """`python -m exporter --demo` as a real process, restartable on the same address."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = "127.0.0.1:0"
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"exporter-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "--demo", "--web.listen-address", self.address],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

        def listening() -> str | None:
            assert self.proc is not None
            for line in log.read_text().splitlines():
                if "listen=" in line:
                    return line.split("listen=")[1].split()[0].removeprefix("http://")
            if self.proc.poll() is not None:
                raise AssertionError("exporter exited early:\n" + log.read_text())
            return None

        self.address = wait_for(listening, timeout=30, what="the exporter's startup line")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class Scenario:
    """What arrived: before the restart, and after it until Alertmanager had flushed every
    group again; the firing alerts as Prometheus and Alertmanager saw them."""

    prometheus: Prometheus
    before: list[dict[str, Any]]
    after: list[dict[str, Any]]
    firing: list[dict[str, Any]]  # Prometheus' firing alerts when the notifications were in
    starts_before: dict[str, str]  # Alertmanager's startsAt per alert fingerprint
    starts_after: dict[str, str]
    at: float  # when the notifications were all in
    team: dict[str, Member] = field(default_factory=dict)


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels["alertname"], labels.get("group", "")


def _firing(prometheus: Prometheus) -> list[dict[str, Any]]:
    alerts = prometheus.api("alerts")["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


def _all_notified(prometheus: Prometheus, webhook: Webhook) -> list[dict[str, Any]] | None:
    """Prometheus' firing alerts, once every one of them has arrived in a notification."""
    firing = _firing(prometheus)
    notified = {
        json.dumps(a["labels"], sort_keys=True)
        for n in webhook.notifications()
        for a in n["alerts"]
    }
    wanted = {json.dumps(a["labels"], sort_keys=True) for a in firing}
    seats = [a for a in firing if a["labels"]["alertname"] == SEAT]
    return firing if seats and wanted <= notified else None


def _starts(manager: Alertmanager) -> dict[str, str]:
    return {a["fingerprint"]: a["startsAt"] for a in manager.api("alerts")}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    require_binary("prometheus")
    require_alertmanager()
    tmp = tmp_path_factory.mktemp("alerting")
    webhook = Webhook()
    exporter = DemoExporter(tmp)
    manager: Alertmanager | None = None
    prometheus: Prometheus | None = None
    try:
        manager = am = start_alertmanager(tmp / "alertmanager", alertmanager_config(webhook))
        exporter.start()
        prometheus = prom = start_prometheus(
            tmp / "prometheus",
            [exporter.address],
            rules=shortened_rules(tmp / "rules.yml"),
            extra={
                "alerting": {
                    "alertmanagers": [
                        {"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}
                    ]
                }
            },
            flags=("--rules.alert.resend-delay=1s",),
        )
        firing = wait_for(
            lambda: _all_notified(prom, webhook),
            timeout=60,
            what="a notification for every firing alert",
        )
        at = time.time()
        before = webhook.notifications()
        starts_before = _starts(am)

        # The gap: until Prometheus has seen the target down and lost the idle seats.
        exporter.stop()
        wait_for(
            lambda: prom.query("up == 0") and not prom.query("windsurf:user_idle_seat_seconds"),
            timeout=30,
            what="Prometheus to lose the exporter's series",
        )
        exporter.start()
        restarted = _rfc3339(time.time())
        wait_for(
            lambda: prom.query("windsurf:user_idle_seat_seconds"),
            timeout=30,
            what="the idle seats back after the restart",
        )
        # Alertmanager has heard from Prometheus since, and flushed every group twice more
        # (each flush asks the notification log whether anything is new to send).
        queries = am.metric("alertmanager_nflog_queries_total")
        groups = len({_key(a["labels"]) for a in firing})
        wait_for(
            lambda: (
                all(a["updatedAt"] > restarted for a in am.api("alerts"))
                and am.metric("alertmanager_nflog_queries_total") >= queries + 2 * groups
            ),
            timeout=30,
            what="Alertmanager to hear the alerts again and flush every group",
        )
        after = webhook.notifications()[len(before) :]
        team = {m.email: m for m in synthetic_team()}
        yield Scenario(prom, before, after, firing, starts_before, _starts(am), at, team)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if manager is not None:
            manager.stop()
        exporter.stop()
        webhook.stop()


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))


def _notification(scenario: Scenario, alertname: str, group: str = "") -> dict[str, Any]:
    (found,) = [
        n
        for n in scenario.before
        if n["groupLabels"].get("alertname") == alertname
        and n["groupLabels"].get("group", "") == group
    ]
    return found


def test_one_notification_per_alert_name_and_group_each_with_all_its_alerts(
    scenario: Scenario,
) -> None:
    keys = [_key(n["groupLabels"]) for n in scenario.before]
    assert len(keys) == len(set(keys)), "a group was notified twice"
    expected: dict[tuple[str, str], int] = {}
    for alert in scenario.firing:
        expected[_key(alert["labels"])] = expected.get(_key(alert["labels"]), 0) + 1
    assert {_key(n["groupLabels"]): len(n["alerts"]) for n in scenario.before} == expected
    assert all(n["status"] == "firing" for n in scenario.before)
    # On the demo team: the idle seats (one alert per person), the groups over 15% idle, and
    # the seats bought that nobody holds (the fake sells seats in blocks of 25).
    assert {name for name, _ in expected} == {SEAT, GROUP, "WindsurfUnassignedSeats"}
    assert expected[(SEAT, "")] > 40


def test_seat_alerts_arrive_as_one_digest_and_group_alerts_on_the_oncall_route(
    scenario: Scenario,
) -> None:
    digest = _notification(scenario, SEAT)
    assert digest["receiver"] == "windsurf-digest"
    assert digest["path"] == "/windsurf-digest"
    assert digest["groupLabels"] == {"alertname": SEAT}
    assert digest["commonLabels"] == {"alertname": SEAT, "severity": "info"}
    common = digest["commonAnnotations"]
    assert common["grouped"].startswith("Paid Windsurf seats nobody has used for weeks")
    assert common["runbook_url"].endswith("README.md#windsurfseatidle")
    assert common["dashboard"] == "http://localhost:3000/d/windsurf-seats/windsurf-seats"
    for alert in digest["alerts"]:
        labels = alert["labels"]
        assert set(labels) <= {
            "alertname",
            "severity",
            "user",
            "name",
            "email",
            "role",
            "groups",
            "instance",
            "job",
        }
        member = scenario.team[labels["user"]]
        assert labels.get("groups", "") == ",".join(sorted(member.groups))
        assert labels["name"] == member.name
    groups = [n for n in scenario.before if n["groupLabels"]["alertname"] == GROUP]
    assert groups
    for notification in groups:
        assert notification["receiver"] == "windsurf-oncall"
        assert notification["commonLabels"]["severity"] == "warning"
        assert set(notification["commonAnnotations"]) == {
            "summary",
            "description",
            "grouped",
            "runbook_url",
            "dashboard",
        }


def _at(scenario: Scenario, expr: str) -> list[dict[str, Any]]:
    return list(scenario.prometheus.api("query", query=expr, time=scenario.at)["result"])


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def _groups(member: Member) -> str:
    if not member.groups:
        return "no group"
    noun = "groups" if len(member.groups) > 1 else "group"
    return f"{noun} {', '.join(sorted(member.groups))}"


def _seat(scenario: Scenario, profile: str) -> tuple[Member, dict[str, Any]]:
    """A seat alert of someone of this profile whose days idle are not about to tick over."""
    for alert in _notification(scenario, SEAT)["alerts"]:
        member = scenario.team[alert["labels"]["user"]]
        (idle,) = _at(scenario, f'windsurf:user_idle_seat_seconds{{user="{member.email}"}}')
        days = float(idle["value"][1]) / DAY
        if member.profile == profile and 0.01 < days % 1 < 0.99:
            return member, alert
    raise AssertionError(f"no {profile} seat alerted")


THRESHOLD = (
    "A seat is idle after 14 days unused (windsurf:threshold:idle_seat_seconds). Reclaim the"
    " seat or check in with them."
)


def test_a_never_used_seat_reads_never_used_since_signup(scenario: Scenario) -> None:
    member, alert = _seat(scenario, "never")
    (signup,) = _at(
        scenario, f'max(windsurf_user_signup_timestamp_seconds{{user="{member.email}"}})'
    )
    since = float(signup["value"][1])
    days = math.floor((scenario.at - since) / DAY)
    who = f"{member.name} ({member.email})"
    assert alert["annotations"]["summary"] == f"Idle Windsurf seat: {who}, in {_groups(member)}"
    assert alert["annotations"]["description"] == (
        f"{who}, in {_groups(member)}, holds a paid Windsurf seat and has never used it since"
        f" signup on {_date(since)} ({days} days ago). {THRESHOLD}"
    )


def test_an_idle_seat_reads_last_used_feature_on_date(scenario: Scenario) -> None:
    member, alert = _seat(scenario, "idle")
    (last,) = _at(
        scenario,
        "topk(1, max by (feature)"
        f' (windsurf_user_last_usage_timestamp_seconds{{user="{member.email}"}}))',
    )
    used = float(last["value"][1])
    days = math.floor((scenario.at - used) / DAY)
    who = f"{member.name} ({member.email})"
    assert alert["annotations"]["description"] == (
        f"{who}, in {_groups(member)}, holds a paid Windsurf seat and last used"
        f" {last['metric']['feature']} on {_date(used)} ({days} days ago). {THRESHOLD}"
    )


def test_a_group_alert_reads_n_of_m_billable_seats_and_the_threshold(scenario: Scenario) -> None:
    notification = next(n for n in scenario.before if n["groupLabels"]["alertname"] == GROUP)
    group = notification["groupLabels"]["group"]
    (alert,) = notification["alerts"]
    (idle,) = _at(scenario, f'windsurf:group_idle_seats{{group="{group}"}}')
    (billable,) = _at(scenario, f'windsurf:group_billable_seats{{group="{group}"}}')
    n, m = int(float(idle["value"][1])), int(float(billable["value"][1]))
    assert n / m > 0.15
    share = alert["annotations"]["summary"].rpartition("(")[2].rstrip(")")
    assert float(share.rstrip("%")) == pytest.approx(100 * n / m, abs=0.01)
    assert alert["annotations"]["summary"] == (
        f"{n} of {m} billable Windsurf seats in group {group} are idle ({share})"
    )
    assert alert["annotations"]["description"].startswith(
        f"{n} of {m} billable seats in group {group} ({share}) are paid for but idle, more"
        " than the 15% allowed (windsurf:threshold:idle_share_ratio)."
    )
    assert alert["annotations"]["dashboard"].endswith(
        f"/d/windsurf-seats/windsurf-seats?var-group={group}"
    )


def test_an_exporter_restart_resolves_nothing_and_notifies_nothing_again(
    scenario: Scenario,
) -> None:
    assert [n for n in scenario.after if n["status"] == "resolved"] == []
    resolved = [a for n in scenario.after for a in n["alerts"] if a["status"] == "resolved"]
    assert resolved == []
    # Every alert of before is still the same alert (same start) in Alertmanager.
    assert {
        k: v for k, v in scenario.starts_after.items() if k in scenario.starts_before
    } == scenario.starts_before
    # A notification after the restart is only for a seat that became idle meanwhile.
    known = {json.dumps(a["labels"], sort_keys=True) for n in scenario.before for a in n["alerts"]}
    for notification in scenario.after:
        labels = {json.dumps(a["labels"], sort_keys=True) for a in notification["alerts"]}
        assert labels - known, notification["groupLabels"]


def test_every_annotation_template_expanded_without_error(scenario: Scenario) -> None:
    log = scenario.prometheus.log.read_text()
    assert "template" not in log.lower(), log
    for notification in scenario.before:
        for alert in notification["alerts"]:
            for text in alert["annotations"].values():
                assert text, alert["labels"]
                assert "<no value>" not in text, alert["labels"]
                assert "{{" not in text, alert["labels"]
