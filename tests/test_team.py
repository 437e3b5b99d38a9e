"""The team poll: its config, the join of the groups' members with the team's rows when the
upstream changed between two requests, and a failing team poll that hides no group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.collector import Collector
from exporter.config import Config, ConfigError, Window, parse_config
from exporter.demo import FakeWindsurf, Fault
from exporter.sources.base import Parts
from exporter.sources.people import INFO_BLOCK
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_INFO, USER_PAGE
from exporter.sources.user_rows import GroupReport, build_report, decode_page
from exporter.state import Snapshot, SourceState
from tests import rows
from tests.conftest import Running, inflated, samples, series, wait_for

NOW = 1728640000.0
WEEK, MONTH = Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)
CONFIG = Config(groups=("eng",), windows=(WEEK, MONTH))
ALICE = {**rows.ALICE, "activeDays": 3}
BOB = {**rows.BOB, "activeDays": 0}


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        (["eng", ""], "groups[1]: '' is no group name"),
        (["eng", "  "], "groups[1]: '  ' is no group name"),
        (["eng", "ops", "eng"], "groups[2]: 'eng' is listed twice"),
    ],
)
def test_an_empty_or_repeated_group_is_a_config_error_naming_the_entry(
    groups: list[str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"groups": groups}, require_key=False)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_team_is_on_by_default_and_must_be_true_or_false() -> None:
    assert parse_config({}, require_key=False).team
    assert not parse_config({"team": False}, require_key=False).team
    with pytest.raises(ConfigError, match="team: 'no' must be true or false"):
        parse_config({"team": "no"}, require_key=False)


def report(*pages: tuple[str, list[dict[str, Any]]]) -> GroupReport:
    return build_report([(label, decode_page({"userTableStats": r})) for label, r in pages])


def render(team: GroupReport | None, eng: GroupReport) -> dict[str, float]:
    states = [SourceState(USER_PAGE.name, "eng", eng, up=True, last_success=NOW, polls=1)]
    if team is not None:
        states.append(SourceState(TEAM.name, "", team, up=True, last_success=NOW, polls=1))
    text = Collector().render(Snapshot(tuple(states), CONFIG), NOW).decode()
    return samples(text)


def test_a_member_the_team_reply_does_not_know_yet_keeps_their_own_row_and_no_guess() -> None:
    # Bob joined eng between the team's requests and the group's: the team knows only Alice.
    team = report(("7d", [ALICE]), ("30d", [{**ALICE, "activeDays": 9}]))
    eng = report(("7d", [ALICE, BOB]))
    metrics = render(team, eng)
    bob = {"group": "eng", "user": "bob@example.com"}
    assert metrics[series("windsurf_user_prompt_credits_used", **bob)] == 8300
    assert metrics[series("windsurf_user_active_days", **bob, window="7d")] == 0
    assert series("windsurf_user_active_days", **bob, window="30d") not in metrics
    assert metrics['windsurf_group_active_users{group="eng",window="7d"}'] == 1
    assert 'windsurf_group_active_users{group="eng",window="30d"}' not in metrics


def test_a_person_missing_from_one_window_of_the_team_leaves_that_count_unknown() -> None:
    team = report(("7d", [ALICE, BOB]), ("30d", [{**ALICE, "activeDays": 9}]))
    metrics = render(team, report(("7d", [ALICE])))
    assert metrics['windsurf_team_active_users{window="7d"}'] == 1
    assert 'windsurf_team_active_users{window="30d"}' not in metrics
    assert metrics["windsurf_team_users"] == 2


def test_other_windows_of_a_group_come_from_its_members_team_rows() -> None:
    team = report(
        ("7d", [ALICE, BOB]), ("30d", [{**ALICE, "activeDays": 9}, {**BOB, "activeDays": 4}])
    )
    metrics = render(team, report(("7d", [ALICE, BOB])))
    assert metrics['windsurf_group_active_users{group="eng",window="30d"}'] == 2
    alice = {"group": "eng", "user": "alice@example.com"}
    assert metrics[series("windsurf_user_active_days", **alice, window="30d")] == 9


def test_without_live_team_data_people_in_no_group_are_not_guessed() -> None:
    metrics = render(None, report(("7d", [ALICE])))
    assert {k for k in metrics if k.startswith("windsurf_user_info")} == {
        series(
            "windsurf_user_info",
            group="eng",
            user="alice@example.com",
            name="Alice",
            email="alice@example.com",
            role="admin",
            team_status="USER_TEAM_STATUS_APPROVED",
            groups="eng",
        )
    }


def test_a_failing_team_poll_keeps_its_last_data_and_hides_no_group(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {
        "api": {"url": fake_api.url, "retries": 0},
        "groups": ["engineering"],
        "poll": {"interval": "1s"},
    }
    running = start_exporter("--config.file", str(write_config(config)))
    before = running.metrics()
    fake_api.set_fault("", Fault(503))

    def team_down() -> dict[str, float] | None:
        metrics = running.metrics()
        return metrics if metrics["windsurf_team_up"] == 0 else None

    after = wait_for(team_down, what="the team poll to fail")
    assert after['windsurf_up{group="engineering"}'] == 1
    assert after["windsurf_team_users"] == before["windsurf_team_users"]
    assert after['windsurf_exporter_team_poll_errors_total{reason="server_error"}'] >= 1
    failed = [r.getMessage() for r in caplog.records if r.name == "exporter.poller"]
    assert any("; team down, keeping its last good data" in m for m in failed), failed


def test_while_a_group_is_not_live_nobody_is_said_to_be_in_no_group() -> None:
    # Bob is in the team but not in eng; ops (configured) has no live data: Bob may be in it.
    config = Config(groups=("eng", "ops"), windows=(WEEK, MONTH))
    team = report(("7d", [ALICE, BOB]), ("30d", [ALICE, BOB]))
    states = (
        SourceState(USER_PAGE.name, "eng", report(("7d", [ALICE])), up=True, last_success=NOW),
        SourceState(USER_PAGE.name, "ops"),
        SourceState(TEAM.name, "", team, up=True, last_success=NOW),
    )
    text = Collector().render(Snapshot(states, config), NOW).decode()
    assert "bob@example.com" not in text
    assert 'user="alice@example.com"' in text
    assert "windsurf_team_users 2" in text


def test_a_new_report_of_one_group_redoes_only_the_pieces_it_changes() -> None:
    config = Config(groups=("eng", "ops", "lab"), windows=(WEEK, MONTH))
    carol = {**rows.ALICE, "email": "carol@example.com", "name": "Carol"}
    team = report(("7d", [ALICE, BOB, carol]), ("30d", [ALICE, BOB, carol]))
    live: dict[tuple[str, str], Any] = {
        (USER_PAGE.name, "eng"): report(("7d", [ALICE])),
        (USER_PAGE.name, "ops"): report(("7d", [BOB])),
        (USER_PAGE.name, "lab"): report(("7d", [carol])),
        (TEAM.name, ""): team,
    }
    first = Parts({})
    USER_PAGE.render(config, live, first)
    # New reports of eng and of the team with the same rows (a poll): nothing is redone.
    live[(USER_PAGE.name, "eng")] = report(("7d", [ALICE]))
    live[(TEAM.name, "")] = report(("7d", [ALICE, BOB, carol]), ("30d", [ALICE, BOB, carol]))
    second = Parts(first.kept)
    USER_PAGE.render(config, live, second)
    assert all(second.kept[k][2] is first.kept[k][2] for k in first.kept)
    # Bob joins eng: his series in ops now name both groups, so ops' info series are redone,
    # not its others; lab is kept whole.
    live[(USER_PAGE.name, "eng")] = report(("7d", [ALICE, BOB]))
    third = Parts(second.kept)
    rendered = USER_PAGE.render(config, live, third)
    assert third.kept[("group", "eng")][2] is not second.kept[("group", "eng")][2]
    assert third.kept[("info", "ops", 0)][2] is not second.kept[("info", "ops", 0)][2]
    assert third.kept[("group", "ops")][2] is second.kept[("group", "ops")][2]
    assert third.kept[("group", "lab")][2] is second.kept[("group", "lab")][2]
    assert third.kept[("info", "lab", 0)][2] is second.kept[("info", "lab", 0)][2]
    info = inflated(rendered.static[USER_INFO]).decode()
    assert 'group="ops",user="bob@example.com"' in info
    assert info.count('groups="eng,ops"') == 2


def test_a_label_changed_in_a_large_group_redoes_only_the_info_block_it_is_in() -> None:
    config = Config(groups=("eng", "ops"), windows=(WEEK,))
    people = [{**rows.ALICE, "email": f"u{i}@example.com"} for i in range(2 * INFO_BLOCK + 100)]
    moved = people[INFO_BLOCK + 7]
    live: dict[tuple[str, str], Any] = {
        (USER_PAGE.name, "eng"): report(("7d", [ALICE])),
        (USER_PAGE.name, "ops"): report(("7d", people)),
    }
    first = Parts({})
    USER_PAGE.render(config, live, first)
    assert [k for k in first.kept if k[:2] == ("info", "ops")] == [
        ("info", "ops", b) for b in range(3)
    ]
    live[(USER_PAGE.name, "eng")] = report(("7d", [ALICE, moved]))  # their groups label changes
    second = Parts(first.kept)
    rendered = USER_PAGE.render(config, live, second)
    redone = [
        b
        for b in range(3)
        if second.kept[("info", "ops", b)][2] is not first.kept[("info", "ops", b)][2]
    ]
    assert redone == [1]
    assert inflated(rendered.static[USER_INFO]) == inflated(
        USER_PAGE.render(config, live, Parts({})).static[USER_INFO]
    )
