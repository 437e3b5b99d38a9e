"""What the upstream really sends, parsed: times, numbers as strings, missing and null fields."""

from __future__ import annotations

import calendar
import random
from typing import Any

import pytest

from exporter.config import Limits, Window, parse_config
from exporter.sources.base import Request
from exporter.sources.people import distinct
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE
from exporter.sources.user_rows import Page, build_report, decode_page, label_value, person_key
from exporter.sources.values import count_field, parse_number, parse_time, time_field
from exporter.state import MalformedResponse
from tests.rows import ALICE, BOB

BASE = calendar.timegm((2024, 10, 10, 22, 56, 10, 0, 0, 0))


@pytest.mark.parametrize(
    ("text", "fraction"),
    [
        ("2024-10-10T22:56:10Z", 0.0),
        ("2024-10-10T22:56:10.7Z", 0.7),
        ("2024-10-10T22:56:10.77Z", 0.77),
        ("2024-10-10T22:56:10.771Z", 0.771),
        ("2024-10-10T22:56:10.7715Z", 0.7715),
        ("2024-10-10T22:56:10.77159Z", 0.77159),
        ("2024-10-10T22:56:10.771591Z", 0.771591),
        ("2024-10-10T22:56:10.7715912Z", 0.7715912),
        ("2024-10-10T22:56:10.77159123Z", 0.77159123),
        ("2024-10-10T22:56:10.771591234Z", 0.771591234),
    ],
)
def test_fractional_seconds_of_0_to_9_digits(text: str, fraction: float) -> None:
    assert parse_time(text) == pytest.approx(BASE + fraction, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2024-10-11T00:56:10+02:00",
        "2024-10-10T17:56:10-05:00",
        "2024-10-10T22:56:10+00:00",
        "2024-10-10t22:56:10z",
        "2024-10-11T04:26:10+05:30",
    ],
)
def test_offsets_are_applied(text: str) -> None:
    assert parse_time(text) == BASE


def test_offset_and_fraction_together() -> None:
    assert parse_time("2024-10-11T00:56:10.5+02:00") == BASE + 0.5


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "2024-10-10",
        "2024-13-10T00:00:00Z",
        "2024-10-10T22:56:10",
        "2024-10-10T22:56:10.1234567890Z",
        # Forms datetime.fromisoformat takes that RFC 3339 does not: a week date, a basic time.
        "2026-W48-4T10:24:21Z",
        "2026-11-26T102421.5Z",
        "2024-10-10T22:56+10:00",
        1728600970,
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
    ],
)
def test_missing_malformed_and_zero_times_mean_never(value: Any) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8300, 8300.0),
        ("8300", 8300.0),
        (" 12 ", 12.0),
        ("12.5", 12.5),
        (0, 0.0),
        ("9007199254740993", 9007199254740992.0),
        (None, None),
        ("lots", None),
        (True, None),
        ([], None),
        ("NaN", None),
        ("inf", None),
        # json.loads gives a Python int; one too large for a float must not fail the poll
        pytest.param(10**400, None, id="int-beyond-double"),
    ],
)
def test_numbers_may_arrive_as_strings(value: Any, expected: float | None) -> None:
    assert parse_number(value) == expected


def page(rows: list[Any], window: str = "30d", **extra: Any) -> Page:
    """A reply for `window`, long enough for the example rows' activeDays: the reference's
    example answers the default window, a year."""
    request = Request("UserPageAnalytics", {}, "", Window(window, 366 * 86400.0))
    return decode_page({"userTableStats": rows, **extra}, request)


def test_documented_row_is_read() -> None:
    report = build_report([("30d", page([ALICE]))])
    (alice,) = report.users
    assert alice.email == "alice@example.com"
    assert alice.name == "Alice"
    assert alice.role == "admin"
    assert alice.team_status == "USER_TEAM_STATUS_APPROVED"
    assert alice.active_days == {"30d": 178}
    assert alice.prompt_credits == 12500
    assert alice.last_usage == (BASE, calendar.timegm((2024, 10, 10, 20, 30, 0)), None)
    assert alice.signup == calendar.timegm((2024, 1, 15, 8, 30, 0))
    assert alice.disabled is False
    assert alice.billable


def test_the_api_key_is_never_kept() -> None:
    report = build_report([("30d", page([ALICE]))])
    assert "aaaaaaaa" not in repr(report)


def test_every_optional_field_may_be_missing() -> None:
    (user,) = build_report([("30d", page([{"email": "bare@example.com"}]))]).users
    assert (user.name, user.role, user.team_status) == ("", "", "")
    assert user.signup is None
    assert user.last_usage == (None, None, None)
    assert user.idle_since is None
    # protobuf JSON omits zero values: absent counters are zero, not unknown.
    assert user.prompt_credits == 0
    assert user.active_days == {"30d": 0}
    assert not user.disabled


def test_every_optional_field_may_be_null() -> None:
    row = {key: None for key in ALICE} | {"email": "nulls@example.com"}
    (user,) = build_report([("30d", page([row]))]).users
    assert user.last_usage == (None, None, None)
    assert user.prompt_credits == 0
    assert user.signup is None


def test_numbers_and_booleans_sent_as_strings() -> None:
    row = {**ALICE, "activeDays": "178", "promptCreditsUsed": "8300", "disableCodeium": "true"}
    (user,) = build_report([("30d", page([row]))]).users
    assert user.prompt_credits == 8300
    assert user.active_days == {"30d": 178}
    assert user.disabled


def test_unparsable_counts_are_unknown_not_zero() -> None:
    (user,) = build_report([("30d", page([{**ALICE, "promptCreditsUsed": "many"}]))]).users
    assert user.prompt_credits is None


def test_unknown_extra_fields_are_harmless() -> None:
    row = {**ALICE, "favouriteEditor": "vim", "nested": {"deep": [1, 2]}}
    document = {"userTableStats": [row], "nextPageToken": "x", "apiVersion": 3}
    (user,) = build_report([("30d", decode_page(document))]).users
    assert user.email == "alice@example.com"


def test_idle_since_is_the_latest_use_or_the_signup() -> None:
    (used,) = build_report([("30d", page([ALICE]))]).users
    assert used.idle_since == BASE
    never = {k: v for k, v in ALICE.items() if not k.startswith("last")}
    (unused,) = build_report([("30d", page([never]))]).users
    assert unused.idle_since == calendar.timegm((2024, 1, 15, 8, 30, 0))


def test_windows_are_merged_by_email() -> None:
    week = page([{**ALICE, "activeDays": 5}, {"email": "bob@example.com", "activeDays": 2}], "7d")
    month = page([{"email": "bob@example.com", "activeDays": "9"}, {**ALICE, "activeDays": 20}])
    report = build_report([("7d", week), ("30d", month)])
    assert {u.email: dict(u.active_days) for u in report.users} == {
        "alice@example.com": {"7d": 5, "30d": 20},
        "bob@example.com": {"7d": 2, "30d": 9},
    }


def test_rows_without_email_or_repeated_are_skipped_and_counted() -> None:
    rows = [ALICE, {"name": "Ghost"}, {**ALICE, "name": "Alice again"}, "not an object"]
    report = build_report([("30d", page(rows))])
    assert [u.name for u in report.users] == ["Alice"]
    assert (report.rows, report.skipped) == (4, 3)


def test_an_empty_group_may_omit_the_list() -> None:
    report = build_report([("30d", page([], billingCycleStart="2024-10-01T00:00:00Z"))])
    assert report.users == ()
    assert report.rows == 0
    assert report.billing_start == calendar.timegm((2024, 10, 1, 0, 0, 0))


def test_billing_cycle_is_read() -> None:
    p = decode_page(
        {
            "billingCycleStart": "2024-10-01T00:00:00Z",
            "billingCycleEnd": "2024-11-01T00:00:00.000000000Z",
        }
    )
    assert (p.billing_start, p.billing_end) == (
        calendar.timegm((2024, 10, 1, 0, 0, 0)),
        calendar.timegm((2024, 11, 1, 0, 0, 0)),
    )


@pytest.mark.parametrize("document", [[], "text", 3, {"userTableStats": {"a": 1}}])
def test_wrong_shapes_are_malformed(document: Any) -> None:
    with pytest.raises(MalformedResponse):
        decode_page(document)


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-10-10T22:56:10+24:00",
        "2024-10-10T22:56:10+05:60",
        "٢٠٢٤-10-10T22:56:10Z",
    ],
)
def test_impossible_dates_and_offsets_mean_never(text: str) -> None:
    assert parse_time(text) is None


def test_a_leap_day_is_a_date() -> None:
    assert parse_time("2024-02-29T00:00:00Z") == calendar.timegm((2024, 2, 29, 0, 0, 0))


@pytest.mark.parametrize("text", ["1_000", "١٢", "0x10", "1e", "."])
def test_numeric_strings_must_look_like_json_numbers(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        (1, True),
        ("1", True),
        (False, False),
        ("false", False),
        (0, False),
        ("0", False),
        (None, False),
        ("yes please", False),
    ],
)
def test_disabled_accepts_booleans_and_numbers(value: Any, disabled: bool) -> None:
    (user,) = build_report(
        [("30d", page([{"email": "d@example.com", "disableCodeium": value}]))]
    ).users
    assert user.disabled is disabled


def test_the_first_window_says_who_is_in_the_group() -> None:
    week = page([{**ALICE, "activeDays": 5}], "7d")
    month = page([{**ALICE, "activeDays": 20}, {"email": "late@example.com", "activeDays": 1}])
    report = build_report([("7d", week), ("30d", month)])
    assert [u.email for u in report.users] == ["alice@example.com"]
    assert report.rows == 1


@pytest.mark.parametrize(
    "text",
    [
        "20241010T225610Z",
        "2024-10-10T22:56Z",
        "2024-10-10T22:56:10+05",
        "2024-10-10T22:56:10+05:30:00",
        "2024-10-10T22:56:10.Z",
        "2024-10-10T22:56:10 Z",
        "2024-10-10T22:56:10.5",
    ],
)
def test_iso_forms_that_are_not_rfc3339_mean_never(text: str) -> None:
    assert parse_time(text) is None


def test_a_leap_second_is_the_next_minute() -> None:
    assert parse_time("2016-12-31T23:59:60Z") == calendar.timegm((2017, 1, 1, 0, 0, 0))


def test_a_leap_second_keeps_its_fraction_and_offset() -> None:
    new_year = calendar.timegm((2017, 1, 1, 0, 0, 0))
    assert parse_time("2016-12-31T23:59:60.25Z") == new_year + 0.25
    assert parse_time("2017-01-01 00:59:60.5+01:00") == new_year + 0.5


@pytest.mark.parametrize(
    "text",
    ["2024-10-10T22:56:10.000Z", "2024-10-10 22:56:10.0z", " 2024-10-10T22:56:10.000000000+00:00 "],
)
def test_a_zero_fraction_is_the_whole_second(text: str) -> None:
    assert parse_time(text) == BASE


def test_numbers_longer_than_any_the_api_writes_are_refused() -> None:
    assert parse_number("9" * 30_000 + "x") is None
    assert parse_number("1" * 65) is None
    assert parse_number("1" * 64) == float("1" * 64)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (0.0, False)),
        (-1, (None, True)),
        ("1e308", (None, True)),
        (31, (31.0, False)),
        ("31", (31.0, False)),
        (" 31", (31.0, False)),
        ("32", (None, True)),
        (31.5, (None, True)),
        ("-0", (-0.0, False)),
        (10**400, (None, True)),
        ("1" * 65, (None, True)),
    ],
)
def test_counts_outside_their_bounds_are_unusable(value: Any, expected: Any) -> None:
    assert count_field(value, 31) == expected


def test_times_after_the_request_are_unusable_and_the_zero_time_is_never() -> None:
    assert time_field("9999-12-31T23:59:59Z", BASE) == (None, True)
    assert time_field("0001-01-01T00:00:00Z", BASE) == (None, False)
    assert time_field("2024-10-10T22:56:10Z", BASE) == (BASE, False)


def test_cut_label_values_keep_their_start_and_stay_distinct() -> None:
    one, cut = label_value("a" * 300 + "1", Limits())
    two, _ = label_value("a" * 300 + "2", Limits())
    assert cut
    assert one != two
    assert len(one) == len(two) == Limits().max_label_length
    assert one.startswith("a" * 200)
    assert label_value("bad \ud800", Limits()) == ("bad ?", False)


def test_distinct_labels_whatever_the_values() -> None:
    values = ["", "", "Sam", "Sam", "Ann", "Ann #0123abcd"]
    emails = [f"{i}@example.com" for i in range(len(values))]
    out = distinct(values, emails, "salt")
    assert len(set(out)) == len(out)
    assert out[4] == "Ann"
    assert out[2].startswith("Sam #")
    assert out[5].startswith("Ann #0123abcd #")


def test_kept_strings_are_copies_so_the_decoded_reply_can_be_given_back() -> None:
    # A string of the reply kept by a row would pin the allocator's arena it shares with the
    # reply's freed strings: resident memory a whole reply's worth larger than the rows.
    document = {"userTableStats": [{"email": "alice@example.com", "name": "Alice"}]}
    row = document["userTableStats"][0]
    (user,) = build_report([("30d", decode_page(document))]).users
    assert (user.email, user.name) == (row["email"], row["name"])
    assert user.email is not row["email"]
    assert user.name is not row["name"]


def test_a_person_is_named_by_their_email_in_lower_case_sharing_the_string_when_it_is() -> None:
    rng = random.Random(7)
    alphabet = "aZ@.-_1\u01c5\u0130\u00df\u03a3\u03c3\ufb03\u2160\u2170"
    for _ in range(2000):
        email = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert person_key(email) == email.lower()
    lower = "bob@example.com"
    assert person_key(lower) is lower


# A poll's replies after the first (its later activeDays windows) are read for what
# build_report takes from them: emails, activeDays, lastUpdateTime.

TWO_WINDOWS = parse_config(
    {"groups": ["eng"], "active_days_windows": ["7d", "30d"], "team": False}, require_key=False
)
ASKED = BASE + 600


@pytest.mark.parametrize(("source", "target"), [(USER_PAGE, "eng"), (TEAM, "")])
def test_a_bad_value_in_both_windows_replies_counts_once(source: Any, target: str) -> None:
    bad = {**ALICE, "activeDays": 3, "lastAutocompleteUsageTime": "soon", "role": 7}
    replies = [
        (request, source.parse(request, {"userTableStats": [bad, {**BOB, "activeDays": 2}]}))
        for request in source.plan(TWO_WINDOWS, target, ASKED)
    ]
    report = source.report(TWO_WINDOWS, target, replies)
    assert report.unparsable == {"lastAutocompleteUsageTime": 1, "role": 1}
    assert {u.email: dict(u.active_days) for u in report.users} == {
        "alice@example.com": {"7d": 3, "30d": 3},
        "bob@example.com": {"7d": 2, "30d": 2},
    }


@pytest.mark.parametrize(("source", "target"), [(USER_PAGE, "eng"), (TEAM, "")])
def test_what_a_later_window_adds_is_still_read_and_counted(source: Any, target: str) -> None:
    week, month = source.plan(TWO_WINDOWS, target, ASKED)
    later = [
        {**ALICE, "activeDays": -1, "lastUpdateTime": "2024-10-10T23:00:00Z"},
        {**BOB, "email": 5, "activeDays": 4},
        {**BOB, "email": "b" * 300, "activeDays": 4},
    ]
    replies = [
        (week, source.parse(week, {"userTableStats": [{**ALICE, "activeDays": 3}]})),
        (month, source.parse(month, {"userTableStats": later})),
    ]
    report = source.report(TWO_WINDOWS, target, replies)
    assert report.unparsable == {"activeDays": 1, "email": 1}
    assert report.limited["max_label_length"] == 1
    assert report.updated == calendar.timegm((2024, 10, 10, 23, 0, 0))
    (alice,) = report.users
    assert (alice.name, dict(alice.active_days)) == ("Alice", {"7d": 3})


def test_only_the_first_window_is_read_in_full() -> None:
    assert [r.full for r in USER_PAGE.plan(TWO_WINDOWS, "eng", ASKED)] == [True, False]
    later = Request("UserPageAnalytics", {}, "", Window("30d", 30 * 86400.0), full=False)
    row = {**ALICE, "activeDays": 20, "signupTime": "x", "name": 1}
    p = decode_page({"userTableStats": [row], "billingCycleStart": "x"}, later)
    assert (p.rows, p.emails, p.active_days) == ((), ("alice@example.com",), (20,))
    assert (p.billing_start, p.unparsable) == (None, {})


def test_a_count_seen_before_is_still_checked_for_its_field() -> None:
    """A value read once is looked up after: within its field's bounds, of its own type."""
    rows = [
        {"email": "a@x.io", "activeDays": 1, "promptCreditsUsed": "40"},
        {"email": "b@x.io", "activeDays": "40", "promptCreditsUsed": 40},
        {"email": "c@x.io", "activeDays": True, "promptCreditsUsed": "1"},
        {"email": "d@x.io", "activeDays": "1", "promptCreditsUsed": "-1"},
    ]
    week = Request("UserPageAnalytics", {}, "", Window("7d", 7 * 86400.0))
    p = decode_page({"userTableStats": rows}, week)
    assert p.active_days == (1, None, None, 1)
    assert [u.prompt_credits for u in build_report([("7d", p)]).users] == [40, 40, 1, None]
    assert p.unparsable == {"activeDays": 2, "promptCreditsUsed": 1}
