"""The Grafana dashboard imports as is, and the compose stack wires exporter, Prometheus and
Grafana to the files in this repository. (Its queries run against Prometheus in
test_prometheus_integration.py.)"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.monitoring import GRAFANA_BUILTINS, load_dashboard, panels, render, variables

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_has_a_stable_uid_and_no_instance_id(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "windsurf-seats"
    assert dashboard["id"] is None
    assert "__inputs" not in dashboard  # nothing to fill in on import


def test_every_panel_queries_the_chosen_datasource(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = Counter(p["id"] for p in dashboard["panels"])
    assert max(ids.values()) == 1
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_variables_pick_datasource_groups_and_seat_price(dashboard: dict[str, Any]) -> None:
    found = variables(dashboard)
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    group = found["group"]
    assert group["multi"]
    assert group["includeAll"]
    assert group["allValue"] == ".*"
    assert float(found["seat_price"]["current"]["value"]) > 0


def test_every_variable_a_query_uses_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {name: "x" for name in variables(dashboard)}
    for panel in panels(dashboard):
        for target in panel["targets"]:
            render(target["expr"], defined)  # raises on an undefined variable
    assert {"__rate_interval"} <= set(GRAFANA_BUILTINS)


@pytest.mark.parametrize(
    "title",
    [
        "Billable seats",
        "Active seats",
        "Idle seats",
        "Idle share",
        "Monthly spend on idle seats",
        "Prompt credits used",
    ],
)
def test_headline_stats_count_people_and_say_so(dashboard: dict[str, Any], title: str) -> None:
    panel = next(p for p in panels(dashboard) if p["title"] == title)
    assert "each person" in panel["description"].lower(), title


@pytest.mark.parametrize(
    ("kind", "metric"),
    [
        ("stat", "windsurf:team_billable_seats"),
        ("stat", "windsurf:group_user_billable_seat"),
        ("stat", "windsurf:team_active_seats"),
        ("stat", "windsurf:team_idle_seats"),
        ("stat", "windsurf:group_idle_seats"),
        ("stat", "windsurf:team_prompt_credits_used"),
        ("stat", "$seat_price"),
        ("table", "windsurf:user_idle_seat_seconds"),
        ("bargauge", "topk($top_n"),
        ("timeseries", "windsurf:group_prompt_credits_used"),
        ("timeseries", "windsurf:billing_cycle_elapsed:ratio"),
        ("histogram", "windsurf_user_active_days"),
        ("bargauge", "windsurf_user_last_usage_age_seconds"),
        ("state-timeline", "windsurf_up"),
        ("stat", "windsurf_exporter_last_success_timestamp_seconds"),
        ("timeseries", "windsurf_group_cascade_lines_suggested"),
        ("timeseries", "windsurf_group_cascade_lines_accepted"),
        ("bargauge", "windsurf:group_cascade_acceptance:ratio"),
        ("bargauge", "windsurf_group_cascade_messages"),
        ("bargauge", "windsurf_group_cascade_prompt_credits_used"),
        ("bargauge", "windsurf_group_cascade_tool_calls"),
        ("timeseries", "windsurf:team_prompt_credit_pool"),
        ("timeseries", "windsurf:team_prompt_credit_pool_used"),
        ("timeseries", "windsurf_team_addon_credits_available"),
        ("timeseries", "windsurf_team_addon_credits_used"),
        ("timeseries", "windsurf_team_addon_credit_cap"),
        ("timeseries", "windsurf_team_seats"),
        ("timeseries", "windsurf:team_billable_seats"),
        ("timeseries", "windsurf:team_active_seats"),
        ("stat", "windsurf:team_unassigned_seats"),
        ("state-timeline", "windsurf_collector_up"),
    ],
)
def test_dashboard_shows(dashboard: dict[str, Any], kind: str, metric: str) -> None:
    exprs = [t["expr"] for p in panels(dashboard) if p["type"] == kind for t in p["targets"]]
    assert any(metric in e for e in exprs), f"no {kind} panel queries {metric}"


def test_cascade_and_credits_rows_hold_their_panels(dashboard: dict[str, Any]) -> None:
    """Each row's panels are the ones below it, up to the next row."""
    rows: dict[str, list[str]] = {}
    current = ""
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
        else:
            rows.setdefault(current, []).append(panel["title"])
    assert len(rows["Cascade"]) == 5
    assert any("acceptance" in t for t in rows["Cascade"])
    assert any("tools" in t for t in rows["Cascade"])
    assert any("unassigned seats" in t for t in rows["Credits"])
    assert any("pool vs used" in t for t in rows["Credits"])


def test_idle_seat_table_columns(dashboard: dict[str, Any]) -> None:
    table = next(p for p in panels(dashboard) if p["type"] == "table")
    organize = next(t for t in table["transformations"] if t["id"] == "organize")
    columns = set(organize["options"]["renameByName"].values())
    assert {"User", "Groups", "Days idle", "Last feature used", "Signed up"} <= columns
    assert table["options"]["sortBy"] == [{"displayName": "Days idle", "desc": True}]


def test_compose_mounts_existing_files_into_each_service() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    assert "--demo" in services["exporter"]["command"]
    mounted = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounted[target] = ROOT / source
    assert mounted["/etc/prometheus/rules.yml"] == ROOT / "prometheus/rules.yml"
    assert mounted["/etc/grafana/provisioning"] == ROOT / "grafana/provisioning"
    assert mounted["/etc/alertmanager/alertmanager.yml"] == ROOT / "alertmanager/alertmanager.yml"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (ROOT / "grafana/dashboards" / home.rsplit("/", 1)[1]).exists()


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    provisioning = ROOT / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = yaml.safe_load((provisioning / "dashboards" / "windsurf.yml").read_text())
    (provider,) = providers["providers"]
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["exporter:9929"]
    assert "9929:9929" in compose["services"]["exporter"]["ports"]
