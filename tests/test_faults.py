"""Every upstream fault of the reliability table, against the fake API over loopback.

One exporter polls one group per fault (plus a healthy group) while the fake API misbehaves for
each fault group at once; every row then checks what that group's metrics, the fake API's request
log and the exporter's log say. Timing rows (Retry-After, backoff, hangs, staleness) have their
own tests with their own exporter or client; a Retry-After holds every group with the key, so
its tests (and the request budget's) are in test_budget.py.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.api import ApiError, Client, Clocks
from exporter.cli import Formatter
from exporter.config import ApiConfig, Secret
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, Fault, Recorded, synthetic_team
from exporter.sources.user_rows import decode_page
from exporter.state import Reason
from tests.conftest import (
    Running,
    launch,
    page_request,
    samples,
    series,
    wait_for,
    write_config_in,
)

RETRIES = 1
API = {"timeout": "1s", "retries": RETRIES, "retry_backoff": "50ms", "max_response_size": "64KiB"}
POLL = {"interval": "1s", "concurrency": 16}
HEALTHY = "healthy"
# 300 kB of JSON that gzip (which the fake API uses when asked) squeezes under the 64 KiB limit,
# so only a limit applied after decompression refuses it.
HUGE = b'{"userTableStats": [], "padding": "' + b"x" * 300_000 + b'"}'


@dataclass(frozen=True)
class Row:
    """One row of the fault table: what the upstream does and what the exporter must record."""

    group: str
    fault: Fault
    reason: str
    attempts: int  # requests per poll: 1 + retries for what is worth retrying, else 1
    says: str  # part of the one log line


ROWS = [
    Row("rate_limited", Fault(429), "rate_limited", 1 + RETRIES, "HTTP 429, rate limited"),
    Row("server_error", Fault(500), "server_error", 1 + RETRIES, "HTTP 500"),
    Row("unavailable", Fault(503), "server_error", 1 + RETRIES, "HTTP 503"),
    Row(
        "proxy_html",
        Fault(502, body=b"<html><body>Bad Gateway</body></html>", content_type="text/html"),
        "server_error",
        1 + RETRIES,
        "HTTP 502",
    ),
    Row("dropped", Fault(drop=True), "connection", 1 + RETRIES, "cannot reach"),
    Row("hang", Fault(delay=10.0), "timeout", 1, "no answer within 1s"),
    Row(
        "drip",
        Fault(body=b'{"userTableStats": []' + b" " * 2000 + b"}", drip=0.8),
        "timeout",
        1,
        "reply not complete within 1s",
    ),
    Row(
        "drip_head",
        Fault(body=b'{"userTableStats": []}', drip=0.8, drip_head=True),
        "timeout",
        1,
        "no answer within 1s",
    ),
    Row("unauthorized", Fault(401), "auth", 1, "service key was refused"),
    Row("forbidden", Fault(403), "auth", 1, "service key was refused"),
    Row("not_found", Fault(404, error="group not found"), "not_found", 1, "group not found"),
    Row(
        "html",
        Fault(body=b"<!DOCTYPE html><html>Sign in</html>", content_type="text/html"),
        "invalid_response",
        1,
        "not valid JSON (text/html)",
    ),
    Row(
        "truncated",
        Fault(body=b'{"userTableStats": [{"email": "ann@exa'),
        "invalid_response",
        1,
        "not valid JSON",
    ),
    Row("error_field", Fault(error="backend unavailable"), "api_error", 1, "backend unavailable"),
    Row("too_large", Fault(body=HUGE), "too_large", 1, "byte limit"),
    Row("bad_request", Fault(400), "http_error", 1, "HTTP 400"),
]


def up(metrics: dict[str, float], group: str) -> float | None:
    return metrics.get(series("windsurf_up", group=group))


def errors(metrics: dict[str, float], group: str, reason: str) -> float:
    return metrics.get(
        series("windsurf_exporter_poll_errors_total", group=group, reason=reason), 0.0
    )


def group_series(text: str, group: str) -> set[str]:
    """The data series of one group (health series excluded), with their values."""
    return {
        line
        for line in text.splitlines()
        if line.startswith(("windsurf_user_", "windsurf_group_", "windsurf_billing_"))
        and f'group="{group}"' in line
        and "_age_seconds" not in line
        and "_idle_" not in line
    }


class Records(logging.Handler):
    """Collects the exporter's log records for a test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def failures(self, group: str) -> list[logging.LogRecord]:
        """The group's warnings about failed polls (not about polls that overran)."""
        return [
            r
            for r in self.records
            if r.levelno >= logging.WARNING
            and getattr(r, "group", None) == group
            and r.getMessage().startswith("poll failed")
        ]


@contextmanager
def capture_log() -> Iterator[Records]:
    """Every record of the exporter's loggers, debug included, while the block runs."""
    handler = Records()
    logger = logging.getLogger("exporter")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def log() -> Iterator[Records]:
    with capture_log() as records:
        yield records


def one_line(record: logging.LogRecord) -> str:
    """The record as the exporter writes it (logfmt)."""
    return Formatter("logfmt", lambda: []).format(record)


def since(fake: FakeWindsurf, group: str, start: float) -> list[Recorded]:
    """The fake API's log of `group` from `start` on (its own clock)."""
    return [r for r in fake.requests_for(group) if r.at >= start]


def next_two(fake: FakeWindsurf, group: str, start: float) -> list[Recorded]:
    """Wait for the first two requests of `group` from `start` on."""
    return wait_for(
        lambda: len(found := since(fake, group, start)) >= 2 and found[:2],
        timeout=10,
        what=f"two requests for {group}",
    )


@dataclass
class Scenario:
    fake: FakeWindsurf
    down_text: str  # the first scrape with every fault group down
    after_text: str  # two healthy polls later
    faulted_at: float
    final: dict[str, float]  # what the exporter counted in the end, after its stop
    log: Records  # from the moment the faults were set

    @property
    def down(self) -> dict[str, float]:
        return samples(self.down_text)

    @property
    def after(self) -> dict[str, float]:
        return samples(self.after_text)

    def requests_since_fault(self, group: str) -> list[Recorded]:
        return since(self.fake, group, self.faulted_at)


def bursts(requests: list[Recorded], gap: float = 0.5) -> list[list[float]]:
    """Requests split into polls: a pause longer than `gap` starts a new poll."""
    out: list[list[float]] = []
    for request in requests:
        if out and request.at - out[-1][-1] <= gap:
            out[-1].append(request.at)
        else:
            out.append([request.at])
    return out


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    names = [row.group for row in ROWS] + [HEALTHY]
    with (
        FakeWindsurf(team=synthetic_team(size=4 * len(names), groups=names)) as fake,
        ExitStack() as stack,
    ):
        config = write_config_in(
            tmp_path_factory.mktemp("faults"),
            # team: false: each group's rows are its own, so its last good data stays as it was.
            {"api": {**API, "url": fake.url}, "poll": POLL, "groups": names, "team": False},
        )
        running = launch("--config.file", str(config))
        try:
            wait_for(lambda: all(up(running.metrics(), g) == 1 for g in names), what="all up")
            log = stack.enter_context(capture_log())
            faulted_at = time.time()
            for row in ROWS:
                fake.set_fault(row.group, row.fault)
            down = wait_for(
                lambda: (
                    all(
                        errors(samples(text := running.scrape().text), r.group, r.reason)
                        for r in ROWS
                    )
                    and text
                ),
                timeout=20,
                what="every fault group to fail",
            )
            polls = series("windsurf_exporter_polls_total", group=HEALTHY)
            after = wait_for(
                lambda: (
                    samples(text := running.scrape().text)[polls] >= samples(down)[polls] + 2
                    and text
                ),
                what="two more polls of the healthy group",
            )
        finally:
            running.exporter.stop()
        # After the stop no poll commits any more: this is what the exporter counted in the end.
        exporter = running.exporter
        final = samples(exporter.app.collector.render(exporter.poller.snapshot, 0.0).decode())
        wait_for(
            lambda: all(
                len(log.failures(row.group)) == errors(final, row.group, row.reason) for row in ROWS
            ),
            timeout=5,
            what="the log lines of the last committed polls",
        )
        stack.close()
        yield Scenario(fake, down, after, faulted_at, final, log)


@pytest.mark.parametrize("row", ROWS, ids=[row.group for row in ROWS])
def test_fault_marks_group_down_and_keeps_last_good_data(scenario: Scenario, row: Row) -> None:
    down, after = scenario.down, scenario.after
    assert up(after, row.group) == 0
    assert errors(after, row.group, row.reason) >= 1
    others = [r.value for r in Reason if r.value != row.reason]
    assert [errors(after, row.group, r) for r in others] == [0] * len(others)
    last_success = series("windsurf_exporter_last_success_timestamp_seconds", group=row.group)
    assert after[last_success] == down[last_success], "last success must stay frozen"
    assert after[last_success] < scenario.requests_since_fault(row.group)[0].at
    kept = group_series(scenario.after_text, row.group)
    assert kept, "the group's last good data must still be exported"
    assert kept == group_series(scenario.down_text, row.group)


@pytest.mark.parametrize("row", ROWS, ids=[row.group for row in ROWS])
def test_fault_retries_only_what_is_worth_retrying(scenario: Scenario, row: Row) -> None:
    after = scenario.after
    failed = errors(after, row.group, row.reason)
    outcome = series("windsurf_exporter_api_requests_total", group=row.group, outcome=row.reason)
    assert after[outcome] == failed * row.attempts
    # The fake API's own log: each poll is a burst of exactly `attempts` requests (the last one
    # may have been cut short by the stop), with a backoff wait between retries.
    polls = bursts(scenario.requests_since_fault(row.group))
    assert polls, "the group was never asked again"
    assert [len(p) for p in polls[:-1]] == [row.attempts] * (len(polls) - 1)
    assert len(polls[-1]) <= row.attempts
    for poll in polls:
        assert all(b - a >= 0.025 for a, b in itertools.pairwise(poll))


@pytest.mark.parametrize("row", ROWS, ids=[row.group for row in ROWS])
def test_fault_logs_one_line_per_failure(scenario: Scenario, row: Row) -> None:
    records = scenario.log.failures(row.group)
    assert len(records) == errors(scenario.final, row.group, row.reason) >= 1
    for record in records:
        line = one_line(record)
        assert "\n" not in line
        assert record.exc_info is None, "no traceback"
        assert f"group={row.group}" in line
        assert f"reason={row.reason}" in line
        assert row.says in line
        assert "group down, keeping its last good data, next attempt in" in line


def test_healthy_group_is_untouched_by_the_others_faults(scenario: Scenario) -> None:
    down, after = scenario.down, scenario.after
    assert up(after, HEALTHY) == 1
    assert [errors(after, HEALTHY, r.value) for r in Reason] == [0] * len(Reason)
    success = series("windsurf_exporter_last_success_timestamp_seconds", group=HEALTHY)
    assert after[success] > down[success]


def test_no_fault_leaves_a_traceback(scenario: Scenario) -> None:
    assert scenario.log.records
    assert [r.getMessage() for r in scenario.log.records if r.exc_info] == []


@pytest.mark.parametrize("group", ["hang", "drip", "drip_head"])
def test_hang_is_cut_at_the_timeout(scenario: Scenario, group: str) -> None:
    # Headers or a body dripping in under the read timeout are cut at the deadline too.
    duration = scenario.after[series("windsurf_exporter_last_poll_duration_seconds", group=group)]
    assert 0.9 <= duration <= 1.5


# --- Timing rows: each with its own exporter (or client) so the clock can be read precisely. ---


@pytest.fixture
def start_fast(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> Callable[..., Running]:
    """Start the exporter against the fake API with short intervals; `api`/`poll` override."""

    def start(groups: list[str], api: dict[str, Any] | None = None, **options: Any) -> Running:
        config = write_config(
            {
                "api": {**API, "url": fake_api.url, **(api or {})},
                "poll": {**POLL, **options.pop("poll", {})},
                "groups": groups,
            }
        )
        return start_exporter("--config.file", str(config), **options)

    return start


def test_retry_after_seconds_is_waited_out_before_asking_again(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running], log: Records
) -> None:
    start_fast(["engineering"])
    faulted_at = time.time()
    # The 429 comes half a second after the request: the wait starts with the reply.
    fake_api.set_fault("engineering", Fault(429, headers={"Retry-After": "2"}, delay=0.5))
    first, second = next_two(fake_api, "engineering", faulted_at)
    # The fake API's own clock: without Retry-After the next poll would come after 1s.
    assert second.at - (first.at + 0.5) >= 2.0
    logged = [r for r in log.failures("engineering") if r.created < second.at]
    assert len(logged) == 1, "the 429 is logged once"
    assert "next attempt in 2s" in logged[0].getMessage()


def test_retry_after_inside_the_deadline_is_retried_after_the_wait(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running]
) -> None:
    running = start_fast(["engineering"], api={"timeout": "5s"})
    faulted_at = time.time()
    fake_api.set_fault("engineering", Fault(429, headers={"Retry-After": "1"}))
    metrics = wait_for(
        lambda: (m := running.metrics()) and errors(m, "engineering", "rate_limited") >= 1 and m,
        timeout=10,
        what="the rate-limited poll",
    )
    outcome = series(
        "windsurf_exporter_api_requests_total", group="engineering", outcome="rate_limited"
    )
    assert metrics[outcome] == 2 * errors(metrics, "engineering", "rate_limited")
    first, second = since(fake_api, "engineering", faulted_at)[:2]
    assert second.at - first.at >= 1.0


def test_retry_after_http_date_is_waited_out(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running]
) -> None:
    start_fast(["engineering"])
    date = formatdate(time.time() + 3, usegmt=True)
    faulted_at = time.time()
    fake_api.set_fault("engineering", Fault(503, headers={"Retry-After": date}))
    first, second = next_two(fake_api, "engineering", faulted_at)
    assert second.at >= parsedate_to_datetime(date).timestamp()
    assert second.at - first.at >= 1.0


def test_unknown_group_is_down_and_the_others_are_not(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running]
) -> None:
    running = start_fast(["engineering", "no-such-group"])
    metrics = running.metrics()
    assert up(metrics, "no-such-group") == 0
    assert errors(metrics, "no-such-group", "not_found") == 1
    assert up(metrics, "engineering") == 1
    assert group_series(running.scrape().text, "engineering")


def test_a_hanging_group_neither_delays_nor_hides_another(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running]
) -> None:
    running = start_fast(["engineering", "research"], api={"timeout": "3s"})
    faulted_at = time.time()
    fake_api.set_fault("engineering", Fault(delay=30.0))
    hung = wait_for(lambda: since(fake_api, "engineering", faulted_at), what="the hung request")[0]
    slowest = 0.0
    while up(running.metrics(), "engineering") != 0:
        started = time.monotonic()
        assert up(running.metrics(), "research") == 1
        slowest = max(slowest, time.monotonic() - started)
        assert time.time() - hung.at < 3.0 + 1.0, "the hang must be cut at api.timeout"
    assert time.time() - hung.at >= 2.9
    assert slowest < 1.0, "scrapes answer during the hang"
    during = [r for r in since(fake_api, "research", hung.at) if r.at < hung.at + 3.0]
    assert len(during) >= 2, "research kept its 1s schedule while engineering hung"


def test_polls_run_concurrently_up_to_the_configured_bound(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running]
) -> None:
    fake_api.set_fault("*", Fault(delay=30.0))
    groups = ["engineering", "research", "design"]
    start_fast(groups, poll={"concurrency": 2}, wait_ready=False)
    targets = ["", *groups]  # the team's poll ("") starts first, beside the first group's
    firsts = sorted(
        wait_for(
            lambda: (
                all(fake_api.requests_for(g) for g in targets)
                and [fake_api.requests_for(g)[0].at for g in targets]
            ),
            what="a request for the team and every group",
        )
    )
    assert firsts[1] - firsts[0] < 0.5, "two targets are polled at once"
    assert firsts[2] - firsts[0] >= 0.9, "the third waits for a free slot (api.timeout 1s)"


def test_stale_data_is_dropped_after_max_staleness_but_health_stays(
    fake_api: FakeWindsurf, start_fast: Callable[..., Running], log: Records
) -> None:
    shift = [0.0]
    running = start_fast(["engineering", "research"], clock=lambda: time.time() + shift[0])
    fake_api.set_fault("engineering", Fault(500))
    wait_for(lambda: up(running.metrics(), "engineering") == 0, what="engineering down")
    six_hours = 6 * 3600.0  # the default poll.max_staleness

    shift[0] = six_hours - 60
    assert group_series(running.scrape().text, "engineering"), "still within max_staleness"

    shift[0] = six_hours + 60
    wait_for(
        lambda: (
            running.metrics()[
                series("windsurf_exporter_last_success_timestamp_seconds", group="research")
            ]
            > time.time() + six_hours
        ),
        what="research polled after the jump",
    )
    text = running.scrape().text
    metrics = samples(text)
    assert group_series(text, "engineering") == set(), "dead data must not pose as live"
    assert 'group="engineering"' not in "".join(
        line for line in text.splitlines() if line.startswith("windsurf_user_")
    )
    assert up(metrics, "engineering") == 0
    assert (
        series("windsurf_exporter_last_success_timestamp_seconds", group="engineering") in metrics
    )
    assert errors(metrics, "engineering", "server_error") >= 1
    assert group_series(text, "research"), "the live group keeps its data"
    wait_for(
        lambda: any("no longer exported" in r.getMessage() for r in log.failures("engineering")),
        what="a log line saying the data expired",
    )


# --- The client alone: retry arithmetic and limits, against the fake API or a mock transport. ---


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    """Clients of the real API module (closed after the test); keyword arguments set ApiConfig."""
    made: list[Client] = []

    def make(url: str, clocks: Clocks | None = None, **api: Any) -> Client:
        settings: dict[str, Any] = {"timeout": 5.0, "retries": 3, "retry_backoff": 0.1, **api}
        config = ApiConfig(url=url, service_key=Secret(DEMO_SERVICE_KEY), **settings)
        made.append(Client(config, clocks=clocks))
        return made[-1]

    yield make
    for client in made:
        client.close()


def fetch_error(client: Client, group: str = "engineering") -> tuple[ApiError, list[str]]:
    outcomes: list[str] = []
    with pytest.raises(ApiError) as caught:
        client.call(page_request(group), decode_page, outcomes.append)
    return caught.value, outcomes


@pytest.mark.parametrize(("draw", "expected"), [(1.0, [0.1, 0.2, 0.4]), (0.0, [0.05, 0.1, 0.2])])
def test_backoff_is_exponential_with_jitter_and_bounded(
    fake_api: FakeWindsurf, draw: float, expected: list[float], make_client: Callable[..., Client]
) -> None:
    waits: list[float] = []
    pause = threading.Event()

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return pause.wait(seconds)

    fake_api.set_fault("engineering", Fault(503))
    client = make_client(fake_api.url, Clocks(wait=wait, random=lambda: draw))
    err, outcomes = fetch_error(client)
    assert err.reason is Reason.SERVER_ERROR
    assert outcomes == ["server_error"] * 4, "retries are bounded by api.retries"
    assert waits == pytest.approx(expected)
    times = [r.at for r in fake_api.requests_for("engineering")]
    assert len(times) == 4
    assert all(b - a >= w for a, b, w in zip(times, times[1:], expected, strict=False))


def test_retries_stop_at_the_deadline(
    fake_api: FakeWindsurf, make_client: Callable[..., Client]
) -> None:
    fake_api.set_fault("engineering", Fault(500))
    client = make_client(fake_api.url, timeout=1.0, retries=50, retry_backoff=0.1)
    started = time.monotonic()
    err, outcomes = fetch_error(client)
    assert time.monotonic() - started <= 1.2
    assert err.reason is Reason.SERVER_ERROR
    assert 2 <= len(outcomes) < 10


def test_refused_connection_is_retried_then_reported(
    fake_api: FakeWindsurf, make_client: Callable[..., Client]
) -> None:
    url = fake_api.url
    fake_api.stop()  # nothing listens there any more
    err, outcomes = fetch_error(make_client(url, retries=2, retry_backoff=0.01))
    assert err.reason is Reason.CONNECTION
    assert outcomes == ["connection"] * 3
    assert str(err).startswith(f"cannot reach {url}")


def test_connect_timeout_is_retried_within_the_deadline() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        if len(seen) == 1:
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(200, json={"userTableStats": []})

    client = Client(
        ApiConfig(service_key=Secret("k"), timeout=30.0, retry_backoff=0.01),
        transport=httpx.MockTransport(handler),
    )
    outcomes: list[str] = []
    client.call(page_request(""), decode_page, outcomes.append)
    client.close()
    assert outcomes == ["timeout", "success"]
    assert seen[0]["connect"] == 5.0, "a connect may take only part of the deadline"
    assert 29.0 < seen[0]["read"] <= 30.0, "the reply may take the rest"


def test_size_limit_counts_decompressed_bytes(
    fake_api: FakeWindsurf, make_client: Callable[..., Client]
) -> None:
    fake_api.set_fault("engineering", Fault(body=HUGE))
    err, _ = fetch_error(make_client(fake_api.url, max_response_bytes=65536))
    assert len(gzip.compress(HUGE, compresslevel=1)) < 65536 < len(HUGE)
    assert err.reason is Reason.TOO_LARGE
    assert str(err) == "reply exceeds the 65536 byte limit"


def test_size_limit_refuses_a_declared_length_before_reading(
    fake_api: FakeWindsurf, make_client: Callable[..., Client]
) -> None:
    fake_api.set_fault("engineering", Fault(body=os.urandom(200_000)))
    err, _ = fetch_error(make_client(fake_api.url, max_response_bytes=65536))
    assert err.reason is Reason.TOO_LARGE
    assert "exceeds the 65536 limit" in str(err)
