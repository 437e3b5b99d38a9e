"""A real Prometheus loads prometheus/rules.yml and scrapes two real exporters: the demo team
with per-user series and the team poll, and a second team exported with `per_user: false` and
`team: false` (group aggregates only). Every dashboard query and every rule must work on what
it scraped, and the headline numbers count people, each once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import yaml

from exporter.cli import Exporter
from exporter.demo import DAY, DEMO_GROUPS, DEMO_SERVICE_KEY, FakeWindsurf, Member, synthetic_team
from tests.conftest import launch, wait_for
from tests.monitoring import (
    Prometheus,
    alert_expr,
    load_dashboard,
    load_rules,
    panels,
    render,
    require_binary,
    start_prometheus,
    variable_query,
    variables,
)

AGGREGATE_GROUPS = ("ops", "finance")
# Must match windsurf:threshold:* in rules.yml; the rules test holds the numbers there.
IDLE_SHARE = 0.15
BUCKET = 30 * DAY  # idle_for="30d", the aggregate fallback


@dataclass
class Stack:
    prometheus: Prometheus
    demo_team: list[Member]
    aggregate_team: list[Member]


def _stop_all(exporters: list[Exporter], fakes: list[FakeWindsurf]) -> None:
    for exporter in exporters:
        exporter.stop()
    for fake in fakes:
        fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("stack")
    exporters: list[Exporter] = []
    fakes: list[FakeWindsurf] = []
    prometheus: Prometheus | None = None
    try:
        # The demo's team, with some people taken out of every group: their seats are paid
        # too, and must show up once each.
        demo_team = [
            replace(m, groups=()) if i % 25 == 7 else m for i, m in enumerate(synthetic_team())
        ]
        demo_fake = FakeWindsurf(team=demo_team).start()
        fakes.append(demo_fake)
        (tmp / "key").write_text(DEMO_SERVICE_KEY)
        demo_config = tmp / "demo.yaml"
        demo_config.write_text(
            yaml.safe_dump(
                {
                    "api": {"url": demo_fake.url, "service_key_file": str(tmp / "key")},
                    "groups": list(DEMO_GROUPS),
                    "active_days_windows": ["7d", "30d"],
                }
            )
        )
        exporters.append(launch("--config.file", str(demo_config)).exporter)
        aggregate_fake = FakeWindsurf(
            team=synthetic_team(size=80, groups=AGGREGATE_GROUPS, seed=1)
        ).start()
        fakes.append(aggregate_fake)
        config = tmp / "aggregates.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "api": {"url": aggregate_fake.url, "service_key_file": str(tmp / "key")},
                    "groups": list(AGGREGATE_GROUPS),
                    "per_user": False,
                    # The windsurf:team_* rules assume one team per Prometheus: the demo's.
                    "team": False,
                    "idle_thresholds": ["7d", "30d"],
                    "poll": {"interval": "5m"},
                }
            )
        )
        aggregates = launch("--config.file", str(config)).exporter
        exporters.append(aggregates)
        targets = [e.server.url.removeprefix("http://") for e in exporters if e.server]
        prometheus = start_prometheus(tmp / "prometheus", targets)
        _wait_until_rules_ran(prometheus)
        yield Stack(prometheus, demo_team, aggregate_fake.team)
    finally:
        if prometheus is not None:
            prometheus.stop()
        _stop_all(exporters, fakes)


def _wait_until_rules_ran(prometheus: Prometheus) -> None:
    """Until every rule group has run on a few scrapes of every group (Prometheus waits a few
    seconds for discovery before its first scrape)."""
    groups = len(DEMO_GROUPS) + len(AGGREGATE_GROUPS)

    def ready() -> bool:
        team = prometheus.query("windsurf:team_idle_seats")
        scraped = prometheus.query("min(count_over_time(windsurf_up[1m]))")
        idle = prometheus.query("count(windsurf:group_idle_seats)")
        return (
            bool(scraped)
            and float(scraped[0]["value"][1]) >= 3
            and bool(idle)
            and int(float(idle[0]["value"][1])) >= groups
            and bool(team)
        )

    wait_for(ready, timeout=60, what="Prometheus to scrape both exporters and run the rules")


def _by_group(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("group", ""): float(r["value"][1]) for r in result}


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {r.get("record") or r.get("alert") for r in load_rules()}
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]]
    assert [b for b in broken if b[1]] == []


def test_every_recording_rule_produces_series(stack: Stack) -> None:
    records = [r["record"] for r in load_rules() if "record" in r]
    empty = [name for name in records if not stack.prometheus.query(name)]
    assert empty == []


def _idle_people(members: list[Member]) -> list[Member]:
    return [m for m in members if m.profile in ("idle", "never")]


def _groups_label(member: Member) -> str:
    return ",".join(sorted(g for g in member.groups if g))


def test_idle_seat_alert_is_one_series_per_idle_person_naming_all_their_groups(
    stack: Stack,
) -> None:
    result = stack.prometheus.query(alert_expr("WindsurfSeatIdle"))
    selected = [(r["metric"]["user"], r["metric"].get("groups", "")) for r in result]

    expected = sorted((m.email, _groups_label(m)) for m in _idle_people(stack.demo_team))
    ignored = {m.email for m in stack.demo_team if m.profile in ("pending", "disabled", "new")}
    assert expected, "the demo team has no idle seats to find"
    assert any("," in groups for _, groups in expected), "nobody idle is in two groups"
    assert any(not groups for _, groups in expected), "nobody idle is in no group"
    assert sorted(selected) == expected
    assert not {user for user, _ in selected} & ignored


def _billable(members: list[Member]) -> list[Member]:
    return [m for m in members if m.profile not in ("pending", "disabled")]


def _expected_idle_seats(stack: Stack) -> dict[str, int]:
    """Per-user groups count idle and never-used seats; aggregate-only groups count billable
    seats idle longer than the 30d bucket, as the exporter does."""
    counts = {
        g: sum(1 for m in stack.demo_team if g in m.groups and m.profile in ("idle", "never"))
        for g in DEMO_GROUPS
    }
    nowhere = [m for m in _idle_people(stack.demo_team) if not _groups_label(m)]
    if nowhere:  # people in no group: their series have no group label
        counts[""] = len(nowhere)
    for g in AGGREGATE_GROUPS:
        counts[g] = sum(
            1
            for m in _billable([m for m in stack.aggregate_team if g in m.groups])
            if (m.profile == "idle" and m.idle_days * DAY > BUCKET)
            or (m.profile == "never" and m.signup_days_ago * DAY > BUCKET)
        )
    return counts


def test_group_idle_seats_use_aggregates_when_per_user_series_are_absent(stack: Stack) -> None:
    idle = _by_group(stack.prometheus.query("windsurf:group_idle_seats"))
    assert idle == _expected_idle_seats(stack)
    assert not stack.prometheus.query('windsurf_user_info{group=~"ops|finance"}')


def test_idle_share_alert_selects_the_groups_over_the_threshold(stack: Stack) -> None:
    billable = {
        g: len(_billable([m for m in team if g in m.groups]))
        for team, groups in (
            (stack.demo_team, DEMO_GROUPS),
            (stack.aggregate_team, AGGREGATE_GROUPS),
        )
        for g in groups
    }
    expected = {
        g
        for g, idle in _expected_idle_seats(stack).items()
        if g in billable and idle / billable[g] > IDLE_SHARE
    }

    selected = _by_group(stack.prometheus.query(alert_expr("WindsurfGroupIdleSeatsHigh")))

    assert set(selected) == expected
    # The data must be able to tell the groups apart: one aggregate-only group over, one under.
    assert set(selected) & set(AGGREGATE_GROUPS), "no aggregate-only group is over the threshold"
    assert set(AGGREGATE_GROUPS) - set(selected), "every group is over the threshold"


def _variable_values(stack: Stack, selection: str) -> dict[str, str]:
    """The dashboard's variables as a Grafana user would have them: query variables from
    Prometheus' label values, the others at their defaults; `group` as All or as two groups."""
    values = {}
    for name, variable in variables(load_dashboard()).items():
        if variable["type"] == "query":
            metric, label = variable_query(variable).removeprefix("label_values(")[:-1].split(", ")
            found = stack.prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert found, f"variable {name} has no values"
            values[name] = found[0]
        elif variable["type"] != "datasource":
            values[name] = str(variable["current"]["value"])
    values["group"] = ".*" if selection == "All" else "(" + "|".join(_subset(stack)) + ")"
    return values


@pytest.mark.parametrize("selection", ["All", "two groups"])
def test_every_dashboard_query_returns_data(stack: Stack, selection: str) -> None:
    values = _variable_values(stack, selection)
    failures = []
    for panel in panels(load_dashboard()):
        for target in panel["targets"]:
            expr = render(target["expr"], values)
            where = f"{panel['title']!r} {target['refId']}: {expr}"
            try:
                if target.get("instant"):
                    result = stack.prometheus.query(expr)
                else:
                    result = stack.prometheus.query_range(expr, seconds=30)
            except AssertionError as err:
                failures.append(f"{where}\n  failed: {err}")
                continue
            if not result:
                failures.append(f"{where}\n  returned no data")
    assert failures == [], "\n".join(failures)


def test_group_variable_lists_every_group(stack: Stack) -> None:
    variable = variables(load_dashboard())["group"]
    assert variable_query(variable) == "label_values(windsurf_up, group)"
    found = stack.prometheus.api("label/group/values", **{"match[]": "windsurf_up"})
    assert set(found) == {*DEMO_GROUPS, *AGGREGATE_GROUPS}


def test_idle_seat_table_rows_are_the_alerted_seats_with_their_details(stack: Stack) -> None:
    table = next(p for p in panels(load_dashboard()) if p["type"] == "table")
    values = _variable_values(stack, "All")
    days, last_feature, signup = (
        stack.prometheus.query(render(t["expr"], values)) for t in table["targets"]
    )
    alerted = _users(stack.prometheus.query(alert_expr("WindsurfSeatIdle")))
    assert _users(days) == alerted
    assert len(days) == len(alerted), "one row per person"
    assert _users(signup) == alerted
    never = {m.email for m in stack.demo_team if m.profile == "never"}
    assert _users(last_feature) == alerted - never
    for row in days:
        assert float(row["value"][1]) > 14, row
        assert "groups" in row["metric"] or row["metric"]["user"] in _no_group(stack)


def _users(result: list[dict[str, Any]]) -> set[str]:
    return {r["metric"]["user"] for r in result}


def _no_group(stack: Stack) -> set[str]:
    return {m.email for m in stack.demo_team if not _groups_label(m)}


def _subset(stack: Stack) -> tuple[str, ...]:
    """Two groups that share people: those of the first person in two groups."""
    return next(tuple(m.groups) for m in stack.demo_team if len(m.groups) == 2)


def _headline(stack: Stack, title: str, selection: str) -> float:
    panel = next(p for p in panels(load_dashboard()) if p["title"] == title)
    (target,) = panel["targets"]
    (sample,) = stack.prometheus.query(render(target["expr"], _variable_values(stack, selection)))
    return float(sample["value"][1])


def _people(stack: Stack, selection: str) -> list[Member]:
    """The demo's people a selection covers, each once: everyone for All (people in no group
    included), else those in any selected group."""
    if selection == "All":
        return stack.demo_team
    return [m for m in stack.demo_team if set(m.groups) & set(_subset(stack))]


@pytest.mark.parametrize("selection", ["All", "two groups"])
def test_headline_seats_count_each_person_once(stack: Stack, selection: str) -> None:
    people = _people(stack, selection)
    billable = _billable(people)
    idle = _idle_people(billable)
    active = [m for m in billable if m.usage_rate > 0]
    price = float(_variable_values(stack, selection)["seat_price"])
    groups = DEMO_GROUPS if selection == "All" else _subset(stack)
    assert len(billable) < sum(len(_billable(_people_in(stack, g))) for g in groups), "no overlap"
    assert _headline(stack, "Billable seats", selection) == len(billable)
    assert _headline(stack, "Idle seats", selection) == len(idle)
    assert _headline(stack, "Active seats", selection) == len(active)
    assert _headline(stack, "Idle share", selection) == pytest.approx(len(idle) / len(billable))
    assert _headline(stack, "Monthly spend on idle seats", selection) == len(idle) * price


def _people_in(stack: Stack, group: str) -> list[Member]:
    return [m for m in stack.demo_team if group in m.groups]


@pytest.mark.parametrize("selection", ["All", "two groups"])
def test_headline_prompt_credits_count_each_person_once(stack: Stack, selection: str) -> None:
    per_person = {
        r["metric"]["user"]: float(r["value"][1])
        for r in stack.prometheus.query("max by (user) (windsurf_user_prompt_credits_used)")
    }
    expected = sum(per_person.get(m.email, 0.0) for m in _people(stack, selection))
    # Credits grow between polls; a poll may land between the two queries.
    assert _headline(stack, "Prompt credits used", selection) == pytest.approx(expected, rel=1e-3)
    if selection == "All":  # the team poll's own number agrees with the people's
        (team,) = stack.prometheus.query("windsurf_team_prompt_credits_used")
        assert float(team["value"][1]) == pytest.approx(expected, rel=1e-3)
