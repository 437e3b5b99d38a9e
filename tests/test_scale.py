"""A 50,000-user team over 10 groups, rendered from a Snapshot built in memory: the official
parsers read the exposition, and it agrees with the snapshot (series counts per family, values
of sampled users); gzip is the same bytes. Speed is measured by bench/run.py, by hand."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import Collector
from exporter.config import Config, Window
from exporter.demo import FakeWindsurf, synthetic_team
from exporter.sources.user_rows import FEATURES, build_report, decode_page
from exporter.state import Snapshot
from tests.test_collector import assert_gzip_is_the_plain_exposition, group_state

USERS = 50_000
GROUPS = tuple(f"group-{i:02d}" for i in range(10))
NOW = 1_750_000_000.0
pytestmark = pytest.mark.slow
CONFIG = Config(groups=GROUPS, windows=(Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)))
Series = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    """What a poll of every group would publish, from the fake API's replies (no HTTP)."""
    groups = []
    with FakeWindsurf(team=synthetic_team(USERS, groups=GROUPS), clock=lambda: NOW - 600) as fake:
        for group in GROUPS:
            pages = []
            for window in CONFIG.windows:
                body = {"service_key": fake.service_key, "group_name": group}
                status, document = fake.respond(body)
                assert status == 200
                pages.append((window.label, decode_page(document)))
            groups.append(
                group_state(group, build_report(pages), up=True, last_success=NOW - 600, polls=1)
            )
    return Snapshot(states=tuple(groups), config=CONFIG)


def parsed(families: Iterable[Any]) -> dict[Series, float]:
    """Every sample by name and labels; fails on a series given twice."""
    values: dict[Series, float] = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in values, f"duplicate series {key}"
            values[key] = sample.value
    return values


def expected_counts(snapshot: Snapshot) -> Counter[str]:
    """How many series of each per-user family the snapshot should give."""
    counts: Counter[str] = Counter()
    for state in snapshot.states:
        assert state.report is not None
        for user in state.report.users:
            used = sum(t is not None for t in user.last_usage)
            counts["windsurf_user_active_days"] += len(user.active_days)
            counts["windsurf_user_prompt_credits_used"] += user.prompt_credits is not None
            counts["windsurf_user_last_usage_timestamp_seconds"] += used
            counts["windsurf_user_last_usage_age_seconds"] += used
            counts["windsurf_user_signup_timestamp_seconds"] += user.signup is not None
            counts["windsurf_user_disabled"] += 1
            counts["windsurf_user_info"] += 1
            counts["windsurf_user_idle_seconds"] += user.idle_since is not None
    return counts


def check_agrees(snapshot: Snapshot, values: dict[Series, float]) -> None:
    names = Counter(name for name, _ in values)
    for name, count in expected_counts(snapshot).items():
        assert names[name] == count, name
    assert names["windsurf_group_users"] == len(snapshot.states)

    def value(metric: str, /, **labels: str) -> float:
        return values[(metric, frozenset(labels.items()))]

    member_of: dict[str, list[str]] = {}
    for state in snapshot.states:
        for user in state.report.users:
            member_of.setdefault(user.email, []).append(state.name)
    rng = random.Random(5)
    for state in snapshot.states:
        assert state.report is not None
        g = state.name
        assert value("windsurf_group_users", group=g) == state.report.rows
        for user in rng.sample(state.report.users, 25):
            who = {"group": g, "user": user.email}
            for window, days in user.active_days.items():
                assert value("windsurf_user_active_days", **who, window=window) == days
            if user.prompt_credits is not None:
                assert value("windsurf_user_prompt_credits_used", **who) == user.prompt_credits
            for feature, last in zip(FEATURES, user.last_usage, strict=True):
                age = (
                    "windsurf_user_last_usage_age_seconds",
                    frozenset({**who, "feature": feature}.items()),
                )
                if last is None:
                    assert age not in values
                    continue
                assert (
                    value("windsurf_user_last_usage_timestamp_seconds", **who, feature=feature)
                    == last
                )
                assert values[age] == pytest.approx(NOW - last, abs=5e-4)
            assert user.idle_since is not None
            assert value("windsurf_user_idle_seconds", **who) == pytest.approx(
                NOW - user.idle_since, abs=5e-4
            )
            assert value("windsurf_user_disabled", **who) == user.disabled
            info = {"name": user.name, "email": user.email, "role": user.role}
            groups = ",".join(sorted(member_of[user.email]))
            info_series = {**who, **info, "team_status": user.team_status, "groups": groups}
            assert value("windsurf_user_info", **info_series) == 1


def test_the_whole_text_exposition_parses_and_agrees_with_the_snapshot(
    snapshot: Snapshot,
) -> None:
    text = Collector().render(snapshot, NOW).decode()
    check_agrees(snapshot, parsed(parse_text(text)))


def test_openmetrics_parses_and_agrees_too(snapshot: Snapshot) -> None:
    # Two groups (about 11,000 users): the OpenMetrics parser needs some 15 s for all 50,000,
    # and the formats differ only in their headers, which two groups cover as well.
    two = Snapshot(snapshot.states[:2], replace(CONFIG, groups=GROUPS[:2]))
    text = Collector().render(two, NOW, openmetrics=True).decode()
    check_agrees(two, parsed(parse_openmetrics(text)))


def test_gzip_decompresses_to_exactly_the_plain_exposition(snapshot: Snapshot) -> None:
    assert_gzip_is_the_plain_exposition(snapshot, NOW)
