"""A real Prometheus loads prometheus/rules.yml and scrapes two real exporters: the demo team
with per-user series, and a team exported with `per_user: false` (group aggregates only).
Every dashboard query and every rule must work on what it scraped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from exporter.cli import Exporter
from exporter.demo import DAY, DEMO_GROUPS, DEMO_SERVICE_KEY, FakeWindsurf, synthetic_team
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
IDLE = 14 * DAY
GRACE = 30 * DAY
BUCKET = 30 * DAY  # idle_for="30d", the aggregate fallback
# Data is a poll old when Prometheus evaluates: a seat this close to a threshold may go either way.
MARGIN = 600.0

Seat = tuple[str, str]


@dataclass
class Stack:
    prometheus: Prometheus
    demo: FakeWindsurf
    aggregate: FakeWindsurf


@dataclass
class IdleSeats:
    """(group, user) seats idle by the fake team's own histories: those surely idle now, and
    those within MARGIN of a threshold (either answer is right for them)."""

    sure: set[Seat]
    unsure: set[Seat]

    def per_group(self, groups: tuple[str, ...]) -> dict[str, int]:
        return {g: sum(1 for group, _ in self.sure if group == g) for g in groups}


def idle_seats(fake: FakeWindsurf, idle: float, grace: float) -> IdleSeats:
    """Billable seats older than `grace` and idle (since their last use, else signup) longer
    than `idle`, now."""
    now = time.time()
    found = IdleSeats(set(), set())
    for member in fake.team:
        if not member.billable:
            continue
        idle_for = now - fake.idle_since(member, now)
        age = now - fake.signup(member)
        seats = {(g, member.email) for g in member.groups}
        if abs(idle_for - idle) < MARGIN or abs(age - grace) < MARGIN:
            found.unsure |= seats
        elif idle_for > idle and age > grace:
            found.sure |= seats
    return found


def assert_seats(selected: set[Seat], expected: IdleSeats) -> None:
    assert expected.sure <= selected
    assert selected <= expected.sure | expected.unsure


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
        demo = launch("--demo").exporter
        exporters.append(demo)
        assert demo.fake is not None
        aggregate_fake = FakeWindsurf(
            team=synthetic_team(size=80, groups=AGGREGATE_GROUPS, seed=1)
        ).start()
        fakes.append(aggregate_fake)
        (tmp / "key").write_text(DEMO_SERVICE_KEY)
        config = tmp / "aggregates.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "api": {"url": aggregate_fake.url, "service_key_file": str(tmp / "key")},
                    "groups": list(AGGREGATE_GROUPS),
                    "per_user": False,
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
        yield Stack(prometheus, demo.fake, aggregate_fake)
    finally:
        if prometheus is not None:
            prometheus.stop()
        _stop_all(exporters, fakes)


def _wait_until_rules_ran(prometheus: Prometheus) -> None:
    """Until every rule group has run on a few scrapes of every group (Prometheus waits a few
    seconds for discovery before its first scrape)."""
    groups = len(DEMO_GROUPS) + len(AGGREGATE_GROUPS)

    def ready() -> bool:
        scraped = prometheus.query("min(count_over_time(windsurf_up[1m]))")
        idle = prometheus.query("count(windsurf:group_idle_seats)")
        return (
            bool(scraped)
            and float(scraped[0]["value"][1]) >= 3
            and bool(idle)
            and int(float(idle[0]["value"][1])) == groups
        )

    wait_for(ready, timeout=60, what="Prometheus to scrape both exporters and run the rules")


def _pairs(result: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["metric"].get("group", ""), r["metric"]["user"]) for r in result}


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


def test_idle_seat_alert_selects_exactly_the_demo_seats_idle_past_the_grace_period(
    stack: Stack,
) -> None:
    selected = _pairs(stack.prometheus.query(alert_expr("WindsurfSeatIdle")))

    expected = idle_seats(stack.demo, IDLE, GRACE)
    assert_seats(selected, expected)
    # Every kind of seat the alert must tell apart is in the demo team.
    profiles = {m.profile for m in stack.demo.team if any(s[1] == m.email for s in selected)}
    assert {"idle", "never"} <= profiles
    spared = {"pending", "disabled", "new", "new-unused", "heavy"}
    assert not {m.email for m in stack.demo.team if m.profile in spared} & {u for _, u in selected}


def _expected_idle_seats(stack: Stack) -> tuple[dict[str, int], dict[str, int]]:
    """Per group, the idle seats for sure and at most: per-user groups count seats idle past
    the threshold and the grace period; aggregate-only groups count billable seats idle longer
    than the 30d bucket, as the exporter does."""
    demo = idle_seats(stack.demo, IDLE, GRACE)
    aggregate = idle_seats(stack.aggregate, BUCKET, 0.0)
    at_least = demo.per_group(DEMO_GROUPS) | aggregate.per_group(AGGREGATE_GROUPS)
    unsure = IdleSeats(demo.unsure | aggregate.unsure, set())
    extra = unsure.per_group(DEMO_GROUPS + AGGREGATE_GROUPS)
    return at_least, {g: n + extra[g] for g, n in at_least.items()}


def test_group_idle_seats_use_aggregates_when_per_user_series_are_absent(stack: Stack) -> None:
    idle = _by_group(stack.prometheus.query("windsurf:group_idle_seats"))
    at_least, at_most = _expected_idle_seats(stack)
    assert set(idle) == set(at_least)
    for group, count in idle.items():
        assert at_least[group] <= count <= at_most[group], group
    assert not stack.prometheus.query('windsurf_user_info{group=~"ops|finance"}')


def test_idle_share_alert_selects_the_groups_over_the_threshold(stack: Stack) -> None:
    billable = {
        g: sum(1 for m in fake.members(g) if m.billable)
        for fake, groups in ((stack.demo, DEMO_GROUPS), (stack.aggregate, AGGREGATE_GROUPS))
        for g in groups
    }
    at_least, at_most = _expected_idle_seats(stack)
    surely = {g for g, idle in at_least.items() if idle / billable[g] > IDLE_SHARE}
    maybe = {g for g, idle in at_most.items() if idle / billable[g] > IDLE_SHARE}

    selected = _by_group(stack.prometheus.query(alert_expr("WindsurfGroupIdleSeatsHigh")))

    assert surely <= set(selected) <= maybe
    # The data must be able to tell the groups apart: one aggregate-only group over, one under.
    assert set(selected) & set(AGGREGATE_GROUPS), "no aggregate-only group is over the threshold"
    assert set(AGGREGATE_GROUPS) - set(selected), "every group is over the threshold"
    assert set(DEMO_GROUPS) - set(selected), "every demo group is over the threshold"


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
    values["group"] = ".*" if selection == "All" else "(engineering|design)"
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
    alerted = _pairs(stack.prometheus.query(alert_expr("WindsurfSeatIdle")))
    assert _pairs(days) == alerted
    assert _pairs(signup) == alerted
    now = time.time()
    never = {
        (g, m.email)
        for m in stack.demo.team
        if stack.demo.activity(m).last_any_use(now) is None
        for g in m.groups
    }
    assert never & alerted, "no never-used seat is alerted"
    assert _pairs(last_feature) == alerted - never
    for row in days:
        assert float(row["value"][1]) > 14, row
