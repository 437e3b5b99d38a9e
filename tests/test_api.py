"""The API client in isolation (httpx.MockTransport, fake clocks): what it sends, how each
failure maps to a reason, and when it retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from exporter.api import ApiError, Client, Clocks, parse_retry_after
from exporter.config import ApiConfig, Secret
from exporter.sources.user_page import decode_page
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
