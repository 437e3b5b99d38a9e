"""The API client in isolation (httpx.MockTransport, fake clocks): what it sends, how each
failure maps to a reason, and when it retries."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from exporter.api import ApiError, Client, Clocks, KeyLimit, parse_retry_after
from exporter.config import ApiConfig, Secret
from exporter.sources.user_rows import decode_page
from exporter.state import Reason
from tests.conftest import REQUEST_TIME, page_request

KEY = "sk-unit-test-0123456789abcdef"
NOW = REQUEST_TIME


@dataclass
class FakeTime:
    """A clock that only moves when the client waits."""

    now: float = 0.0
    waits: list[float] = field(default_factory=list)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False

    def clocks(self) -> Clocks:
        return Clocks(
            monotonic=lambda: self.now,
            wall=lambda: NOW + self.now,
            wait=self.wait,
            random=lambda: 0.5,
        )


def client(
    handler: Callable[[httpx.Request], httpx.Response], time: FakeTime | None = None, **api: object
) -> Client:
    config = ApiConfig(url="https://windsurf.test", service_key=Secret(KEY), **api)  # type: ignore[arg-type]
    return Client(
        config, transport=httpx.MockTransport(handler), clocks=(time or FakeTime()).clocks()
    )


def reply(status: int = 200, body: object = None, **headers: str) -> httpx.Response:
    document = {"userTableStats": []} if body is None else body
    return httpx.Response(status, json=document, headers=headers)


def test_the_request_is_a_post_with_key_group_and_window_in_the_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply()

    client(handler).call(page_request("engineering"), decode_page)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://windsurf.test/api/v1/UserPageAnalytics"
    assert json.loads(request.content) == {
        "service_key": KEY,
        "group_name": "engineering",
        "start_timestamp": "2024-09-11T09:46:40Z",
        "end_timestamp": "2024-10-11T09:46:40Z",
    }
    assert KEY not in str(request.headers)


def test_the_whole_team_sends_no_group_name() -> None:
    seen: list[dict[str, str]] = []
    client(lambda r: seen.append(json.loads(r.content)) or reply()).call(
        page_request(""), decode_page
    )
    assert "group_name" not in seen[0]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (401, Reason.AUTH),
        (403, Reason.AUTH),
        (404, Reason.NOT_FOUND),
        (400, Reason.HTTP_ERROR),
        (429, Reason.RATE_LIMITED),
        (500, Reason.SERVER_ERROR),
        (503, Reason.SERVER_ERROR),
    ],
)
def test_status_codes_map_to_reasons(status: int, reason: Reason) -> None:
    with pytest.raises(ApiError) as caught:
        client(lambda r: reply(status, {"error": "nope"}), retries=0).call(
            page_request("g"), decode_page
        )
    assert caught.value.reason is reason


def test_a_404_does_not_blame_a_group_a_method_may_have_answered() -> None:
    with pytest.raises(ApiError) as caught:
        client(lambda r: reply(404, {}), retries=0).call(page_request("g"), decode_page)
    assert str(caught.value) == (
        "HTTP 404, not found (a group the team does not have, or a method this URL does not serve)"
    )


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(
                200, text="<html>proxy login</html>", headers={"content-type": "text/html"}
            ),
            Reason.INVALID_RESPONSE,
        ),
        (httpx.Response(200, text='{"userTableStats": [{"email": "a@'), Reason.INVALID_RESPONSE),
        (httpx.Response(200, json=[1, 2]), Reason.INVALID_RESPONSE),
        (httpx.Response(200, json={"error": "group not found"}), Reason.API_ERROR),
    ],
)
def test_bad_bodies_map_to_reasons(response: httpx.Response, reason: Reason) -> None:
    with pytest.raises(ApiError) as caught:
        client(lambda r: response).call(page_request("g"), decode_page)
    assert caught.value.reason is reason


def test_html_is_named_in_the_message() -> None:
    html = httpx.Response(200, text="<html></html>", headers={"content-type": "text/html"})
    with pytest.raises(ApiError, match=r"not valid JSON \(text/html\)"):
        client(lambda r: html).call(page_request("g"), decode_page)


def test_auth_failures_are_not_retried() -> None:
    calls: list[int] = []
    with pytest.raises(ApiError):
        client(lambda r: calls.append(1) or reply(401), retries=3).call(
            page_request("g"), decode_page
        )
    assert len(calls) == 1


def test_server_errors_retry_with_exponential_backoff_then_succeed() -> None:
    time = FakeTime()
    answers = iter([reply(502), reply(503), reply(500), reply()])
    outcomes: list[str] = []
    client(lambda r: next(answers), time, retries=3, retry_backoff=1.0).call(
        page_request("g"), decode_page, outcomes.append
    )
    # random() is 0.5, so each wait is 75% of 1s, 2s, 4s.
    assert time.waits == [0.75, 1.5, 3.0]
    assert outcomes == ["server_error", "server_error", "server_error", "success"]


def test_retries_are_bounded() -> None:
    calls: list[int] = []
    with pytest.raises(ApiError) as caught:
        client(lambda r: calls.append(1) or reply(503), retries=2).call(
            page_request("g"), decode_page
        )
    assert len(calls) == 3
    assert caught.value.reason is Reason.SERVER_ERROR


def test_retry_after_is_honoured_within_the_deadline() -> None:
    time = FakeTime()
    answers = iter([reply(429, {"error": "slow down"}, **{"Retry-After": "7"}), reply()])
    client(lambda r: next(answers), time, timeout=30.0).call(page_request("g"), decode_page)
    assert time.waits == [7.0]


def test_a_retry_after_beyond_the_deadline_gives_up_and_reports_the_wait() -> None:
    time = FakeTime()
    with pytest.raises(ApiError) as caught:
        client(lambda r: reply(429, **{"Retry-After": "120"}), time, timeout=30.0).call(
            page_request("g"), decode_page
        )
    assert time.waits == []
    assert caught.value.retry_after == 120


@pytest.mark.parametrize(
    ("error", "reason"),
    [(httpx.ConnectError, Reason.CONNECTION), (httpx.ReadTimeout, Reason.TIMEOUT)],
)
def test_transport_errors_map_to_reasons(error: type[httpx.TransportError], reason: Reason) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("no luck", request=request)

    with pytest.raises(ApiError) as caught:
        client(fail, retries=1).call(page_request("g"), decode_page)
    assert caught.value.reason is reason


def test_large_replies_are_refused_by_declared_and_by_actual_size() -> None:
    big = b'{"userTableStats": [' + b'{"email": "x@y.z"},' * 100 + b"{}]}"
    declared = httpx.Response(200, content=big)
    with pytest.raises(ApiError) as caught:
        client(lambda r: declared, max_response_bytes=100).call(page_request("g"), decode_page)
    assert caught.value.reason is Reason.TOO_LARGE

    def stream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([big[:50], big[50:]]))  # no Content-Length

    with pytest.raises(ApiError) as caught:
        client(stream, max_response_bytes=100).call(page_request("g"), decode_page)
    assert caught.value.reason is Reason.TOO_LARGE


def test_upstream_text_is_sanitized_before_it_reaches_a_message() -> None:
    echo = reply(
        401,
        {"error": f"key {KEY} refused for user aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa\nsecond line"},
    )
    with pytest.raises(ApiError) as caught:
        client(lambda r: echo).call(page_request("g"), decode_page)
    message = str(caught.value)
    assert KEY not in message
    assert KEY not in repr(caught.value)
    assert "aaaaaaaa-aaaa" not in message
    assert "\n" not in message
    assert "refused" in message


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Fri, 11 Oct 2024 09:47:40 GMT", 60.0),
        ("Fri, 11 Oct 2024 09:40:00 GMT", 0.0),
        ("soon", None),
        (None, None),
        ("9" * 30, 86400.0),
    ],
)
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


# --- The key's shared rate-limit state (KeyLimit): every client of one key passes it. ---


def keyed_client(
    limit: KeyLimit, time: FakeTime, answers: Callable[[httpx.Request], httpx.Response], **api: Any
) -> Client:
    config = ApiConfig(url="https://windsurf.test", service_key=Secret(KEY), **api)
    return Client(config, transport=httpx.MockTransport(answers), clocks=time.clocks(), limit=limit)


def test_a_429_on_one_client_holds_every_other_client_of_the_key_without_asking() -> None:
    time = FakeTime()
    paused: list[float] = []
    limit = KeyLimit(time.clocks(), on_pause=paused.append)
    asked: list[float] = []

    def other(request: httpx.Request) -> httpx.Response:
        asked.append(time.now)
        return reply()

    hit = keyed_client(limit, time, lambda r: reply(429, **{"Retry-After": "60"}), timeout=30.0)
    with pytest.raises(ApiError) as caught:
        hit.call(page_request("eng"), decode_page)
    assert paused == [NOW + 60.0]  # the wall time the wait ends, for the exported metric
    held = keyed_client(limit, time, other, timeout=30.0)
    time.now += 20.0
    with pytest.raises(ApiError) as refused:
        held.call(page_request("ops"), decode_page)
    assert (refused.value.reason, refused.value.retry_after) == (Reason.RATE_LIMITED, 40.0)
    assert refused.value.key_wait
    assert caught.value.key_wait
    assert "not asked" in str(refused.value)
    assert asked == []
    time.now += 40.0
    held.call(page_request("ops"), decode_page)
    assert asked == [60.0]


def test_a_wait_shorter_than_the_timeout_is_waited_out_not_failed() -> None:
    time = FakeTime()
    limit = KeyLimit(time.clocks())
    limit.pause(10.0)
    asked: list[float] = []
    keyed_client(limit, time, lambda r: asked.append(time.now) or reply(), timeout=30.0).call(
        page_request("ops"), decode_page
    )
    assert asked == [10.0]


@pytest.mark.parametrize(
    ("headers", "holds"), [({"Retry-After": "5"}, True), ({}, False)], ids=["after", "plain"]
)
def test_a_503_holds_the_key_only_when_it_says_when_to_come_back(
    headers: dict[str, str], holds: bool
) -> None:
    time = FakeTime()
    limit = KeyLimit(time.clocks())
    with pytest.raises(ApiError) as caught:
        keyed_client(limit, time, lambda r: reply(503, **headers), retries=0).call(
            page_request("eng"), decode_page
        )
    assert caught.value.key_wait is holds
    asked: list[float] = []
    keyed_client(limit, time, lambda r: asked.append(time.now) or reply()).call(
        page_request("ops"), decode_page
    )
    assert asked == [5.0 if holds else 0.0]


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The most of `times` any closed window of `seconds` holds."""
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered[i:] if t <= start + seconds) for i, start in enumerate(ordered)),
        default=0,
    )


@pytest.mark.parametrize("budget", [1, 30, 60, 90, 600])
def test_the_budget_holds_in_every_60_s_and_1_s_window(budget: int) -> None:
    time = FakeTime()
    limit = KeyLimit(time.clocks())
    sent: list[float] = []
    client = keyed_client(
        limit, time, lambda r: sent.append(time.now) or reply(), max_requests_per_minute=budget
    )
    for _ in range(2 * budget + 5):
        client.call(page_request("eng"), decode_page)
    assert most_in_any_window(sent, 60.0) <= budget
    assert most_in_any_window(sent, 1.0) <= budget // 60 + 1  # a second's share plus one
    # Spread, not bursts: one request every 60/budget s, and no slower than that needs.
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 60.0 / budget - 1e-9
    assert sent[-1] <= (len(sent) / budget) * 60.0 + 1.0


def test_a_request_still_running_holds_its_place_in_the_window() -> None:
    # The upstream may count a request any time until it answers, so its place in the 60 s
    # window is freed 60 s after its reply, not after its start.
    time = FakeTime()
    limit = KeyLimit(time.clocks())
    slow = limit.admit(1)
    assert slow is not None
    time.now += 100.0  # the request takes 100 s
    assert limit.admit(1, latest=time.now) is None
    limit.done(slow)
    ended = time.now
    assert limit.admit(1, latest=ended + 59.0) is None
    assert time.now == ended, "no turn inside `latest`: nothing is waited for"
    assert limit.admit(1) is not None
    assert time.now >= ended + 60.0


def test_a_retry_that_gets_no_turn_within_the_deadline_gives_up() -> None:
    time = FakeTime()
    calls: list[float] = []
    with pytest.raises(ApiError) as caught:
        keyed_client(
            KeyLimit(time.clocks()),
            time,
            lambda r: calls.append(time.now) or reply(500),
            max_requests_per_minute=1,
            timeout=30.0,
        ).call(page_request("eng"), decode_page)
    assert caught.value.reason is Reason.SERVER_ERROR
    assert calls == [0.0]


def test_the_first_request_queues_for_the_budget_and_its_deadline_starts_when_sent() -> None:
    time = FakeTime()
    limit = KeyLimit(time.clocks())
    first = limit.admit(1)
    assert first is not None
    limit.done(first)
    asked: list[float] = []
    # The budget's next turn is a minute away, twice the timeout: the request waits, then
    # still has its whole deadline for a retry.
    answers = iter([reply(500), reply()])
    keyed_client(
        limit,
        time,
        lambda r: asked.append(time.now) or next(answers),
        max_requests_per_minute=100,
        timeout=30.0,
    ).call(page_request("eng"), decode_page)
    assert asked[0] >= 60.0 / 100
