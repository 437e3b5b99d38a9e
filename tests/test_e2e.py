"""End to end: the real exporter polls the fake Windsurf API over loopback and serves /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from exporter.demo import DEMO_GROUPS, FakeWindsurf, Fault, Member, synthetic_team
from exporter.sources.values import parse_time
from tests.conftest import Process, Running, samples, wait_for
from tests.rows import ALICE as ALICE_ROW
from tests.rows import BOB

# The API reference's example, with Bob's numbers sent as strings (as protobuf JSON does).
ROWS = [
    ALICE_ROW,
    {
        **BOB,
        "activeDays": "210",
        "promptCreditsUsed": "8300",
        "lastAutocompleteUsageTime": "2024-10-10T18:11:23.980237Z",
    },
]
ALICE_AUTOCOMPLETE = 1728600970.0  # 2024-10-10T22:56:10Z
ALICE = 'group="engineering",user="alice@example.com"'


def _config(fake: FakeWindsurf, **extra: Any) -> dict[str, Any]:
    return {
        "api": {"url": fake.url, "timeout": "5s"},
        "poll": {"interval": "1s"},
        "groups": ["engineering", "research"],
        **extra,
    }


def test_real_process_serves_the_api_data(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
) -> None:
    fake_api.overrides["engineering"] = ROWS
    # The example's activeDays answer the API's default window, a year: more than 30d holds.
    config = _config(fake_api, active_days_windows=["365d"])
    proc = exporter_process("--config.file", str(write_config(config)))
    wait_for(lambda: httpx.get(proc.url + "/-/ready").status_code == 200, what="readiness")

    first_at = time.time()
    first = samples(httpx.get(proc.url + "/metrics").text)
    assert first['windsurf_up{group="engineering"}'] == 1
    assert first['windsurf_up{group="research"}'] == 1
    assert first[f"windsurf_user_prompt_credits_used{{{ALICE}}}"] == 12500
    assert first[f'windsurf_user_active_days{{{ALICE},window="365d"}}'] == 178
    assert (
        first[f'windsurf_user_last_usage_timestamp_seconds{{{ALICE},feature="autocomplete"}}']
        == ALICE_AUTOCOMPLETE
    )
    assert f'windsurf_user_last_usage_timestamp_seconds{{{ALICE},feature="command"}}' not in first
    bob = 'group="engineering",user="bob@example.com"'
    assert first[f"windsurf_user_prompt_credits_used{{{bob}}}"] == 8300
    assert (
        first[f'windsurf_user_last_usage_timestamp_seconds{{{bob},feature="autocomplete"}}']
        == 1728583883.980237
    )
    assert first['windsurf_group_users{group="engineering"}'] == 2
    research = sum(1 for m in fake_api.team if "research" in m.groups)
    assert first['windsurf_group_users{group="research"}'] == research

    # Ages are computed when scraped: two scrapes apart differ by the time between them.
    age = f'windsurf_user_last_usage_age_seconds{{{ALICE},feature="autocomplete"}}'
    assert abs(first[age] - (first_at - ALICE_AUTOCOMPLETE)) < 5
    wait_for(lambda: time.time() > first_at + 2, what="two seconds to pass")
    second_at = time.time()
    second = samples(httpx.get(proc.url + "/metrics").text)
    assert abs((second[age] - first[age]) - (second_at - first_at)) < 1.0
    assert second[age] > first[age] + 1


def test_ages_follow_the_injected_clock_exactly(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.overrides["engineering"] = ROWS
    now = [ALICE_AUTOCOMPLETE + 1000.0]
    running = start_exporter(
        "--config.file", str(write_config(_config(fake_api))), clock=lambda: now[0]
    )
    age = f'windsurf_user_last_usage_age_seconds{{{ALICE},feature="autocomplete"}}'
    idle = f"windsurf_user_idle_seconds{{{ALICE}}}"
    assert running.metrics()[age] == 1000
    assert running.metrics()[idle] == 1000
    now[0] += 42.25
    later = running.metrics()
    assert later[age] == 1042.25
    assert later[idle] == 1042.25


def test_the_request_carries_the_key_group_and_window(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = _config(fake_api, active_days_windows=["7d", "30d"])
    start_exporter("--config.file", str(write_config(config)))
    group = [r.body for r in fake_api.requests_for("engineering")]
    team = [r.body for r in fake_api.requests_for("")]
    assert {b["service_key"] for b in group + team} == {fake_api.service_key}
    assert {b["group_name"] for b in group} == {"engineering"}
    # The team is asked once per window; a group once, for its members, in the first window.
    assert {time_span(b) for b in team[:2]} == {7 * 86400, 30 * 86400}
    assert not any("group_name" in b for b in team)
    assert time_span(group[0]) == 7 * 86400
    assert all(b["start_timestamp"].endswith("Z") for b in group + team)


def test_without_the_team_poll_each_group_is_asked_once_per_window(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = _config(fake_api, active_days_windows=["7d", "30d"], team=False)
    start_exporter("--config.file", str(write_config(config)))
    bodies = [r.body for r in fake_api.requests_for("engineering")]
    assert {time_span(b) for b in bodies[:2]} == {7 * 86400, 30 * 86400}
    assert not fake_api.requests_for("")


def time_span(body: dict[str, str]) -> float:
    start, end = parse_time(body["start_timestamp"]), parse_time(body["end_timestamp"])
    assert start is not None
    assert end is not None
    return end - start


def test_whole_team_when_no_groups_are_configured(
    fake_api: FakeWindsurf,
    team: list[Member],
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = {"api": {"url": fake_api.url}, "poll": {"interval": "1s"}}
    metrics = start_exporter("--config.file", str(write_config(config))).metrics()
    assert metrics["windsurf_team_up"] == 1
    assert metrics["windsurf_team_users"] == len(team)
    assert not any(k.startswith("windsurf_group_") for k in metrics)
    # Everyone is in no configured group: group="".
    assert sum(1 for k in metrics if k.startswith('windsurf_user_info{group="",')) == len(team)
    assert "group_name" not in fake_api.requests[0].body


def test_whole_team_as_the_group_named_empty_without_the_team_poll(
    fake_api: FakeWindsurf,
    team: list[Member],
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = {"api": {"url": fake_api.url}, "poll": {"interval": "1s"}, "team": False}
    metrics = start_exporter("--config.file", str(write_config(config))).metrics()
    assert metrics['windsurf_up{group=""}'] == 1
    assert metrics['windsurf_group_users{group=""}'] == len(team)
    assert "windsurf_team_up" not in metrics


def test_an_error_in_a_200_reply_marks_only_that_group_down(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.set_fault("research", Fault(error="internal analytics failure"))
    running = start_exporter("--config.file", str(write_config(_config(fake_api))))
    metrics = running.metrics()
    assert metrics['windsurf_up{group="research"}'] == 0
    assert metrics['windsurf_exporter_poll_errors_total{group="research",reason="api_error"}'] >= 1
    assert metrics['windsurf_up{group="engineering"}'] == 1


def test_the_empty_group_is_up_with_zero_users(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.overrides["research"] = []
    metrics = start_exporter("--config.file", str(write_config(_config(fake_api)))).metrics()
    assert metrics['windsurf_group_users{group="research"}'] == 0
    assert metrics['windsurf_up{group="research"}'] == 1


def test_demo_mode_needs_no_key_and_shows_a_team(
    exporter_process: Callable[..., Process],
) -> None:
    proc = exporter_process("--demo")
    wait_for(lambda: httpx.get(proc.url + "/-/ready").status_code == 200, what="readiness")
    text = httpx.get(proc.url + "/metrics").text
    metrics = samples(text)
    team = synthetic_team()  # what --demo serves
    for group in DEMO_GROUPS:
        assert metrics[f'windsurf_up{{group="{group}"}}'] == 1
        members = sum(1 for m in team if group in m.groups)
        assert metrics[f'windsurf_group_users{{group="{group}"}}'] == members
    idle = [v for k, v in metrics.items() if k.startswith("windsurf_user_idle_seconds")]
    assert max(idle) > 20 * 86400  # idle seats exist
    assert any('team_status="USER_TEAM_STATUS_PENDING"' in k for k in metrics)
    assert any(k.startswith("windsurf_user_disabled") and v == 1 for k, v in metrics.items())
    assert "apiKey" not in text


def test_a_fake_api_never_started_stops_at_once() -> None:
    fake = FakeWindsurf(team=[])
    stopper = threading.Thread(target=fake.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=5)
    assert not stopper.is_alive()
