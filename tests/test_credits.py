"""The credit balance as a source: reply shapes of GetTeamCreditBalance and GetUsageConfig, and a
key without "Billing Read" that takes down this source alone, with one log line per poll."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from exporter.config import Config
from exporter.demo import CREDIT_BALANCE, USAGE_CONFIG, FakeWindsurf, Fault
from exporter.sources.credits import CREDITS, decode_balance, decode_usage_config
from exporter.state import MalformedResponse
from tests.conftest import Running, series, wait_for

CREDITS_ON = {"collectors": {"credits": True}}


def test_the_documented_balance_reads_and_zeros_left_out_are_zero() -> None:
    found = decode_balance(
        {
            "promptCreditsPerSeat": 500,
            "numSeats": "50",
            "addOnCreditsAvailable": 10000,
            "billingCycleStart": "2026-01-01T00:00:00Z",
            "somethingNew": [1],
        }
    )
    assert found.values == {
        "seats": 50,
        "per_seat": 500,
        "addon_available": 10000,
        "addon_used": 0,
    }
    assert found.unparsable == ()


def test_an_unusable_balance_value_is_unknown_and_named() -> None:
    found = decode_balance({"numSeats": "fifty", "addOnCreditsUsed": -3})
    assert found.values["seats"] is None
    assert found.values["addon_used"] is None
    assert found.unparsable == ("numSeats", "addOnCreditsUsed")


@pytest.mark.parametrize(
    ("document", "cap"),
    [
        ({"add_on_credit_cap": 10000}, 10000),
        ({"addOnCreditCap": "250"}, 250),
        ({}, None),
        ({"add_on_credit_cap": None, "other": 1}, None),
    ],
    ids=["snake case", "camel case as a string", "no cap", "null"],
)
def test_the_cap_reads_both_spellings_and_absent_means_none(document: Any, cap: Any) -> None:
    assert decode_usage_config(document).values == {"cap": cap}


def test_a_reply_that_is_no_object_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        decode_balance([1])
    with pytest.raises(MalformedResponse):
        decode_usage_config("cap")


def test_the_usage_config_is_asked_for_the_team_level_only() -> None:

    balance, usage = CREDITS.plan(Config(), "", 0.0)
    assert (balance.method, dict(balance.body)) == (CREDIT_BALANCE, {})
    assert (usage.method, dict(usage.body)) == (USAGE_CONFIG, {"team_level": True})


def _start(
    fake: FakeWindsurf, write_config: Callable[..., Any], start: Callable[..., Running]
) -> Running:
    config = {
        "api": {"url": fake.url, "retries": 0},
        "groups": fake.groups[:1],
        "poll": {"interval": "1s"},
        **CREDITS_ON,
    }
    return start("--config.file", str(write_config(config)))


def test_a_key_without_billing_read_downs_credits_alone_with_one_line_per_poll(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Any],
    start_exporter: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_api.billing_read = False
    running = _start(fake_api, write_config, start_exporter)
    group = fake_api.groups[0]

    def two_credit_polls() -> dict[str, float] | None:
        metrics = running.metrics()
        errors = series(
            "windsurf_exporter_collector_poll_errors_total",
            collector="credits",
            group="",
            reason="auth",
        )
        return metrics if metrics[errors] >= 2 else None

    metrics = wait_for(two_credit_polls, what="two refused credit polls")
    assert metrics[series("windsurf_collector_up", collector="credits", group="")] == 0
    for collector, target in (("user_page", group), ("user_page", ""), ("cascade", group)):
        assert metrics[series("windsurf_collector_up", collector=collector, group=target)] == 1
    assert metrics[series("windsurf_up", group=group)] == 1
    assert metrics["windsurf_team_up"] == 1
    assert not any(k.startswith(("windsurf_team_seats", "windsurf_team_addon")) for k in metrics)
    # One request per refused poll (GetUsageConfig is not asked after the balance is refused).
    polls = len(fake_api.requests_for("", CREDIT_BALANCE))
    assert fake_api.requests_for("", USAGE_CONFIG) == []
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "exporter.poller" and getattr(r, "collector", "") == "credits"
    ]
    assert len(lines) in (polls - 1, polls)  # the last poll may not be published yet
    assert all("\n" not in line for line in lines), lines
    assert all(
        "HTTP 403, the service key was refused (check it has Billing Read)" in line
        for line in lines
    ), lines
    assert all("credits of the team down" in line for line in lines), lines


def test_with_billing_read_every_credit_series_is_there_and_no_cap_means_none(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Any],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.addon_cap = None
    metrics = _start(fake_api, write_config, start_exporter).metrics()
    assert metrics["windsurf_team_seats"] >= metrics["windsurf_team_billable_users"]
    assert metrics["windsurf_team_prompt_credits_per_seat"] == 500
    assert metrics["windsurf_team_addon_credits_available"] > 0
    assert "windsurf_team_addon_credits_used" in metrics
    assert "windsurf_team_addon_credit_cap" not in metrics


def test_a_fault_of_one_billing_method_downs_credits_and_keeps_its_last_good_values(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Any],
    start_exporter: Callable[..., Running],
) -> None:
    running = _start(fake_api, write_config, start_exporter)
    seats = running.metrics()["windsurf_team_seats"]
    fake_api.set_fault("", Fault(503), method=USAGE_CONFIG)
    up = series("windsurf_collector_up", collector="credits", group="")
    metrics = wait_for(lambda: (m := running.metrics())[up] == 0 and m, what="credits down")
    assert metrics["windsurf_team_seats"] == seats
    assert metrics[series("windsurf_collector_up", collector="cascade", group="")] == 1
