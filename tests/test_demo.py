"""The demo team behaves like a real one: over HTTP to the fake Windsurf API (and through the
exporter's /metrics), every person's active days, last uses, prompt credits and Cascade activity
tell one story, at an injected clock."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from exporter.demo import (
    ADDON_CAP,
    DAY,
    DEMO_GROUPS,
    PROFILES,
    SEAT_CREDITS,
    FakeWindsurf,
    Fault,
    billing_cycle,
    synthetic_team,
    transliterate,
)
from exporter.sources.values import parse_time
from tests.conftest import launch

NOW = 1_795_000_000.0 + 0.25  # 2026-11-18T10:26:40.25Z, a Wednesday
WINDOWS = (1, 7, 30, 90)
ALL_QUERIES = [{"cascade_lines": {}}, {"cascade_runs": {}}, {"cascade_tool_usage": {}}]
_LAST_USES = ("lastAutocompleteUsageTime", "lastChatUsageTime", "lastCommandUsageTime")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def call(fake: FakeWindsurf, method: str, **body: Any) -> httpx.Response:
    """POST one method as a client would, with the fake's service key unless given one."""
    document = {"service_key": fake.service_key, **body}
    return httpx.post(f"{fake.url}/api/v1/{method}", json=document, timeout=30)


def rows(fake: FakeWindsurf, start: float, end: float, group: str = "") -> dict[str, Any]:
    """UserPageAnalytics rows by email for the window [start, end)."""
    body = {"start_timestamp": rfc3339(start), "end_timestamp": rfc3339(end)}
    if group:
        body["group_name"] = group
    reply = call(fake, "UserPageAnalytics", **body)
    assert reply.status_code == 200, reply.text
    return {r["email"]: r for r in reply.json().get("userTableStats", [])}


def last_use(row: dict[str, Any]) -> float | None:
    uses = [parse_time(row[k]) for k in _LAST_USES if k in row]
    return max((u for u in uses if u is not None), default=None)


def cascade(fake: FakeWindsurf, start: float, end: float, **body: Any) -> list[dict[str, Any]]:
    """The three CascadeAnalytics results' rows, in the order asked: lines, runs, tools."""
    reply = call(
        fake,
        "CascadeAnalytics",
        start_timestamp=rfc3339(start),
        end_timestamp=rfc3339(end),
        query_requests=ALL_QUERIES,
        **body,
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["queryResults"]
    names = ("cascadeLines", "cascadeRuns", "cascadeToolUsage")
    return [r[name].get(name, []) for r, name in zip(results, names, strict=True)]


@pytest.fixture(scope="module")
def demo() -> Iterator[FakeWindsurf]:
    """The --demo team, at a fixed moment."""
    with FakeWindsurf(clock=lambda: NOW) as fake:
        yield fake


@pytest.fixture(scope="module")
def windows(demo: FakeWindsurf) -> dict[int, dict[str, Any]]:
    """The whole team's rows for each window ending now."""
    return {days: rows(demo, NOW - days * DAY, NOW) for days in WINDOWS}


def test_active_days_are_positive_exactly_when_a_last_use_is_inside_the_window(
    demo: FakeWindsurf, windows: dict[int, dict[str, Any]]
) -> None:
    checked = 0
    for days, by_email in windows.items():
        assert set(by_email) == {m.email for m in demo.team}
        for email, row in by_email.items():
            last = last_use(row)
            used_inside = last is not None and NOW - days * DAY <= last < NOW
            assert (row.get("activeDays", 0) > 0) == used_inside, (email, days, row)
            checked += used_inside
    assert checked > len(demo.team)  # the check is not vacuous


def test_longer_windows_hold_at_least_as_many_active_days(
    windows: dict[int, dict[str, Any]],
) -> None:
    for shorter, longer in itertools.pairwise(WINDOWS):
        for email, row in windows[shorter].items():
            days = row.get("activeDays", 0)
            assert days <= windows[longer][email].get("activeDays", 0), email
            assert days <= shorter + 1  # a window of N days touches N + 1 dates at most
    fewer = [
        e
        for e, r in windows[7].items()
        if windows[30][e].get("activeDays", 0) > 0 and not r.get("activeDays")
    ]
    assert fewer, "nobody is active in the last 30 days but not in the last 7"


def test_a_window_in_the_past_counts_a_last_use_inside_it(demo: FakeWindsurf) -> None:
    start, end = NOW - 60 * DAY, NOW - 20 * DAY
    past = rows(demo, start, end)
    stopped_inside = [
        e
        for e, r in rows(demo, NOW - 365 * DAY, NOW).items()
        if (t := last_use(r)) and start <= t < end
    ]
    assert stopped_inside
    for email in stopped_inside:
        assert past[email].get("activeDays", 0) >= 1, email


def test_every_profile_is_in_the_team_and_shows_as_it_should(
    demo: FakeWindsurf, windows: dict[int, dict[str, Any]]
) -> None:
    by_profile = defaultdict(list)
    for member in demo.team:
        by_profile[member.profile].append(windows[90][member.email])
    assert set(by_profile) == set(PROFILES)
    for profile, profile_rows in by_profile.items():
        never_used = PROFILES[profile].rate == 0
        for row in profile_rows:
            assert (last_use(row) is None) == never_used, (profile, row)
            pending = row["teamStatus"] == "USER_TEAM_STATUS_PENDING"
            assert pending == (profile == "pending")
            assert bool(row.get("disableCodeium")) == (profile == "disabled")
            age = NOW - parse_time(row["signupTime"])  # type: ignore[operator]
            if profile in ("new", "new-unused"):
                assert age < 30 * DAY  # inside the grace period
            elif profile != "pending":
                assert age > 30 * DAY
    for row in by_profile["fading"]:
        assert 7 * DAY < NOW - last_use(row) < 30 * DAY  # type: ignore[operator]
    weekday = [windows[90][m.email] for m in demo.team if m.profile == "weekday"]
    for row in weekday:
        for key in _LAST_USES:
            if key in row:
                assert time.gmtime(parse_time(row[key])).tm_wday < 5, row


def test_whole_team_holds_everyone_once_and_a_group_only_its_members(demo: FakeWindsurf) -> None:
    team = rows(demo, NOW - 7 * DAY, NOW)
    assert len(team) == len(demo.team)
    ungrouped = {m.email for m in demo.team if not m.groups}
    twice = {m.email for m in demo.team if len(m.groups) == 2}
    assert ungrouped
    assert twice
    assert ungrouped <= set(team)
    seen: Counter[str] = Counter()
    for group in DEMO_GROUPS:
        members = set(rows(demo, NOW - 7 * DAY, NOW, group))
        assert members == {m.email for m in demo.team if group in m.groups}
        seen.update(members)
    assert set(seen) == set(team) - ungrouped
    assert {e for e, n in seen.items() if n == 2} == twice


def test_the_same_seed_gives_the_same_team_and_the_same_replies() -> None:
    assert synthetic_team(seed=7) == synthetic_team(seed=7)
    assert synthetic_team(seed=7) != synthetic_team(seed=8)
    with FakeWindsurf(clock=lambda: NOW) as one, FakeWindsurf(clock=lambda: NOW) as two:
        for fake_rows in (rows(one, NOW - 30 * DAY, NOW), rows(two, NOW - 30 * DAY, NOW)):
            assert fake_rows == rows(one, NOW - 30 * DAY, NOW)
        assert cascade(one, NOW - 7 * DAY, NOW) == cascade(two, NOW - 7 * DAY, NOW)


def test_emails_transliterate_names() -> None:
    cases = {
        "Søren": "soren",
        "Émile": "emile",
        "Weiß": "weiss",
        "Østergaard": "ostergaard",
        "Ægir": "aegir",
        "Łucja": "lucja",
        "Đorđević": "dordevic",
        "Zoë": "zoe",
        "O'Brien": "obrien",
    }
    assert {name: transliterate(name) for name in cases} == cases
    team = synthetic_team()
    assert len({m.email for m in team}) == len(team)
    for member in team:
        local = member.email.removesuffix("@example.com").rstrip("0123456789")
        first, last = member.name.split(" ")
        assert local == f"{transliterate(first)}.{transliterate(last)}"
        assert member.email.isascii()
    assert any("ø" in m.name or "ß" in m.name or "Ł" in m.name for m in team)


def test_time_moving_moves_last_uses_plausibly() -> None:
    now = [NOW]
    with FakeWindsurf(clock=lambda: now[0]) as fake:
        before = rows(fake, now[0] - 30 * DAY, now[0])
        now[0] += DAY + 3 * 3600
        after = rows(fake, now[0] - 30 * DAY, now[0])
    moved = Counter()
    for member in fake.team:
        old, new = before[member.email], after[member.email]
        for key in _LAST_USES:
            if key not in old:
                continue
            assert parse_time(old[key]) <= parse_time(new[key]) <= now[0]  # type: ignore[operator]
            moved[member.profile] += old[key] != new[key]
        if PROFILES[member.profile].stopped:
            assert {k: old.get(k) for k in _LAST_USES} == {k: new.get(k) for k in _LAST_USES}
    assert all(moved[p] for p in ("heavy", "power", "regular"))
    assert not any(moved[p] for p in ("idle", "fading", "disabled"))
    # Still alive: some people used Windsurf within the last hour of the later moment.
    assert any((t := last_use(r)) and now[0] - t < 3600 for r in after.values())


def test_cascade_happens_only_on_days_in_use_and_adds_up_to_the_credits(
    demo: FakeWindsurf,
) -> None:
    today = NOW // DAY * DAY
    active_on: dict[float, dict[str, Any]] = {
        day: rows(demo, day, day + DAY) for day in (today - k * DAY for k in range(31))
    }
    start = billing_cycle(NOW)[0]
    cycle = rows(demo, start, NOW)
    spanning = 0
    for member in demo.team:
        lines, runs, tools = cascade(demo, today - 30 * DAY, NOW, emails=[member.email])
        days = {parse_time(r["day"]) for r in runs}
        for day in days:
            assert active_on[day][member.email].get("activeDays") == 1, (member.email, day)
        for row in lines:
            assert parse_time(row["day"]) in days
        assert bool(tools) <= bool(runs)
        by_id = defaultdict(set)
        for run in runs:
            by_id[run["cascadeId"]].add(run["day"])
        spanning += any(len(d) > 1 for d in by_id.values())
        in_cycle = cascade(demo, start, NOW, emails=[member.email])[1]
        used = sum(int(r.get("promptsUsed", "0")) for r in in_cycle)
        # promptsUsed counts hundredths of a credit; promptCreditsUsed whole credits.
        assert used // 100 == int(cycle[member.email].get("promptCreditsUsed", "0")), member.email
    assert spanning, "no conversation spans days"


def test_a_group_cascade_is_its_members_together(demo: FakeWindsurf) -> None:
    members = [m.email for m in demo.team if "design" in m.groups]
    by_group = cascade(demo, NOW - 7 * DAY, NOW, group_name="design")
    assert by_group == cascade(demo, NOW - 7 * DAY, NOW, emails=members)
    assert all(by_group)


def test_cascade_reply_looks_like_protobuf_json(demo: FakeWindsurf) -> None:
    lines, runs, tools = cascade(demo, NOW - 30 * DAY, NOW)
    for row in lines + runs + tools:
        for key, value in row.items():
            if key not in ("day", "model", "mode", "cascadeId", "tool"):
                assert isinstance(value, str)
                assert value.isdigit()
                assert value != "0", row
    one_by_one = [cascade(demo, NOW - 30 * DAY, NOW, emails=[m.email]) for m in demo.team[:30]]
    assert any("linesAccepted" not in r for person in one_by_one for r in person[0])
    assert any("promptsUsed" not in r for r in runs)
    assert any('"' in r["model"] for r in runs)
    modes = {r["mode"] for r in runs}
    assert modes == {
        "CONVERSATIONAL_PLANNER_MODE_DEFAULT",
        "CONVERSATIONAL_PLANNER_MODE_READ_ONLY",
        "CONVERSATIONAL_PLANNER_MODE_NO_TOOL",
        "UNKNOWN",
    }
    assert {"CODE_ACTION", "VIEW_FILE", "RUN_COMMAND"} <= {t["tool"] for t in tools}
    cli = call(demo, "CascadeAnalytics", ide_types=["cli"], query_requests=ALL_QUERIES).json()[
        "queryResults"
    ]
    assert cli[0] == {"cascadeLines": {}}
    assert cli[1]["cascadeRuns"]["cascadeRuns"]
    assert cli[2] == {"cascadeToolUsage": {}}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query_requests": ALL_QUERIES, "group_name": "design", "emails": ["x@example.com"]}, 400),
        ({}, 400),
        ({"query_requests": [{"cascade_everything": {}}]}, 400),
        ({"query_requests": ALL_QUERIES, "ide_types": ["vim"]}, 400),
        ({"query_requests": ALL_QUERIES, "start_timestamp": "yesterday"}, 400),
        ({"query_requests": ALL_QUERIES, "group_name": "marketing"}, 404),
        ({"query_requests": ALL_QUERIES, "service_key": "wrong"}, 401),
    ],
)
def test_cascade_refuses_what_the_api_refuses(
    demo: FakeWindsurf, body: dict[str, Any], status: int
) -> None:
    reply = call(demo, "CascadeAnalytics", **body)
    assert reply.status_code == status
    assert reply.json()["error"]


def test_credit_balance_agrees_with_the_team(demo: FakeWindsurf) -> None:
    balance = call(demo, "GetTeamCreditBalance").json()
    start, end = billing_cycle(NOW)
    cycle = rows(demo, start, NOW)
    billable = [
        r
        for r in cycle.values()
        if r["teamStatus"].endswith("APPROVED") and not r.get("disableCodeium")
    ]
    assert balance["promptCreditsPerSeat"] == SEAT_CREDITS
    assert balance["numSeats"] > len(billable)  # some seats bought are not held
    beyond = [int(r.get("promptCreditsUsed", "0")) - SEAT_CREDITS for r in cycle.values()]
    assert balance["addOnCreditsUsed"] == sum(min(ADDON_CAP, b) for b in beyond if b > 0)
    assert balance["addOnCreditsUsed"] > 0
    assert balance["addOnCreditsAvailable"] > balance["addOnCreditsUsed"]
    assert (parse_time(balance["billingCycleStart"]), parse_time(balance["billingCycleEnd"])) == (
        start,
        end,
    )


@pytest.mark.parametrize(
    ("scope", "status", "reply"),
    [
        ({"team_level": True}, 200, {"add_on_credit_cap": ADDON_CAP}),
        ({"group_id": "design"}, 200, {}),
        ({"group_id": "marketing"}, 404, None),
        ({}, 400, None),
        ({"team_level": True, "group_id": "design"}, 400, None),
    ],
)
def test_usage_config_answers_one_scope(
    demo: FakeWindsurf, scope: dict[str, Any], status: int, reply: dict[str, Any] | None
) -> None:
    answer = call(demo, "GetUsageConfig", **scope)
    assert answer.status_code == status
    if reply is not None:
        assert answer.json() == reply


def test_a_key_without_billing_read_is_refused_only_the_billing_methods() -> None:
    with FakeWindsurf(team=synthetic_team(20), billing_read=False) as fake:
        for method in ("GetTeamCreditBalance", "GetUsageConfig"):
            refused = call(fake, method, team_level=True)
            assert refused.status_code == 403
            assert "Billing Read" in refused.json()["error"]
        assert call(fake, "UserPageAnalytics").status_code == 200
        assert call(fake, "CascadeAnalytics", query_requests=ALL_QUERIES).status_code == 200
        fake.billing_read = True
        assert call(fake, "GetTeamCreditBalance").status_code == 200


def test_requests_are_recorded_with_their_method_and_key() -> None:
    with FakeWindsurf(team=synthetic_team(20)) as fake:
        call(fake, "UserPageAnalytics", group_name="design")
        call(fake, "CascadeAnalytics", group_name="design", query_requests=ALL_QUERIES)
        call(fake, "GetTeamCreditBalance", service_key="someone-elses")
        assert call(fake, "NoSuchMethod").status_code == 404
    assert [(r.method, r.service_key) for r in fake.requests] == [
        ("UserPageAnalytics", fake.service_key),
        ("CascadeAnalytics", fake.service_key),
        ("GetTeamCreditBalance", "someone-elses"),
        ("NoSuchMethod", fake.service_key),
    ]
    assert [r.method for r in fake.requests_for("design")] == ["UserPageAnalytics"]
    assert len(fake.requests_for("design", method=None)) == 2


def test_faults_apply_to_one_method_or_to_all() -> None:
    with FakeWindsurf(team=synthetic_team(20)) as fake:
        fake.set_fault("*", Fault(503), method="CascadeAnalytics")
        assert call(fake, "CascadeAnalytics", query_requests=ALL_QUERIES).status_code == 503
        assert call(fake, "UserPageAnalytics").status_code == 200
        fake.set_fault("*", None, method="CascadeAnalytics")
        fake.set_fault("design", Fault(500))
        assert call(fake, "UserPageAnalytics", group_name="design").status_code == 500
        reply = call(fake, "CascadeAnalytics", group_name="design", query_requests=ALL_QUERIES)
        assert reply.status_code == 500
        assert call(fake, "GetTeamCreditBalance").status_code == 200


Seat = tuple[str, str]


def _series(metrics: dict[str, float], name: str) -> Iterator[tuple[dict[str, str], float]]:
    for key, value in metrics.items():
        if key.startswith(name + "{"):
            yield dict(_LABEL.findall(key)), value


@dataclass
class DemoScrape:
    """What --demo's /metrics said at NOW, per seat (group, user), and the team behind it."""

    metrics: dict[str, float]
    fake: FakeWindsurf
    last_use: dict[Seat, float]  # the latest of the seat's last-use times
    active_days: dict[Seat, dict[str, float]]  # by window


@pytest.fixture(scope="module")
def scraped() -> DemoScrape:
    running = launch("--demo", clock=lambda: NOW)
    try:
        metrics = running.metrics()
        fake = running.exporter.fake
        assert fake is not None
    finally:
        running.exporter.stop()
    last: dict[Seat, float] = {}
    for labels, value in _series(metrics, "windsurf_user_last_usage_timestamp_seconds"):
        seat = (labels["group"], labels["user"])
        last[seat] = max(value, last.get(seat, 0.0))
    active: dict[Seat, dict[str, float]] = defaultdict(dict)
    for labels, value in _series(metrics, "windsurf_user_active_days"):
        active[(labels["group"], labels["user"])][labels["window"]] = value
    return DemoScrape(metrics, fake, last, active)


def test_demo_metrics_show_active_days_exactly_where_last_uses_fall(scraped: DemoScrape) -> None:
    # A person in no group has one seat too, with group="" (the team poll).
    assert len(scraped.active_days) == sum(len(m.groups) or 1 for m in scraped.fake.team)
    for seat, days in scraped.active_days.items():
        assert days["7d"] <= days["30d"], seat
        for window, count in days.items():
            start = NOW - int(window.removesuffix("d")) * DAY
            assert (count > 0) == (scraped.last_use.get(seat, 0.0) >= start), (seat, window)


def test_demo_group_numbers_count_distinct_people(scraped: DemoScrape) -> None:
    for group in DEMO_GROUPS:
        people = {u for g, u in scraped.active_days if g == group}
        assert people == {m.email for m in scraped.fake.members(group)}
        assert scraped.metrics[f'windsurf_group_users{{group="{group}"}}'] == len(people)
        for window in ("7d", "30d"):
            active = sum(1 for u in people if scraped.active_days[group, u][window] > 0)
            key = f'windsurf_group_active_users{{group="{group}",window="{window}"}}'
            assert scraped.metrics[key] == active


def test_demo_groups_have_fewer_active_users_in_7_days_than_in_30_in_some_groups(
    scraped: DemoScrape,
) -> None:
    users = {
        (labels["group"], labels["window"]): value
        for labels, value in _series(scraped.metrics, "windsurf_group_active_users")
    }
    assert all(users[g, "7d"] <= users[g, "30d"] for g in DEMO_GROUPS)
    assert [g for g in DEMO_GROUPS if users[g, "7d"] < users[g, "30d"]]
