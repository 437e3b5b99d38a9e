"""The exposition for a fixed snapshot and clock, byte for byte (golden files), and the rules
it follows: escaping, absent features, ages at scrape time, staleness, both formats, gzip.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 uv run pytest`.
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import shutil
import subprocess
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import Collector
from exporter.config import Config, Window
from exporter.exposition import Ages
from exporter.sources.cascade import CASCADE, CascadeReport
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE
from exporter.sources.user_rows import build_report, decode_page
from exporter.state import Reason, Snapshot, SourceState
from tests import rows
from tests.conftest import USER_PAGE_ONLY, samples

GOLDEN = Path(__file__).parent / "golden"
NOW = 1728640000.0  # 2024-10-11T09:46:40Z
CONFIG = Config(
    groups=("engineering", "research", "empty", "broken", "new"),
    windows=(Window("7d", 604800.0), Window("30d", 2592000.0)),
    collectors=USER_PAGE_ONLY,
)

ALICE = {**rows.ALICE, "lastChatUsageTime": "2024-10-10T20:30:00.5+02:00"}
BOB = {**rows.BOB, "name": 'Bob "Bobby" Tables\\', "promptCreditsUsed": "8300"}
ZOE = {
    "name": "Zoë Ñúñez\nsecond line",
    "email": "zoe@example.com",
    "role": "member",
    "signupTime": "2024-09-01T00:00:00Z",
    "disableCodeium": True,
    "teamStatus": "USER_TEAM_STATUS_APPROVED",
    "unknownField": {"x": 1},
}
PENDING = {
    "name": "Pat",
    "email": "pat@example.com",
    "teamStatus": "USER_TEAM_STATUS_PENDING",
    "signupTime": "2024-10-10T00:00:00Z",
}
NIA = {
    "name": "Nia",
    "email": "nia@example.com",
    "role": "member",
    "signupTime": "2024-09-15T00:00:00Z",
    "teamStatus": "USER_TEAM_STATUS_APPROVED",
}
CYCLE = {"billingCycleStart": "2024-10-01T00:00:00Z", "billingCycleEnd": "2024-11-01T00:00:00Z"}


def _report(rows_7d: list[dict[str, Any]], rows_30d: list[dict[str, Any]]) -> Any:
    return build_report(
        [
            ("7d", decode_page({"userTableStats": rows_7d, **CYCLE})),
            ("30d", decode_page({"userTableStats": rows_30d, **CYCLE})),
        ]
    )


def group_state(name: str, report: Any = None, **fields: Any) -> SourceState:
    return SourceState(USER_PAGE.name, name, report, **fields)


def _counts(**values: int) -> MappingProxyType[str, int]:
    return MappingProxyType(values)


def fixed_snapshot(config: Config = CONFIG) -> Snapshot:
    """Five groups covering every case: healthy, shared user, empty, failing, never polled;
    and the whole team, with Nia, who is in no group (so has no seat series while "new" has
    no data: she might be in it)."""
    week = [{**ALICE, "activeDays": 5}, {**BOB, "activeDays": "3"}, ZOE, PENDING]
    month = [{**ALICE, "activeDays": 21}, {**BOB, "activeDays": 19}, ZOE, PENDING]
    engineering = _report(week, month)
    research = _report([{**BOB, "activeDays": 3}], [{**BOB, "activeDays": 19}])
    team = SourceState(
        TEAM.name,
        "",
        _report([*week, NIA], [*month, NIA]),
        up=True,
        last_success=NOW - 120,
        last_attempt=NOW - 120,
        last_duration=0.5,
        polls=2,
        requests=_counts(success=4),
    )
    return Snapshot(
        config=config,
        states=(
            team,
            group_state(
                "engineering",
                engineering,
                up=True,
                last_success=NOW - 60,
                last_attempt=NOW - 60,
                last_duration=0.25,
                polls=3,
                requests=_counts(success=6),
            ),
            group_state(
                "research",
                research,
                up=True,
                last_success=NOW - 60,
                last_attempt=NOW - 60,
                last_duration=0.125,
                polls=3,
                requests=_counts(success=6),
            ),
            group_state(
                "empty",
                _report([], []),
                up=True,
                last_success=NOW - 60,
                last_attempt=NOW - 60,
                last_duration=0.0625,
                polls=1,
                requests=_counts(success=2),
            ),
            group_state(
                "broken",
                research,
                up=False,
                last_success=NOW - 3600,
                last_attempt=NOW - 60,
                last_duration=30.0,
                polls=5,
                last_error=Reason.RATE_LIMITED,
                errors=_counts(rate_limited=2),
                requests=_counts(success=6, rate_limited=8),
            ),
            group_state(
                "new",
                None,
                up=False,
                last_attempt=NOW - 60,
                last_duration=0.5,
                polls=1,
                last_error=Reason.AUTH,
                errors=_counts(auth=1),
                requests=_counts(auth=1),
            ),
        ),
    )


def render(snapshot: Snapshot | None = None, now: float = NOW, **kwargs: Any) -> str:
    return Collector().render(snapshot or fixed_snapshot(), now, **kwargs).decode()


def _check_golden(name: str, text: str) -> None:
    # The build line depends on the interpreter running the test; it has a test of its own.
    text = re.sub(r"(windsurf_exporter_build_info)\{.*\}", r"\1{...}", text)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_golden_text_exposition() -> None:
    _check_golden("snapshot.prom", render())


def test_golden_openmetrics_exposition() -> None:
    _check_golden("snapshot.openmetrics", render(openmetrics=True))


def test_build_info_names_the_package_version_and_python() -> None:
    m = samples(render())
    assert (
        m[
            f'windsurf_exporter_build_info{{version="{version("windsurf-exporter")}",'
            f'python_version="{platform.python_version()}"}}'
        ]
        == 1
    )


def test_text_output_parses_and_matches_the_snapshot() -> None:
    families = {f.name: f for f in parse_text(render())}
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    key = (("feature", "chat"), ("group", "engineering"), ("user", "alice@example.com"))
    assert values[("windsurf_user_last_usage_timestamp_seconds", key)] == 1728585000.5
    assert values[("windsurf_user_last_usage_age_seconds", key)] == NOW - 1728585000.5
    assert families["windsurf_exporter_poll_errors"].type == "counter"


def test_openmetrics_output_parses() -> None:
    families = list(parse_openmetrics(render(openmetrics=True)))
    kinds = {f.name: f.type for f in families}
    assert (kinds["windsurf_user"], kinds["windsurf_exporter_polls"]) == ("info", "counter")
    assert "windsurf_up" in kinds


def test_labels_are_escaped() -> None:
    text = render()
    assert 'name="Bob \\"Bobby\\" Tables\\\\"' in text
    assert 'name="Zoë Ñúñez\\nsecond line"' in text
    info = [s for f in parse_text(text) for s in f.samples if s.name == "windsurf_user_info"]
    assert {s.labels["name"] for s in info} >= {'Bob "Bobby" Tables\\', "Zoë Ñúñez\nsecond line"}


def test_a_feature_never_used_has_no_series() -> None:
    m = samples(render())
    alice = 'group="engineering",user="alice@example.com"'
    assert f'windsurf_user_last_usage_timestamp_seconds{{{alice},feature="autocomplete"}}' in m
    assert f'windsurf_user_last_usage_timestamp_seconds{{{alice},feature="command"}}' not in m
    assert f'windsurf_user_last_usage_age_seconds{{{alice},feature="command"}}' not in m


def test_idle_is_since_signup_for_a_seat_never_used() -> None:
    m = samples(render())
    zoe = '{group="engineering",user="zoe@example.com"}'
    assert m[f"windsurf_user_idle_seconds{zoe}"] == NOW - 1725148800  # signup 2024-09-01
    assert m[f"windsurf_user_disabled{zoe}"] == 1


def test_a_user_in_two_groups_has_a_series_in_each() -> None:
    m = samples(render())
    for group in ("engineering", "research"):
        assert (
            m[f'windsurf_user_prompt_credits_used{{group="{group}",user="bob@example.com"}}']
            == 8300
        )


def test_an_empty_group_is_up_with_zero_users() -> None:
    m = samples(render())
    assert m['windsurf_group_users{group="empty"}'] == 0
    assert m['windsurf_up{group="empty"}'] == 1


def test_a_failing_group_keeps_its_last_good_data_and_says_why() -> None:
    m = samples(render())
    assert m['windsurf_up{group="broken"}'] == 0
    assert m['windsurf_exporter_last_success_timestamp_seconds{group="broken"}'] == NOW - 3600
    assert m['windsurf_exporter_poll_errors_total{group="broken",reason="rate_limited"}'] == 2
    assert m['windsurf_user_prompt_credits_used{group="broken",user="bob@example.com"}'] == 8300


def test_a_group_never_polled_successfully_has_only_health_series() -> None:
    text = render()
    lines = [line for line in text.splitlines() if 'group="new"' in line]
    assert {line.split("{")[0] for line in lines} == {
        "windsurf_up",
        "windsurf_exporter_last_poll_timestamp_seconds",
        "windsurf_exporter_last_poll_duration_seconds",
        "windsurf_exporter_polls_total",
        "windsurf_exporter_poll_overruns_total",
        "windsurf_exporter_poll_errors_total",
        "windsurf_exporter_api_requests_total",
        "windsurf_collector_up",
        "windsurf_exporter_collector_last_poll_duration_seconds",
        "windsurf_exporter_collector_poll_errors_total",
        "windsurf_exporter_collector_api_requests_total",
    }


def test_ages_move_with_the_clock_and_nothing_else_does() -> None:
    collector = Collector()
    snapshot = fixed_snapshot()
    first = samples(collector.render(snapshot, NOW).decode())
    later = samples(collector.render(snapshot, NOW + 90.5).decode())
    for series, value in first.items():
        if series.startswith(("windsurf_user_last_usage_age_seconds", "windsurf_user_idle")):
            assert later[series] == pytest.approx(value + 90.5), series
        elif not series.startswith("windsurf_group_idle_users"):
            assert later[series] == value, series


def test_group_idle_users_counts_billable_seats_idle_beyond_each_threshold() -> None:
    m = samples(render())
    # Billable in engineering: alice (idle ~11h), bob (~15.6h); zoe is disabled, pat pending.
    # (The data must outlive the 8 days, so max_staleness is raised.)
    assert m['windsurf_group_idle_users{group="engineering",idle_for="7d"}'] == 0
    patient = replace(CONFIG, poll=replace(CONFIG.poll, max_staleness=60 * 86400.0))
    later = samples(render(fixed_snapshot(patient), now=NOW + 8 * 86400))
    assert later['windsurf_group_idle_users{group="engineering",idle_for="7d"}'] == 2
    assert later['windsurf_group_idle_users{group="engineering",idle_for="30d"}'] == 0


def test_group_aggregates() -> None:
    m = samples(render())
    assert m['windsurf_group_users{group="engineering"}'] == 4
    assert m['windsurf_group_billable_users{group="engineering"}'] == 2
    assert m['windsurf_group_prompt_credits_used{group="engineering"}'] == 20800
    assert m['windsurf_group_active_users{group="engineering",window="7d"}'] == 2
    status = 'windsurf_group_users_by_team_status{group="engineering",team_status='
    assert m[status + '"USER_TEAM_STATUS_PENDING"}'] == 1
    assert m[status + '"USER_TEAM_STATUS_APPROVED"}'] == 3


def test_stale_groups_lose_their_data_but_keep_their_health() -> None:
    # "broken" last succeeded an hour before NOW; the others a minute before.
    m = samples(render(now=NOW - 3600 + 6 * 3600 + 1))
    assert not any(
        'group="broken"' in s and s.startswith(("windsurf_user", "windsurf_group")) for s in m
    )
    assert m['windsurf_up{group="broken"}'] == 0
    assert m['windsurf_exporter_last_success_timestamp_seconds{group="broken"}'] == NOW - 3600
    assert m['windsurf_group_users{group="engineering"}'] == 4


def test_api_keys_never_appear() -> None:
    for text in (render(), render(openmetrics=True)):
        assert "aaaaaaaa" not in text
        assert "bbbbbbbb" not in text


def assert_gzip_is_the_plain_exposition(snapshot: Snapshot, now: float) -> None:
    collector = Collector()
    for openmetrics in (False, True):
        plain = collector.render(snapshot, now, openmetrics=openmetrics)
        # Twice: the second time the compressed static part comes from the cache.
        for _ in range(2):
            packed = collector.render(snapshot, now, openmetrics=openmetrics, gzip=True)
            assert gzip.decompress(packed) == plain


def test_gzip_is_the_same_exposition() -> None:
    assert_gzip_is_the_plain_exposition(fixed_snapshot(), NOW)


def test_a_prepared_snapshot_renders_the_same_bytes_from_what_prepare_compressed() -> None:
    snapshot, prepared = fixed_snapshot(), Collector()
    prepared.prepare(snapshot, NOW)
    statics = dict(prepared._static)
    for openmetrics in (False, True):
        for gzip_ in (False, True):
            body = prepared.render(snapshot, NOW + 5, openmetrics=openmetrics, gzip=gzip_)
            fresh = Collector().render(snapshot, NOW + 5, openmetrics=openmetrics, gzip=gzip_)
            unpack = gzip.decompress if gzip_ else bytes
            assert unpack(body) == unpack(fresh)
    # The scrapes used the compressed static parts prepare made, not new ones.
    assert prepared._static == statics


def test_a_use_later_than_the_scrape_clock_reads_as_age_zero() -> None:
    # Clock skew: at this `now` Alice's autocomplete use (22:56:10Z) is still 7,030 s ahead.
    now = 1728593940.0  # 2024-10-10T20:59:00Z
    m = samples(render(now=now))
    alice = 'group="engineering",user="alice@example.com"'
    age = "windsurf_user_last_usage_age_seconds{" + alice
    assert m[age + ',feature="autocomplete"}'] == 0
    assert m[age + ',feature="chat"}'] == now - 1728585000.5
    assert m["windsurf_user_idle_seconds{" + alice + "}"] == 0


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian package prometheus); CI installs it",
)
def test_promtool_check_metrics_is_clean_but_for_active_days() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=render(),
        capture_output=True,
        text=True,
        check=False,
    )
    remarks = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert remarks == ['windsurf_user_active_days use base unit "seconds" instead of "days"']


def test_a_group_not_yet_polled_has_no_series_at_all() -> None:
    snapshot = Snapshot(config=CONFIG, states=(group_state("engineering"),))
    assert "engineering" not in render(snapshot)


def test_a_lone_surrogate_in_a_name_does_not_break_the_exposition() -> None:
    report = _report([{**ALICE, "name": "bad \ud800 name"}], [ALICE])
    snapshot = Snapshot(
        config=CONFIG,
        states=(group_state("engineering", report, up=True, last_success=NOW, polls=1),),
    )
    text = render(snapshot)
    assert 'name="bad ? name"' in text
    assert "windsurf_user_info" in {f.name for f in parse_text(text)}


def test_one_collector_drops_a_group_whose_data_went_stale_between_two_scrapes() -> None:
    # The same snapshot scraped twice: the cached static part must not outlive the liveness
    # it was rendered for.
    collector, snapshot = Collector(), fixed_snapshot()
    fresh = collector.render(snapshot, NOW).decode()
    stale = collector.render(snapshot, NOW - 3600 + 6 * 3600 + 1).decode()
    assert group_series_of(fresh, "broken")
    assert not group_series_of(stale, "broken")
    assert group_series_of(stale, "engineering")


def group_series_of(text: str, group: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(("windsurf_user", "windsurf_group")) and f'group="{group}"' in line
    ]


def test_an_age_line_keeps_a_percent_sign_of_its_labels_and_clamps_a_future_time() -> None:
    ages = Ages(['a{user="100% %s %d"} ', "b "], [NOW - 1.5, NOW + 60])
    assert b"".join(ages.render(NOW)) == b'a{user="100% %s %d"} 1.500\nb 0.000\n'
    assert b"".join(Ages([], []).render(NOW)) == b""


def test_a_poll_of_another_source_does_not_render_the_user_page_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    real = type(USER_PAGE).render

    def counted(self: Any, *args: Any) -> Any:
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(type(USER_PAGE), "render", counted)
    collector = Collector()
    snapshot = fixed_snapshot()
    before = collector.render(snapshot, NOW).decode()
    cascade = SourceState(
        CASCADE.name, "engineering", CascadeReport((), (), (), ()), up=True, last_success=NOW
    )
    polled = replace(snapshot, states=(*snapshot.states, cascade))
    after = collector.render(polled, NOW).decode()
    assert len(calls) == 1
    users = [line for line in before.splitlines() if line.startswith("windsurf_user_")]
    assert users
    assert set(users) <= set(after.splitlines())
    # A new poll of a group does render it again.
    states = tuple(
        replace(s, report=replace(s.report))
        if s.name == "engineering" and s.source == USER_PAGE.name
        else s
        for s in polled.states
    )
    collector.render(replace(polled, states=states), NOW)
    assert len(calls) == 2
