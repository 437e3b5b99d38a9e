"""A real Prometheus loads prometheus/rules.yml and scrapes two real exporters: the demo team
with per-user series and the team poll (people in no group included), and a second team
exported with `per_user: false` and `team: false` (group aggregates only). Every dashboard
query and every rule must work on what it scraped, and the headline numbers count people,
each once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from exporter.cli import Exporter
from exporter.demo import (
    DAY,
    DEMO_GROUPS,
    DEMO_SERVICE_KEY,
    FakeWindsurf,
    Member,
    synthetic_team,
)
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
    than `idle`, now; a person in no group has one seat, in group ""."""
    now = time.time()
    found = IdleSeats(set(), set())
    for member in fake.team:
        if not member.billable:
            continue
        idle_for = now - fake.idle_since(member, now)
        age = now - fake.signup(member)
        seats = {(g, member.email) for g in member.groups or ("",)}
        if abs(idle_for - idle) < MARGIN or abs(age - grace) < MARGIN:
            found.unsure |= seats
        elif idle_for > idle and age > grace:
            found.sure |= seats
    return found


def people(seats: set[Seat]) -> set[str]:
    return {user for _, user in seats}


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
        team = prometheus.query("windsurf:team_idle_seats")
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


def _value(stack: Stack, expr: str) -> float:
    (sample,) = stack.prometheus.query(expr)
    return float(sample["value"][1])


def test_credit_pool_and_unassigned_seats_follow_the_fakes_balance(stack: Stack) -> None:
    _, balance = stack.demo.respond_credit_balance({})
    seats, per_seat = balance["numSeats"], balance["promptCreditsPerSeat"]
    billable = sum(m.billable for m in stack.demo.team)
    assert _value(stack, "windsurf:team_prompt_credit_pool") == seats * per_seat
    assert _value(stack, "windsurf:team_unassigned_seats") == seats - billable
    assert _value(stack, "windsurf:team_prompt_credit_pool_used") == _value(
        stack, "max(windsurf_team_prompt_credits_used)"
    )


def test_cascade_acceptance_is_accepted_over_suggested_for_every_group_and_window(
    stack: Stack,
) -> None:
    ratios = stack.prometheus.query("windsurf:group_cascade_acceptance:ratio")
    demo_groups = {r["metric"]["group"] for r in ratios if r["metric"]["group"] in DEMO_GROUPS}
    assert demo_groups == set(DEMO_GROUPS)
    for ratio in ratios:
        where = '{{group="{group}", window="{window}"}}'.format(**ratio["metric"])
        accepted = _value(stack, f"max(windsurf_group_cascade_lines_accepted{where})")
        suggested = _value(stack, f"max(windsurf_group_cascade_lines_suggested{where})")
        assert float(ratio["value"][1]) == pytest.approx(accepted / suggested), where
        assert 0 < accepted <= suggested, where


def _groups_label(member: Member) -> str:
    return ",".join(sorted(member.groups))


def test_idle_seat_alert_is_one_series_per_idle_person_naming_all_their_groups(
    stack: Stack,
) -> None:
    result = stack.prometheus.query(alert_expr("WindsurfSeatIdle"))
    selected = {r["metric"]["user"]: r["metric"].get("groups", "") for r in result}
    assert len(selected) == len(result), "one series per person"

    expected = idle_seats(stack.demo, IDLE, GRACE)
    assert people(expected.sure) <= set(selected) <= people(expected.sure | expected.unsure)
    by_email = {m.email: m for m in stack.demo.team}
    assert {u: _groups_label(by_email[u]) for u in selected} == selected
    assert any("," in g for g in selected.values()), "nobody idle is in two groups"
    assert any(not g for g in selected.values()), "nobody idle is in no group"
    # Every kind of seat the alert must tell apart is in the demo team.
    profiles = {by_email[u].profile for u in selected}
    assert {"idle", "never"} <= profiles
    spared = {"pending", "disabled", "new", "new-unused", "heavy"}
    assert not {m.email for m in stack.demo.team if m.profile in spared} & set(selected)


def _expected_idle_seats(stack: Stack) -> tuple[dict[str, int], dict[str, int]]:
    """Per group, the idle seats for sure and at most: per-user groups count seats idle past
    the threshold and the grace period; aggregate-only groups count billable seats idle longer
    than the 30d bucket, as the exporter does."""
    demo = idle_seats(stack.demo, IDLE, GRACE)
    aggregate = idle_seats(stack.aggregate, BUCKET, 0.0)
    # People in no group: their series have no group label, their seats group "".
    nowhere = any(not m.groups for m in stack.demo.team)
    demo_groups = (*DEMO_GROUPS, "") if nowhere else DEMO_GROUPS
    at_least = demo.per_group(demo_groups) | aggregate.per_group(AGGREGATE_GROUPS)
    unsure = IdleSeats(demo.unsure | aggregate.unsure, set())
    extra = unsure.per_group(demo_groups + AGGREGATE_GROUPS)
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
    # The people in no group have no windsurf:group_billable_seats, so no idle share.
    surely = {g for g, n in at_least.items() if g in billable and n / billable[g] > IDLE_SHARE}
    maybe = {g for g, n in at_most.items() if g in billable and n / billable[g] > IDLE_SHARE}

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
    now = time.time()
    never = {m.email for m in stack.demo.team if stack.demo.activity(m).last_any_use(now) is None}
    assert never & alerted, "no never-used seat is alerted"
    assert _users(last_feature) == alerted - never
    for row in days:
        assert float(row["value"][1]) > 14, row


def _users(result: list[dict[str, Any]]) -> set[str]:
    return {r["metric"]["user"] for r in result}


def _subset(stack: Stack) -> tuple[str, ...]:
    """Two groups that share people: those of the first person in two groups."""
    return next(tuple(m.groups) for m in stack.demo.team if len(m.groups) == 2)


def _headline(stack: Stack, title: str, selection: str) -> float:
    panel = next(p for p in panels(load_dashboard()) if p["title"] == title)
    (target,) = panel["targets"]
    (sample,) = stack.prometheus.query(render(target["expr"], _variable_values(stack, selection)))
    return float(sample["value"][1])


def _covered(stack: Stack, selection: str) -> list[Member]:
    """The demo's people a selection covers, each once: everyone for All (people in no group
    included), else those in any selected group."""
    if selection == "All":
        return stack.demo.team
    return [m for m in stack.demo.team if set(m.groups) & set(_subset(stack))]


def _active(stack: Stack, members: list[Member]) -> tuple[int, int]:
    """Billable people used within the idle threshold: for sure, and at most."""
    now = time.time()
    sure = unsure = 0
    for member in members:
        last = stack.demo.activity(member).last_any_use(now)
        if not member.billable or last is None:
            continue
        if abs(now - last - IDLE) < MARGIN:
            unsure += 1
        elif now - last <= IDLE:
            sure += 1
    return sure, sure + unsure


@pytest.mark.parametrize("selection", ["All", "two groups"])
def test_headline_seats_count_each_person_once(stack: Stack, selection: str) -> None:
    members = _covered(stack, selection)
    billable = [m for m in members if m.billable]
    emails = {m.email for m in members}
    expected = idle_seats(stack.demo, IDLE, GRACE)
    idle_least = len(people(expected.sure) & emails)
    idle_most = len(people(expected.sure | expected.unsure) & emails)
    groups = DEMO_GROUPS if selection == "All" else _subset(stack)
    by_group = sum(1 for g in groups for m in stack.demo.members(g) if m.billable)
    assert len(billable) != by_group, "no one to count once"
    assert _headline(stack, "Billable seats", selection) == len(billable)
    idle = _headline(stack, "Idle seats", selection)
    assert idle_least <= idle <= idle_most
    least, most = _active(stack, members)
    assert least <= _headline(stack, "Active seats", selection) <= most
    assert _headline(stack, "Idle share", selection) == pytest.approx(idle / len(billable))
    price = float(_variable_values(stack, selection)["seat_price"])
    assert _headline(stack, "Monthly spend on idle seats", selection) == idle * price


@pytest.mark.parametrize("selection", ["All", "two groups"])
def test_headline_prompt_credits_count_each_person_once(stack: Stack, selection: str) -> None:
    per_person = {
        r["metric"]["user"]: float(r["value"][1])
        for r in stack.prometheus.query("max by (user) (windsurf_user_prompt_credits_used)")
    }
    expected = sum(per_person.get(m.email, 0.0) for m in _covered(stack, selection))
    # Credits grow between polls; a poll may land between the two queries.
    assert _headline(stack, "Prompt credits used", selection) == pytest.approx(expected, rel=1e-3)
    if selection == "All":  # the team poll's own number agrees with the people's
        (team,) = stack.prometheus.query("windsurf_team_prompt_credits_used")
        assert float(team["value"][1]) == pytest.approx(expected, rel=1e-3)
