"""A hostile upstream (issue 11, items 1-5): replies the JSON can carry but no real API sends.
Each case is served by the fake API over loopback to the real exporter, whose /metrics must stay
200, parsable, bounded, and free of impossible numbers. Timings live in bench/upstream.py."""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.api import ApiError, Client, Clocks
from exporter.config import ApiConfig, Secret
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, synthetic_team
from exporter.sources.user_rows import decode_page
from exporter.state import Reason
from tests.conftest import Running, page_request, samples, series

GROUP = "eng"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def upstream() -> Iterator[FakeWindsurf]:
    with FakeWindsurf(team=synthetic_team(3, groups=(GROUP,))) as fake:
        yield fake


@pytest.fixture
def run(
    upstream: FakeWindsurf,
    tmp_path: Path,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> Callable[..., Running]:
    """The exporter polling `upstream`'s group "eng" every hour (so once), with config extras."""

    def start(rows: list[Any], **extra: Any) -> Running:
        upstream.overrides[GROUP] = rows
        salt = tmp_path / "salt"
        salt.write_text("pepper\n")
        raw: dict[str, Any] = {
            "api": {"url": upstream.url, "retries": 0, "timeout": "5s"},
            "poll": {"interval": "1h"},
            "groups": [GROUP],
            "team": False,  # only the group's reply, as written here
            **extra,
        }
        raw["labels"] = {"hash_salt_file": str(salt), **raw.get("labels", {})}
        return start_exporter("--config.file", str(write_config(raw)))

    return start


def sample(metrics: dict[str, float], metric: str, **labels: str) -> float | None:
    return metrics.get(series(metric, group=GROUP, **labels))


# --- 1. Work per value is bounded, and the deadline covers decoding and parsing ---


def test_a_30000_digit_number_is_unusable_and_the_poll_ends_well_within_its_deadline(
    run: Callable[..., Running],
) -> None:
    # The number regex backtracked quadratically: this value alone held the GIL for ~19 s,
    # outside api.timeout, and the poll still said up.
    hostile = {"email": "a@example.com", "promptCreditsUsed": "9" * 30_000 + "x"}
    metrics = run([hostile, {"email": "b@example.com", "promptCreditsUsed": "7"}]).metrics()
    assert sample(metrics, "windsurf_up") == 1
    assert (sample(metrics, "windsurf_exporter_last_poll_duration_seconds") or 9) < 5
    assert sample(metrics, "windsurf_user_prompt_credits_used", user="a@example.com") is None
    assert sample(metrics, "windsurf_user_prompt_credits_used", user="b@example.com") == 7
    assert sample(metrics, "windsurf_group_prompt_credits_used") == 7
    unusable = sample(metrics, "windsurf_exporter_unparsable_values", field="promptCreditsUsed")
    assert unusable == 1


def test_a_parse_that_overruns_the_deadline_fails_with_timeout(upstream: FakeWindsurf) -> None:
    now = [0.0]

    def slow_parse(document: Any) -> Any:
        now[0] += 31.0  # parsing took longer than the whole api.timeout
        return decode_page(document)

    api = ApiConfig(url=upstream.url, service_key=Secret(DEMO_SERVICE_KEY), timeout=30.0)
    client = Client(api, clocks=Clocks(monotonic=lambda: now[0]))
    try:
        with pytest.raises(ApiError) as failed:
            client.call(page_request(GROUP), slow_parse)
    finally:
        client.close()
    assert failed.value.reason is Reason.TIMEOUT
    assert str(failed.value) == "reply not read within 30s"


# --- 2. Every label mode survives every string JSON can carry ---

NASTY = [
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "\udc00\ud800",
    "\x00",
    "nul\x00inside",
    "\n",
    "two\nlines",
    "\r\n",
    "\r",
    '"',
    '"quoted"',
    "\\",
    '\\"',
    "\\n",
    "\u2028",
    "\x85",
    "\ufeff",
    "\U0001f600",
    "é",
    "\t",
    "{",
    "}",
    "=",
    ",",
    "#",
    " #0123abcd",
    "#0123abcd",
    "x" * 100_000,
    "\ud800" * 1000,
]


def nasty_rows(seed: int, count: int = 60) -> list[dict[str, Any]]:
    """Rows whose strings are drawn from NASTY and joined at random; names and emails repeat."""
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(NASTY) for _ in range(rng.randint(1, 3)))

    rows: list[dict[str, Any]] = []
    for index in range(count):
        email = text() + (str(index) if rng.random() < 0.7 else "")
        rows.append(
            {
                "email": email,
                "name": rng.choice([text(), "", "Sam", rows[-1]["name"] if rows else "Sam"]),
                "role": text(),
                "teamStatus": rng.choice([text(), "USER_TEAM_STATUS_APPROVED"]),
                "activeDays": rng.randint(0, 30),
                "lastChatUsageTime": "2024-10-10T20:30:00Z",
            }
        )
    # Names that look like the suffix a shared name gets, and emails differing only in case.
    rows.append({"email": "Dup@Example.com", "name": "Sam #" + "0" * 8})
    rows.append({"email": "dup@example.com", "name": "Sam #" + "0" * 8})
    return rows


def series_of(text: str, parse: Callable[[str], Any]) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        (s.name, tuple(sorted(s.labels.items()))) for family in parse(text) for s in family.samples
    ]


@pytest.mark.parametrize("mode", ["email", "name", "hash"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_label_mode_survives_every_string_json_can_carry(
    run: Callable[..., Running], mode: str, seed: int
) -> None:
    running = run(nasty_rows(seed), labels={"user": mode})
    for accept, parse in (("text/plain", parse_text), (OPENMETRICS, parse_openmetrics)):
        response = running.scrape(Accept=accept)
        assert response.status_code == 200
        found = series_of(response.content.decode("utf-8"), parse)
        # Only the exposition's own escapes: a raw CR, NEL or LS is text, not a line break.
        assert [s for s, n in Counter(found).items() if n > 1] == []
        assert len(found) > 60
        if shutil.which("promtool") and accept == "text/plain":
            check = subprocess.run(
                ["promtool", "check", "metrics"],
                input=response.content,
                capture_output=True,
                check=False,
            )
            problems = [
                line
                for line in (check.stdout + check.stderr).decode().splitlines()
                if line.strip() and 'base unit "seconds" instead of "days"' not in line
            ]
            assert problems == []
        assert ("windsurf_up", (("group", GROUP),)) in found


# --- 3. Roles and team statuses have bounded label values ---


def test_distinct_roles_and_statuses_beyond_the_limit_are_counted_as_other(
    run: Callable[..., Running],
) -> None:
    rows = [
        {"email": f"u{i}@example.com", "role": f"role-{i}", "teamStatus": f"STATUS_{i}"}
        for i in range(1000)
    ]
    rows += [{"email": f"m{i}@example.com", "role": "member"} for i in range(10)]
    metrics = run(rows, per_user=False, limits={"max_label_values": 5}).metrics()
    roles = {k: v for k, v in metrics.items() if k.startswith("windsurf_group_users_by_role{")}
    statuses = {
        k: v for k, v in metrics.items() if k.startswith("windsurf_group_users_by_team_status{")
    }
    assert len(roles) == 6
    assert len(statuses) == 6
    assert sum(roles.values()) == sum(statuses.values()) == 1010
    assert sample(metrics, "windsurf_group_users_by_role", role="member") == 10
    assert sample(metrics, "windsurf_group_users_by_role", role="other") == 1010 - 10 - 4
    folded = sample(metrics, "windsurf_exporter_limited_values", limit="max_label_values")
    assert folded == (1000 - 4) + (1000 + 1 - 5)
    assert len(metrics) < 200


# --- 4. Rows and label lengths are limited, counted, and said once per poll ---


def test_rows_and_label_lengths_over_the_limits_are_cut_counted_and_logged_once(
    run: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    long = "a" * 1_000_000
    rows: list[dict[str, Any]] = [
        {"email": f"{long}{i}@example.com", "name": long} for i in range(3)
    ]
    rows += [{"email": f"u{i}@example.com"} for i in range(20)]
    with caplog.at_level(logging.WARNING, logger="exporter"):
        running = run(rows, limits={"max_rows": 10, "max_label_length": 64})
        body = running.scrape().text
    metrics = samples(body)
    assert sample(metrics, "windsurf_group_users") == 23
    users = [k for k in metrics if k.startswith("windsurf_user_info{")]
    assert len(users) == 10
    assert len(body) < 20_000
    # The three long emails stay three users: a cut value ends in a hash of the whole.
    assert len({k.split('user="')[1].split('"')[0] for k in users}) == 10
    assert max(len(v) for k in users for v in label_values(k)) <= 64
    assert sample(metrics, "windsurf_exporter_limited_values", limit="max_rows") == 13
    assert sample(metrics, "windsurf_exporter_limited_values", limit="max_label_length") == 6
    lines = [r for r in caplog.records if r.getMessage().startswith("reply read with losses")]
    assert len(lines) == 1
    assert "13 over limits.max_rows" in lines[0].getMessage()
    assert "6 over limits.max_label_length" in lines[0].getMessage()


def label_values(line: str) -> list[str]:
    (family,) = parse_text(line + " 1\n")
    return [v for s in family.samples for v in s.labels.values()]


# --- 5. Impossible values are unusable, not data ---


def test_impossible_values_are_counted_as_unusable_not_exported(
    run: Callable[..., Running],
) -> None:
    rows = [
        {"email": "neg@example.com", "activeDays": -3, "promptCreditsUsed": "-500"},
        {"email": "big1@example.com", "promptCreditsUsed": 1e308},
        {"email": "big2@example.com", "promptCreditsUsed": "1e308"},
        {"email": "days@example.com", "activeDays": 32},  # a 30d window
        {
            "email": "future@example.com",
            "teamStatus": "USER_TEAM_STATUS_APPROVED",
            "lastChatUsageTime": "9999-12-31T23:59:59Z",
            "signupTime": "9999-01-01T00:00:00Z",
        },
        {"email": "ok@example.com", "activeDays": 31, "promptCreditsUsed": 100},
    ]
    metrics = run(rows).metrics()
    assert sample(metrics, "windsurf_up") == 1
    assert sample(metrics, "windsurf_group_prompt_credits_used") == 100
    for user in ("neg", "big1", "big2"):
        who = f"{user}@example.com"
        assert sample(metrics, "windsurf_user_prompt_credits_used", user=who) is None
    for user in ("neg", "days"):
        who = f"{user}@example.com"
        assert sample(metrics, "windsurf_user_active_days", user=who, window="30d") is None
    assert sample(metrics, "windsurf_user_active_days", user="ok@example.com", window="30d") == 31
    future = "future@example.com"
    assert sample(metrics, "windsurf_user_last_usage_timestamp_seconds", user=future) is None
    assert not [k for k in metrics if future in k and "timestamp" in k]
    # Never used and no signup known: idle for an unknown time, not "active forever".
    assert sample(metrics, "windsurf_user_idle_seconds", user=future) is None
    assert sample(metrics, "windsurf_group_active_users", window="30d") == 1
    by_field = {
        field: sample(metrics, "windsurf_exporter_unparsable_values", field=field)
        for field in ("activeDays", "promptCreditsUsed", "lastChatUsageTime", "signupTime")
    }
    assert by_field == {
        "activeDays": 2,
        "promptCreditsUsed": 3,
        "lastChatUsageTime": 1,
        "signupTime": 1,
    }


def test_the_fake_serves_what_the_tests_override(upstream: FakeWindsurf) -> None:
    # The cases above rely on the fake sending hand-written rows as they are.
    upstream.overrides[GROUP] = [{"email": "\ud800", "promptCreditsUsed": "-1"}]
    reply = httpx.post(
        f"{upstream.url}/api/v1/UserPageAnalytics",
        json={"service_key": DEMO_SERVICE_KEY, "group_name": GROUP},
    ).json()
    assert reply["userTableStats"] == [{"email": "\ud800", "promptCreditsUsed": "-1"}]
