"""Label modes, `per_user: false`, the per-group and the team aggregates, end to end:
hand-written rows served by the fake API over loopback, scraped from the real exporter at a
fixed clock, and compared with values worked out by hand below."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.collector import poll_requests
from exporter.config import ConfigError, parse_config
from exporter.demo import FakeWindsurf, synthetic_team
from exporter.sources.people import user_labels
from exporter.sources.user_rows import UserStats
from exporter.sources.values import parse_time
from tests.conftest import Running, samples, series, wait_for

DAY = 86400.0
APPROVED = "USER_TEAM_STATUS_APPROVED"
PENDING = "USER_TEAM_STATUS_PENDING"
SALT = "pepper-and-salt"


def rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def row(
    now: float,
    email: str,
    name: str,
    *,
    role: str = "member",
    status: str = APPROVED,
    signup_days: float = 100,
    used_days: dict[str, float] | None = None,
    active: tuple[int, int] | None = None,
    credits: str | None = None,
    disabled: bool = False,
) -> dict[str, Any]:
    """A UserPageAnalytics row; `active` is activeDays for the 7d and the 30d window, absent
    fields stay absent as protobuf JSON leaves them out."""
    out: dict[str, Any] = {
        "name": name,
        "email": email,
        "role": role,
        "teamStatus": status,
        "signupTime": rfc3339(now - signup_days * DAY),
        "apiKey": f"key-of-{name}",
    }
    for field, days in (used_days or {}).items():
        out[field] = rfc3339(now - days * DAY)
    if active is not None:
        out["activeDays"] = {"7d": active[0], "30d": active[1]}
    if credits is not None:
        out["promptCreditsUsed"] = credits
    if disabled:
        out["disableCodeium"] = True
    return out


def eng_rows(now: float) -> list[dict[str, Any]]:
    auto, chat, command = "lastAutocompleteUsageTime", "lastChatUsageTime", "lastCommandUsageTime"
    return [
        row(now, "alice@example.com", "Alice Smith", role="admin",
            used_days={auto: 1 / 24}, active=(3, 10), credits="1200"),
        row(now, "bob@example.com", "Bob Jones", disabled=True, used_days={chat: 40},
            active=(0, 0)),
        row(now, "carol@example.com", "Carol White", used_days={chat: 10, auto: 12},
            active=(0, 2), credits="300"),
        row(now, "dan@example.com", "Dan Brown", status=PENDING, signup_days=60),
        row(now, "erin@example.com", "Alice Smith", signup_days=45),
        row(now, "frank@example.com", "Frank Green", used_days={command: 7}, active=(0, 1),
            credits="50"),
        {"name": "Ghost", "teamStatus": APPROVED},  # no email: skipped
    ]  # fmt: skip


def ops_rows(now: float) -> list[dict[str, Any]]:
    return [
        row(now, "Alice@Example.com", "Alice Smith", role="admin",
            used_days={"lastChatUsageTime": 0.5}, active=(3, 10), credits="1200"),
        row(now, "gus@example.com", "Gus Gray", used_days={"lastChatUsageTime": 2},
            active=(1, 5), credits="75"),
    ]  # fmt: skip


def team_rows(now: float) -> list[dict[str, Any]]:
    """The whole team: both groups' people once each, and Hal, who is in no group."""
    hal = row(now, "hal@example.com", "Hal Moss", signup_days=20,
              used_days={"lastChatUsageTime": 9}, active=(0, 3), credits="40")  # fmt: skip
    return [*eng_rows(now), ops_rows(now)[1], hal]


# Worked out by hand from the rows above, at the exporter's clock `now`:
# active: activeDays > 0 in the window. billable: approved and not disabled (alice, carol,
# erin, frank; not bob: disabled, not dan: pending). idle: billable and idle for longer than
# the threshold: carol 10d, erin 45d since signup; frank is idle exactly 7d, not beyond it.
EXPECTED = {
    "eng": {
        ("windsurf_group_users", ()): 7,
        ("windsurf_exporter_skipped_rows", ()): 1,
        ("windsurf_group_active_users", (("window", "7d"),)): 1,
        ("windsurf_group_active_users", (("window", "30d"),)): 3,
        ("windsurf_group_billable_users", ()): 4,
        ("windsurf_group_prompt_credits_used", ()): 1550,
        ("windsurf_group_idle_users", (("idle_for", "7d"),)): 2,
        ("windsurf_group_idle_users", (("idle_for", "30d"),)): 1,
        ("windsurf_group_users_by_team_status", (("team_status", APPROVED),)): 5,
        ("windsurf_group_users_by_team_status", (("team_status", PENDING),)): 1,
        ("windsurf_group_users_by_role", (("role", "admin"),)): 1,
        ("windsurf_group_users_by_role", (("role", "member"),)): 5,
    },
    "ops": {
        ("windsurf_group_users", ()): 2,
        ("windsurf_exporter_skipped_rows", ()): 0,
        ("windsurf_group_active_users", (("window", "7d"),)): 2,
        ("windsurf_group_active_users", (("window", "30d"),)): 2,
        ("windsurf_group_billable_users", ()): 2,
        ("windsurf_group_prompt_credits_used", ()): 1275,
        ("windsurf_group_idle_users", (("idle_for", "7d"),)): 0,
        ("windsurf_group_idle_users", (("idle_for", "30d"),)): 0,
        ("windsurf_group_users_by_team_status", (("team_status", APPROVED),)): 2,
        ("windsurf_group_users_by_role", (("role", "admin"),)): 1,
        ("windsurf_group_users_by_role", (("role", "member"),)): 1,
    },
}
GROUP_FAMILIES = {name for group in EXPECTED.values() for name, _ in group}
# The team, each person once: alice, bob, carol, dan, erin, frank, gus, hal (and the row with
# no email). billable: alice, carol, erin, frank, gus, hal. idle beyond 7d: carol 10d, erin 45d
# since signup, hal 9d; beyond 30d: erin.
EXPECTED_TEAM = {
    "windsurf_team_up": 1,
    "windsurf_team_users": 9,
    "windsurf_exporter_team_skipped_rows": 1,
    'windsurf_team_active_users{window="7d"}': 2,
    'windsurf_team_active_users{window="30d"}': 5,
    "windsurf_team_billable_users": 6,
    "windsurf_team_prompt_credits_used": 1665,
    'windsurf_team_idle_users{idle_for="7d"}': 3,
    'windsurf_team_idle_users{idle_for="30d"}': 1,
    f'windsurf_team_users_by_team_status{{team_status="{APPROVED}"}}': 7,
    f'windsurf_team_users_by_team_status{{team_status="{PENDING}"}}': 1,
    'windsurf_team_users_by_role{role="admin"}': 1,
    'windsurf_team_users_by_role{role="member"}': 7,
    # one poll: 2 windows for the team, 1 request per group
    "windsurf_exporter_poll_requests": 4,
}


def aggregates(metrics: dict[str, float]) -> dict[str, dict[tuple[str, tuple[Any, ...]], float]]:
    """The group-level samples of a scrape, keyed like EXPECTED."""
    found: dict[str, dict[tuple[str, tuple[Any, ...]], float]] = {}
    for key, value in metrics.items():
        name, _, rest = key.partition("{")
        if name not in GROUP_FAMILIES:
            continue
        pairs = [p.split("=", 1) for p in rest.rstrip("}").split(",")]
        labels = {k: v.strip('"') for k, v in pairs}
        group = labels.pop("group")
        found.setdefault(group, {})[(name, tuple(labels.items()))] = value
    return found


class WindowedFake(FakeWindsurf):
    """The fake API serving hand-written rows whose activeDays hold one value per window:
    each request gets the value of the window it asked for, as the real API computes it."""

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, document = super().respond(body)
        start, end = parse_time(body["start_timestamp"]), parse_time(body["end_timestamp"])
        assert start is not None
        assert end is not None
        window = f"{round((end - start) / DAY)}d"
        document["userTableStats"] = [
            {**r, "activeDays": r["activeDays"][window]} if "activeDays" in r else r
            for r in document.get("userTableStats", [])
        ]
        return status, document


@pytest.fixture
def now() -> float:
    return float(int(time.time()))


@pytest.fixture
def upstream(now: float) -> Iterator[WindowedFake]:
    with WindowedFake(team=synthetic_team(4, groups=("eng", "ops"))) as fake:
        fake.overrides["eng"] = eng_rows(now)
        fake.overrides["ops"] = ops_rows(now)
        fake.overrides[""] = team_rows(now)
        yield fake


@pytest.fixture
def run(
    upstream: WindowedFake,
    now: float,
    tmp_path: Path,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> Callable[..., Running]:
    """Start the exporter against the hand-written rows with the given config extras."""

    def start(salt: str | None = None, **extra: Any) -> Running:
        raw: dict[str, Any] = {
            "api": {"url": upstream.url, "retries": 0},
            "groups": ["eng", "ops"],
            "active_days_windows": ["7d", "30d"],
            **extra,
        }
        if salt is not None:
            salt_file = tmp_path / "hash-salt"
            salt_file.write_text(salt + "\n")
            raw["labels"] = {**raw.get("labels", {}), "hash_salt_file": str(salt_file)}
        path = write_config(raw)
        return start_exporter("--config.file", str(path), clock=lambda: now)

    return start


def emails_and_names(now: float) -> set[str]:
    rows = eng_rows(now) + ops_rows(now) + team_rows(now)
    return {r[k] for r in rows for k in ("email", "name") if k in r}


MODES = {
    "email": {"labels": {"user": "email"}},
    "name": {"labels": {"user": "name"}},
    "hash": {"labels": {"user": "hash"}},
    "hash, no per-user series": {"labels": {"user": "hash"}, "per_user": False},
    "email, no per-user series": {"per_user": False},
}


@pytest.mark.parametrize("mode", MODES)
def test_group_aggregates_equal_hand_computed_values_in_every_mode(
    run: Callable[..., Running], mode: str
) -> None:
    metrics = run(**MODES[mode]).metrics()
    assert aggregates(metrics) == EXPECTED


@pytest.mark.parametrize("mode", MODES)
def test_team_aggregates_count_each_person_once_in_every_mode(
    run: Callable[..., Running], mode: str
) -> None:
    metrics = run(**MODES[mode]).metrics()
    team = {k: v for k, v in metrics.items() if k.split("{")[0] in TEAM_FAMILIES}
    assert team == EXPECTED_TEAM


TEAM_FAMILIES = {key.split("{")[0] for key in EXPECTED_TEAM}


def test_a_poll_asks_the_team_once_per_window_and_each_group_once(
    run: Callable[..., Running], upstream: WindowedFake
) -> None:
    run()
    assert [len(upstream.requests_for(g)) for g in ("", "eng", "ops")] == [2, 1, 1]


def test_a_person_in_no_group_has_seat_series_with_an_empty_group(
    run: Callable[..., Running],
) -> None:
    metrics = run().metrics()
    hal = {"group": "", "user": "hal@example.com"}
    assert metrics[series("windsurf_user_idle_seconds", **hal)] == 9 * DAY
    assert metrics[series("windsurf_user_active_days", **hal, window="30d")] == 3
    info = series("windsurf_user_info", **hal, name="Hal Moss", email="hal@example.com",
                  role="member", team_status=APPROVED, groups="")  # fmt: skip
    assert metrics[info] == 1


def test_every_seat_series_of_a_person_names_all_their_groups(
    run: Callable[..., Running],
) -> None:
    metrics = run(labels={"user": "hash"}).metrics()
    alice = hashlib.sha256(b"alice@example.com").hexdigest()
    infos = {k for k in metrics if k.startswith("windsurf_user_info{") and alice in k}
    assert infos == {
        series("windsurf_user_info", group=g, user=alice, role="admin", team_status=APPROVED,
               groups="eng,ops")
        for g in ("eng", "ops")
    }  # fmt: skip


def test_without_the_team_poll_team_families_are_absent_and_groups_ask_per_window(
    run: Callable[..., Running], upstream: WindowedFake
) -> None:
    metrics = run(team=False).metrics()
    assert aggregates(metrics) == EXPECTED
    assert not [k for k in metrics if k.startswith(("windsurf_team_", "windsurf_exporter_team_"))]
    assert not any('group=""' in k for k in metrics)
    assert metrics["windsurf_exporter_poll_requests"] == 4
    assert [len(upstream.requests_for(g)) for g in ("", "eng", "ops")] == [0, 2, 2]


def test_email_mode_labels_users_by_email_and_names_them_in_info(
    run: Callable[..., Running],
) -> None:
    metrics = run().metrics()
    assert metrics[series("windsurf_user_prompt_credits_used", group="eng",
                          user="alice@example.com")] == 1200  # fmt: skip
    info = series("windsurf_user_info", group="eng", user="erin@example.com", name="Alice Smith",
                  email="erin@example.com", role="member", team_status=APPROVED,
                  groups="eng")  # fmt: skip
    assert metrics[info] == 1


def test_name_mode_labels_users_by_name_and_tells_namesakes_apart_stably(
    run: Callable[..., Running],
) -> None:
    response = run(salt=SALT, labels={"user": "name"}).scrape()
    metrics = samples(response.text)

    def tag(email: str) -> str:
        return "Alice Smith #" + hashlib.sha256((SALT + email).encode()).hexdigest()[:8]

    users = {k.split('user="')[1].split('"')[0] for k in metrics if 'user="' in k}
    # Two Alice Smiths in the team, each tagged by their own email, with one label for a
    # person in every group (alice is in eng and ops).
    assert {u for u in users if "Alice" in u} == {tag("alice@example.com"), tag("erin@example.com")}
    alice = series("windsurf_user_idle_seconds", group="ops", user=tag("alice@example.com"))
    assert alice in metrics
    assert series("windsurf_user_info", group="eng", user="Carol White", role="member",
                  team_status=APPROVED, groups="eng") in metrics  # fmt: skip
    assert "@" not in response.text


def test_hash_mode_shows_no_email_or_name_anywhere_in_metrics(
    run: Callable[..., Running], now: float
) -> None:
    running = run(salt=SALT, labels={"user": "hash"})
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        text = running.scrape(Accept=accept).text
        assert "windsurf_user_info{" in text
        leaked = {s for s in emails_and_names(now) if s.lower() in text.lower()}
        assert not leaked, f"{leaked} in /metrics ({accept})"
        assert "key-of-" not in text
    landing = running.scrape("/").text
    assert SALT not in landing
    assert not {s for s in emails_and_names(now) if s in landing}


def test_hash_mode_pseudonym_is_salted_sha256_of_the_email_and_same_across_groups(
    run: Callable[..., Running],
) -> None:
    metrics = run(salt=SALT, labels={"user": "hash"}).metrics()
    alice = hashlib.sha256(f"{SALT}alice@example.com".encode()).hexdigest()
    for group in ("eng", "ops"):  # ops lists her as Alice@Example.com
        assert metrics[series("windsurf_user_prompt_credits_used", group=group, user=alice)] == 1200
        assert metrics[series("windsurf_user_info", group=group, user=alice, role="admin",
                              team_status=APPROVED, groups="eng,ops")] == 1  # fmt: skip
    unsalted = hashlib.sha256(b"alice@example.com").hexdigest()
    assert not any(unsalted in key for key in metrics)


def test_hash_mode_without_salt_hashes_the_bare_email(run: Callable[..., Running]) -> None:
    metrics = run(labels={"user": "hash"}).metrics()
    gus = hashlib.sha256(b"gus@example.com").hexdigest()
    assert metrics[series("windsurf_user_idle_seconds", group="ops", user=gus)] == 2 * DAY


@pytest.mark.parametrize("mode", ["email", "hash"])
def test_per_user_false_exports_no_user_series(run: Callable[..., Running], mode: str) -> None:
    text = run(labels={"user": mode}, per_user=False).scrape().text
    assert "windsurf_group_billable_users{" in text
    assert not [line for line in text.splitlines() if line.startswith("windsurf_user_")]
    assert 'user="' not in text
    assert "@example.com" not in text.lower()


def test_user_who_leaves_the_team_disappears_at_the_next_poll(
    run: Callable[..., Running], upstream: WindowedFake, now: float
) -> None:
    running = run(poll={"interval": "1s"})
    before = running.metrics()
    assert series("windsurf_user_disabled", group="eng", user="carol@example.com") in before
    upstream.overrides["eng"] = [r for r in eng_rows(now) if r.get("email") != "carol@example.com"]
    upstream.overrides[""] = [r for r in team_rows(now) if r.get("email") != "carol@example.com"]

    after = wait_for(
        lambda: (m := running.metrics()) and not any("carol@example.com" in k for k in m) and m,
        timeout=15,
        what="carol's series to go",
    )
    eng = aggregates(after)["eng"]
    assert eng[("windsurf_group_billable_users", ())] == 3
    assert eng[("windsurf_group_idle_users", (("idle_for", "7d"),))] == 1
    assert eng[("windsurf_group_active_users", (("window", "30d"),))] == 2
    assert eng[("windsurf_group_prompt_credits_used", ())] == 1250


def test_empty_salt_file_is_a_config_error(tmp_path: Path) -> None:
    salt = tmp_path / "salt"
    salt.write_text("\n")
    with pytest.raises(ConfigError, match=r"labels.hash_salt_file: .* is empty"):
        parse_config({"labels": {"user": "hash", "hash_salt_file": str(salt)}}, require_key=False)


def test_hash_mode_without_salt_warns_that_hashes_can_be_recomputed() -> None:
    config = parse_config({"labels": {"user": "hash"}}, require_key=False)
    assert any(
        w.startswith("labels.user: hash without") for w in config.warnings(poll_requests(config))
    )


def test_window_and_threshold_labels_count_in_days_however_spelled() -> None:
    config = parse_config(
        {"active_days_windows": ["1w", "720h"], "idle_thresholds": ["168h", "30d"]},
        require_key=False,
    )
    assert [w.label for w in config.windows] == ["7d", "30d"]
    assert [w.label for w in config.idle_thresholds] == ["7d", "30d"]


def test_name_mode_tags_a_user_without_a_name_instead_of_an_empty_label() -> None:
    config = parse_config({"labels": {"user": "name"}}, require_key=False)
    users = [UserStats(email="x@example.com"), UserStats(email="y@example.com", name="Yan")]
    tag = hashlib.sha256(b"x@example.com").hexdigest()[:8]
    assert [label for label, _ in user_labels(users, config)] == [f"#{tag}", "Yan"]


def test_a_salt_file_in_email_mode_is_reported_unused(tmp_path: Path) -> None:
    salt = tmp_path / "salt"
    salt.write_text(SALT)
    config = parse_config({"labels": {"hash_salt_file": str(salt)}}, require_key=False)
    assert "labels.hash_salt_file: unused, labels.user is email" in config.warnings(
        poll_requests(config)
    )
