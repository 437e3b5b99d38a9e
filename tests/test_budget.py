"""One key, one budget (issue 16), against the fake API over loopback and its request log: a
Retry-After on one group holds every request with the key, and api.max_requests_per_minute
spreads the requests of many groups without losing any."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from exporter.api import ApiError, Clocks
from exporter.collector import Collector
from exporter.config import (
    ApiConfig,
    Config,
    ConfigError,
    PollConfig,
    Secret,
    Window,
    parse_config,
)
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, Fault, Recorded, synthetic_team
from exporter.poller import Poller, RateLimited, Reloaded, next_state
from exporter.sources.user_rows import build_report, decode_page
from exporter.state import Reason
from tests import rows
from tests.conftest import USER_PAGE_ONLY, Running, samples, series, wait_for
from tests.test_faults import (  # noqa: F401 - log and start_fast are fixtures used here
    Records,
    capture_log,
    errors,
    group_series,
    log,
    start_fast,
    up,
)
from tests.test_poller import CONFIG, ENG, result, started, state_of

GROUPS = ["engineering", "research", "design", "sales"]
UNTIL = "windsurf_exporter_rate_limited_until_timestamp_seconds"


def keyed(fake: FakeWindsurf, start: float, end: float) -> list[Recorded]:
    """Every request with the demo key, to any method, the fake received in [start, end)."""
    return [r for r in fake.requests if r.service_key == DEMO_SERVICE_KEY and start <= r.at < end]


def test_a_retry_after_on_one_group_holds_every_request_with_the_key_then_all_resume(
    fake_api: FakeWindsurf,
    start_fast: Callable[..., Running],  # noqa: F811 - the fixture imported above
    log: Records,  # noqa: F811
) -> None:
    running = start_fast(GROUPS)
    wait_for(lambda: all(up(running.metrics(), g) == 1 for g in GROUPS), what="all groups up")
    before = running.scrape().text
    assert samples(before)[UNTIL] == 0
    log.records.clear()
    fake_api.set_fault("engineering", Fault(429, headers={"Retry-After": "5"}, times=1))
    until = wait_for(lambda: running.metrics()[UNTIL], what="the key's wait to be exported")
    # The other groups come due during the wait: not asked, they keep their data and say why.
    during = wait_for(
        lambda: (
            all(errors(samples(t := running.scrape().text), g, "rate_limited") for g in GROUPS)
            and t
        ),
        what="every group to be held by the wait",
    )
    assert time.time() < until
    for group in GROUPS:
        assert up(samples(during), group) == 0
        assert group_series(during, group), "the last good data stays"
    # Every group and method is asked again once the wait is over.
    wait_for(
        lambda: (
            all(
                fake_api.requests_for(g) and fake_api.requests_for(g)[-1].at >= until
                for g in GROUPS
            )
            and all(up(running.metrics(), g) == 1 for g in GROUPS)
        ),
        timeout=15,
        what="every group to resume after the wait",
    )
    # Requests already on the wire when the 429 came back may land just after it.
    assert keyed(fake_api, until - 5 + 0.1, until) == []
    metrics = running.metrics()
    assert metrics[UNTIL] == 0
    for group in GROUPS[1:]:  # not asked: no HTTP request was sent, so none is counted
        outcome = series(
            "windsurf_exporter_api_requests_total", group=group, outcome="rate_limited"
        )
        assert metrics[outcome] == 0
    warnings = [r for r in log.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert getattr(warnings[0], "group", None) == "engineering"
    assert "HTTP 429" in warnings[0].getMessage()
    assert "next attempt in 5s" in warnings[0].getMessage()


class FastClock:
    """Real time running `rate` times faster, for the exporter and the fake API alike: minutes
    of request budget pass in seconds, while every request still goes over loopback."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._origin = time.monotonic()
        self._wall = time.time()

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin) * self.rate

    def wall(self) -> float:
        return self._wall + self.monotonic()

    def clocks(self) -> Clocks:
        return Clocks(monotonic=self.monotonic, wall=self.wall, rate=self.rate)


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The most of `times` any closed window of `seconds` holds."""
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered[i:] if t <= start + seconds) for i, start in enumerate(ordered)),
        default=0,
    )


def test_a_budget_of_60_per_minute_holds_in_every_window_and_every_group_gets_its_data() -> None:
    clock = FastClock(rate=8.0)
    groups = [f"team-{n}" for n in range(10)]
    with FakeWindsurf(team=synthetic_team(size=40, groups=groups), clock=clock.wall) as fake:
        config = Config(
            api=ApiConfig(
                url=fake.url,
                service_key=Secret(DEMO_SERVICE_KEY),
                timeout=30.0,
                max_requests_per_minute=60,
            ),
            # 10 groups every 5 s ask 2 requests a second of a budget of 1: polls queue.
            poll=PollConfig(interval=5.0, concurrency=4),
            groups=tuple(groups),
            windows=(Window("30d", 30 * 86400.0),),
            team=False,  # the groups' polls only
            collectors=USER_PAGE_ONLY,
        )
        poller = Poller(config, clocks=clock.clocks(), jitter=lambda interval: 0.0)
        with capture_log() as log:
            poller.start()
            try:
                # Past a minute of budget, so the 60 s window is what holds them back.
                wait_for(lambda: len(fake.requests) >= 65, timeout=60, what="65 requests")
            finally:
                poller.stop()
        sent = [r.at for r in fake.requests]
        assert most_in_any_window(sent, 60.0) <= 60
        assert most_in_any_window(sent, 1.0) <= 2  # a second's share (1) plus one
        states = poller.snapshot.states
        assert {s.name for s in states if s.report is not None and s.up} == set(groups)
        assert [sum(s.errors.values()) for s in states] == [0] * len(groups)
        # Queued polls overran their interval, and said so.
        assert sum(s.overruns for s in states) >= 1
        overran = wait_for(
            lambda: (
                len(
                    lines := [
                        r for r in log.records if "longer than poll.interval" in r.getMessage()
                    ]
                )
                == sum(s.overruns for s in states)
                and lines
            ),
            timeout=5,
            what="one log line per overrun",
        )
        assert "api.max_requests_per_minute: 60" in overran[0].getMessage()


# --- The pure parts: what next_state keeps, what the collector shows. ---


def test_a_poll_longer_than_its_interval_counts_an_overrun() -> None:
    state = started()
    interval = CONFIG.poll.interval
    on_time = next_state(state, result(state, finished=100.0 + interval), CONFIG)
    assert state_of(on_time, ENG).overruns == 0
    late = next_state(on_time, result(on_time, finished=100.0 + interval + 1), CONFIG)
    assert state_of(late, ENG).overruns == 1
    assert state_of(late, ENG).up, "an overrun is no failure"


def test_the_keys_wait_is_kept_in_the_snapshot_until_a_reload_to_another_key() -> None:
    state = next_state(started(), RateLimited(1_700_000_060.0), CONFIG)
    state = next_state(state, RateLimited(1_700_000_030.0), CONFIG)  # a shorter one
    assert state.snapshot.rate_limited_until == 1_700_000_060.0
    failed = result(state, failure=ApiError(Reason.RATE_LIMITED, "HTTP 429", 60.0, True))
    state = next_state(state, failed, CONFIG)
    assert state.snapshot.rate_limited_until == 1_700_000_060.0
    same = next_state(state, Reloaded(200.0), CONFIG)
    assert same.snapshot.rate_limited_until == 1_700_000_060.0
    other = replace(CONFIG, api=replace(CONFIG.api, service_key=Secret("another-key")))
    assert next_state(state, Reloaded(200.0), other).snapshot.rate_limited_until == 0.0


@pytest.mark.parametrize(
    ("now", "shown"), [(1_700_000_000.0, 1_700_000_060.0), (1_700_000_061.0, 0)]
)
def test_the_wait_is_exported_until_it_ends_then_zero(now: float, shown: float) -> None:
    state = next_state(started(), RateLimited(1_700_000_060.0), CONFIG)
    for openmetrics in (False, True):
        text = Collector().render(state.snapshot, now, openmetrics=openmetrics).decode()
        assert samples(text)[UNTIL] == shown


def test_the_budget_is_unlimited_unless_configured() -> None:
    env = {"WINDSURF_SERVICE_KEY": "sk-budget-test-0123456789"}
    assert parse_config({}, environ=env).api.max_requests_per_minute is None
    config = parse_config({"api": {"max_requests_per_minute": 60}}, environ=env)
    assert config.api.max_requests_per_minute == 60
    assert config.redacted()["api"]["max_requests_per_minute"] == 60


@pytest.mark.parametrize("value", [0, -5, 1.5, "fast", True])
def test_a_bad_budget_stops_startup_with_its_key_path(value: object) -> None:
    env = {"WINDSURF_SERVICE_KEY": "sk-budget-test-0123456789"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": {"max_requests_per_minute": value}}, environ=env)
    assert "api.max_requests_per_minute:" in str(caught.value)
    assert "at least 1" in str(caught.value)


# --- Upstream freshness: the newest lastUpdateTime of a group's rows. ---


def test_a_groups_data_is_as_fresh_as_its_newest_lastupdatetime() -> None:
    pages = [
        ("7d", decode_page({"userTableStats": [rows.ALICE, {**rows.BOB, "lastUpdateTime": "x"}]})),
        (
            "30d",
            decode_page(
                {"userTableStats": [{**rows.BOB, "lastUpdateTime": "2024-10-11T00:00:00+02:00"}]}
            ),
        ),
    ]
    # ALICE: 2024-10-10T22:56:10.771591Z; the later page's BOB is 22:00Z, older; "x" is no time.
    assert build_report(pages).updated == 1728600970.771591
    assert (
        build_report([("30d", decode_page({"userTableStats": [{"email": "a@x.io"}]}))]).updated
        is None
    )


def test_the_exporter_shows_when_the_fake_api_last_refreshed_each_group(
    fake_api: FakeWindsurf,
    start_fast: Callable[..., Running],  # noqa: F811 - the fixture imported above
) -> None:
    running = start_fast(GROUPS)
    metrics = running.metrics()
    for group in GROUPS:
        updated = metrics[series("windsurf_group_data_updated_timestamp_seconds", group=group)]
        # The fake refreshes every row 10 minutes before it answers (just after it logs).
        answers = [r.at - 600 for r in fake_api.requests_for(group)]
        assert any(at <= updated <= at + 0.5 for at in answers), (updated, answers)
