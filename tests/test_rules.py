"""prometheus/rules.yml: valid, unit-tested with promtool, and kept tunable from one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from exporter.config import Config, parse_config
from tests.monitoring import PROMETHEUS_CONFIG, RULES, RULES_TEST, load_rules, promtool

THRESHOLD = "windsurf:threshold:"
# Alerts about the whole team's seats and add-on credits: no group to name.
TEAM_LEVEL = {"WindsurfAddonCreditsRunningOut", "WindsurfUnassignedSeats"}
# A number that stands alone in PromQL: not part of a name, a label value or a duration.
_NUMBER = re.compile(r'(?<![\w:."])\d+(?:\.\d+)?(?![\w."])')
SECONDS_PER_DAY = "86400"  # a unit, not a threshold
# Alerts about the exporter itself, not about a group or a person.
EXPORTER_WIDE = {"WindsurfExporterAbsent", "WindsurfExporterConfigReloadFailed"}
# Slow-moving alerts must survive a failed scrape or an exporter restart; the others must not
# hide a real gap (the absence alert is what fires during one).
KEEP_FIRING = {
    "WindsurfSeatIdle",
    "WindsurfGroupIdleSeatsHigh",
    "WindsurfApiDown",
    "WindsurfDataStale",
    "WindsurfUpstreamStale",
    "WindsurfCreditsAboveLastCycle",
    "WindsurfCreditsAboveThreshold",
    "WindsurfExporterConfigReloadFailed",
}


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules.yml" in result.stdout


def test_example_scrape_timeout_leaves_room_for_a_large_team() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "windsurf")
    timeout, interval = (
        int(job[k].removesuffix("s")) for k in ("scrape_timeout", "scrape_interval")
    )
    assert 10 < timeout < interval


# Each mutation takes one exclusion out of the idle-seat rule; the unit tests must notice.
@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(
            "scalar(windsurf:threshold:new_seat_grace_seconds)", "0", id="no grace period"
        ),
        pytest.param(
            "(max by (group, user) (windsurf_user_disabled) == 1)",
            "(max by (group, user) (windsurf_user_disabled) == 2)",
            id="disabled seats kept",
        ),
        pytest.param(
            'windsurf_user_info{team_status="USER_TEAM_STATUS_APPROVED"}',
            "windsurf_user_info",
            id="pending seats kept",
        ),
        pytest.param(
            "max by (user) (windsurf:group_user_idle_seat_seconds)",
            "max by (group, user) (windsurf:group_user_idle_seat_seconds)",
            id="one alert per group membership",
        ),
        pytest.param(
            "max by (user) (windsurf:group_user_idle_seat_seconds)",
            'max by (user) (windsurf:group_user_idle_seat_seconds{group!=""})',
            id="people in no group lost",
        ),
    ],
)
def test_unit_tests_fail_when_the_idle_rule_forgets_an_exclusion(
    tmp_path: Path, old: str, new: str
) -> None:
    rules = RULES.read_text()
    assert old in rules, "the exclusion is no longer written the way this test expects"
    (tmp_path / "rules.yml").write_text(rules.replace(old, new, 1))
    unit_tests = _unit_tests_named(
        tmp_path, "idle seats", "one alert per person, people in no group included"
    )

    result = promtool("test", "rules", unit_tests)

    assert result.returncode != 0, "the weakened rule went unnoticed"
    assert "alertname: WindsurfSeatIdle" in result.stderr, result.stdout + result.stderr


def _unit_tests_named(path: Path, *names: str) -> Path:
    """A copy of rules_test.yml with only the named tests, next to a rules.yml in `path`."""
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [t for t in tests["tests"] if t["name"] in names]
    (path / "rules_test.yml").write_text(yaml.safe_dump(tests))
    return path / "rules_test.yml"


@pytest.mark.parametrize(
    ("alert", "test"),
    [
        ("WindsurfSeatIdle", "idle alerts survive a gap in the data"),
        ("WindsurfExporterConfigReloadFailed", "config reload failed"),
    ],
)
def test_unit_tests_fail_without_keep_firing_for(tmp_path: Path, alert: str, test: str) -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                del rule["keep_firing_for"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))

    result = promtool("test", "rules", _unit_tests_named(tmp_path, test))

    assert result.returncode != 0, "an alert that resolves in a gap went unnoticed"
    assert f"alertname: {alert}" in result.stderr, result.stdout + result.stderr


def test_slow_moving_alerts_keep_firing_through_a_gap_and_absence_does_not() -> None:
    alerts = {r["alert"]: r for r in load_rules() if "alert" in r}
    kept = {name for name, a in alerts.items() if "keep_firing_for" in a}
    assert kept >= KEEP_FIRING
    assert "WindsurfExporterAbsent" not in kept


def test_every_alert_has_a_severity_a_runbook_and_names_its_group_or_user() -> None:
    alerts = [r for r in load_rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= KEEP_FIRING | EXPORTER_WIDE | {
        "WindsurfSeatIdle",
        "WindsurfGroupIdleSeatsHigh",
        "WindsurfApiDown",
        "WindsurfDataStale",
        "WindsurfExporterAbsent",
        "WindsurfCreditsAboveLastCycle",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in ("info", "warning", "critical"), alert["alert"]
        annotations = alert["annotations"]
        assert annotations.get("summary"), alert["alert"]
        assert annotations.get("description"), alert["alert"]
        assert f"#{alert['alert'].lower()}" in annotations["runbook_url"], alert["alert"]
        if alert["alert"] not in EXPORTER_WIDE | TEAM_LEVEL:
            text = annotations["summary"] + annotations["description"]
            assert "$labels.group" in text, alert["alert"]
    idle = next(a for a in alerts if a["alert"] == "WindsurfSeatIdle")
    assert "$labels.user" in idle["annotations"]["summary"]


def test_alerts_about_many_seats_or_groups_share_a_summary_for_grouped_notifications() -> None:
    """Alertmanager puts the annotations all alerts of a notification share in
    commonAnnotations: `grouped` (and the links) do not vary per person or group."""
    alerts = {r["alert"]: r for r in load_rules() if "alert" in r}
    for name in ("WindsurfSeatIdle", "WindsurfGroupIdleSeatsHigh"):
        grouped = alerts[name]["annotations"]["grouped"]
        assert grouped
        assert "{{" not in grouped, name


def test_runbook_anchors_are_sections_of_the_readme() -> None:
    readme = (RULES.parent.parent / "README.md").read_text()
    headings = {
        line.lstrip("#").strip().strip("`").lower()
        for line in readme.splitlines()
        if line.startswith("####")
    }
    for rule in load_rules():
        if "alert" in rule:
            assert rule["alert"].lower() in headings, rule["alert"]


def test_thresholds_are_set_in_one_place_and_all_used() -> None:
    rules = load_rules()
    thresholds = [r for r in rules if r.get("record", "").startswith(THRESHOLD)]
    assert thresholds
    assert all(r["group"] == "windsurf.thresholds" for r in thresholds)
    others = [r for r in rules if r not in thresholds]
    for rule in others:
        numbers = set(_NUMBER.findall(rule["expr"])) - {"0", "1", SECONDS_PER_DAY}
        assert not numbers, f"{rule.get('alert') or rule.get('record')}: literal {numbers}"
    used = " ".join(r["expr"] for r in others)
    for threshold in thresholds:
        assert threshold["record"] in used, f"{threshold['record']} is defined but never used"


def test_idle_for_bucket_of_the_aggregate_fallback_is_one_the_exporter_exports() -> None:
    buckets = set(re.findall(r'idle_for="([^"]+)"', RULES.read_text()))
    written = parse_config({"idle_thresholds": ["7d", "30d"]}, require_key=False)
    assert buckets == {"30d"}
    assert buckets <= {w.label for w in Config().idle_thresholds}
    assert buckets <= {w.label for w in written.idle_thresholds}
