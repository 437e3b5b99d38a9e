"""One call of any v1 method: request, deadline, size limit, retries, Retry-After, the upstream's
`error` field, and the few reasons a call can fail, each with a message that is safe to log.
Every request passes the key's shared rate-limit state (`KeyLimit`): one budget and one
Retry-After wait per service key, whichever target or source asks. The transport knows no
endpoint: the caller's `parse` turns the JSON into its record."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from exporter import __version__
from exporter.config import ApiConfig
from exporter.sources.base import Request
from exporter.state import SUCCESS, MalformedResponse, Reason

log = logging.getLogger("exporter.api")

T = TypeVar("T")
API_PATH = "/api/v1/"
MAX_RETRY_AFTER = 86400.0
_BACKOFF_CAP = 60.0
# A connect that takes longer is worth abandoning and retrying; the rest of the deadline is for
# the reply, which may be many megabytes.
_CONNECT_TIMEOUT = 5.0
# Long tokens and UUIDs in upstream text may be keys (service or user); never repeat them.
_TOKENISH = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[A-Za-z0-9_\-+/=.]{24,}"
)


_RETRYABLE = {Reason.RATE_LIMITED, Reason.SERVER_ERROR, Reason.TIMEOUT, Reason.CONNECTION}


class ApiError(Exception):
    """A failed call; `str()` is one safe line, `retry_after` the wait the upstream asked for.
    `key_wait`: the failure is the key's rate limit (a 429, a 503 with Retry-After, or a request
    not sent because the key is waiting), which holds every request with the key; `held`: the
    request was not sent at all, because the key was already waiting."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        retry_after: float | None = None,
        key_wait: bool = False,
        held: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.key_wait = key_wait
        self.held = held

    def __repr__(self) -> str:
        return f"ApiError({self.reason.value!r}, {str(self)!r})"


class Stopped(Exception):
    """The exporter is shutting down; the call was abandoned."""


@dataclass(frozen=True)
class Clocks:
    """Injected time: `monotonic` for deadlines, `wall` for request windows and HTTP dates,
    `wait(seconds) -> stopped?` for backoff sleeps that a shutdown can interrupt."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    wait: Callable[[float], bool] = threading.Event().wait
    random: Callable[[], float] = random.random
    # Clock seconds per real second: a test clock may run faster than time itself, so that
    # minutes of budget pass in seconds; waits on real events divide by it.
    rate: float = 1.0


_WINDOW = 60.0  # the budget's window: api.max_requests_per_minute
# How often a request waiting for the budget looks again while the budget is held by requests
# still running (whose end, which frees their place, is not known in advance).
_RECHECK = 0.05


@dataclass
class _Sent:
    """One request the key sent: it holds its place in the window until 60 s after its end
    (inf while it runs), since the upstream may count it any time between send and reply."""

    ended: float = math.inf


class KeyLimit:
    """The key's shared rate-limit state: one per service key, shared by every client, target
    and source using it. A 429 (or a 503 with Retry-After) on any request pauses them all; the
    budget spreads them so that no 60 s window holds more than `max_requests_per_minute`
    requests, and consecutive ones are 60/budget s apart, so no 1 s window holds more than a
    second's share plus one."""

    def __init__(
        self, clocks: Clocks | None = None, on_pause: Callable[[float], None] = lambda until: None
    ) -> None:
        self._clocks = clocks or Clocks()
        self._on_pause = on_pause  # hears the wall time a new wait ends
        self._lock = threading.Lock()
        self._paused_until = -math.inf  # monotonic
        self._last = -math.inf  # monotonic time of the last request let through
        self._sent: list[_Sent] = []

    def pause(self, seconds: float) -> None:
        """Hold every request with the key for `seconds` from now (a longer wait wins)."""
        clocks = self._clocks
        with self._lock:
            until = clocks.monotonic() + seconds
            longer = until > self._paused_until
            if longer:
                self._paused_until = until
        if longer:
            self._on_pause(clocks.wall() + seconds)

    def admit(
        self, budget: int | None, latest: float = math.inf, max_pause: float = math.inf
    ) -> _Sent | None:
        """Wait for the key's turn and take it; None when the turn comes after `latest`
        (monotonic). A rate-limit wait longer than `max_pause` is not waited out: the request
        is not sent, and fails as rate_limited with the wait as its Retry-After.
        Raises Stopped when a shutdown interrupts the wait."""
        clocks = self._clocks
        while True:
            with self._lock:
                now = clocks.monotonic()
                paused = self._paused_until - now
                if paused > max_pause:
                    raise ApiError(
                        Reason.RATE_LIMITED,
                        "not asked: every request with this service key waits out the API's"
                        f" rate limit for {paused:.1f}s more",
                        paused,
                        key_wait=True,
                        held=True,
                    )
                turn = self._turn(now, budget)
                if turn is not None and turn <= now:
                    sent = _Sent()
                    self._last = now
                    if budget is not None:
                        self._sent.append(sent)
                    return sent
            if (turn if turn is not None else now) > latest:
                return None
            if clocks.wait(_RECHECK if turn is None else turn - now):
                raise Stopped

    def _turn(self, now: float, budget: int | None) -> float | None:
        """The earliest time the next request may go; None while requests still running hold
        the whole budget."""
        turn = max(now, self._paused_until)
        if budget is None:
            return turn
        self._sent = [s for s in self._sent if s.ended >= now - _WINDOW]
        turn = max(turn, self._last + _WINDOW / budget)
        excess = len(self._sent) - budget
        if excess >= 0:
            # The window may hold budget - 1 others: wait until enough of them age out.
            freed = sorted(s.ended for s in self._sent)[excess]
            if freed == math.inf:
                return None
            turn = max(turn, freed + _WINDOW + 1e-3)
        return turn

    def done(self, sent: _Sent) -> None:
        """The request's reply is in (or it failed): its place in the window starts ageing."""
        with self._lock:
            sent.ended = self._clocks.monotonic()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date -> seconds to wait (bounded), None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Client:
    """Calls v1 methods, each call within `api.timeout` in all."""

    def __init__(
        self,
        api: ApiConfig,
        transport: httpx.BaseTransport | None = None,
        clocks: Clocks | None = None,
        max_connections: int = 4,
        limit: KeyLimit | None = None,
    ) -> None:
        self._api = api
        self._clocks = clocks or Clocks()
        # Shared with every other client of the same key (the poller hands it over); a client
        # made alone has the key to itself.
        self.limit = limit or KeyLimit(self._clocks)
        self._http = httpx.Client(
            transport=transport,
            headers={"User-Agent": f"windsurf-exporter/{__version__}"},
            # No keep-alive: every attempt opens its own connection, so the watchdog sees the
            # socket being opened and can cut slow headers too, not only a slow body.
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
            follow_redirects=False,
        )
        self._url = api.url + API_PATH
        self._secrets = tuple(s for s in (api.service_key.reveal(),) if s)

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        request: Request,
        parse: Callable[[Any], T],
        on_attempt: Callable[[str], None] = lambda outcome: None,
    ) -> T:
        """One reply, parsed, retrying what is worth retrying while the deadline allows.
        `parse` raises MalformedResponse for a reply of the wrong shape.

        The first attempt queues for the key's budget as long as it takes, and the deadline
        (`api.timeout`, retries included) starts when it is sent; a retry must get its turn
        within the deadline. A key waiting out a rate limit longer than `api.timeout` is not
        asked at all: the call fails with rate_limited and the wait as its Retry-After.

        Raises ApiError with the last failure, or Stopped when a shutdown interrupts a wait.
        """
        clocks = self._clocks
        budget = self._api.max_requests_per_minute
        first = self.limit.admit(budget, max_pause=self._api.timeout)
        assert first is not None  # with no `latest`, it waits for its turn however long
        sent = first
        deadline = clocks.monotonic() + self._api.timeout
        body = {"service_key": self._api.service_key.reveal(), **request.body}
        attempt = 0
        while True:
            try:
                record = self._attempt(request, body, parse, deadline)
            except ApiError as err:
                self.limit.done(sent)
                on_attempt(err.reason.value)
                delay = self._wait_after(err, attempt)
                if err.key_wait:
                    self.limit.pause(delay)
                if not self._worth_retrying(err, attempt, delay, deadline):
                    raise
                log.debug(
                    "retrying",
                    extra={
                        "group": request.target or "(whole team)",
                        "reason": err.reason.value,
                        "wait": f"{delay:.3f}s",
                    },
                )
                if clocks.wait(delay):
                    raise Stopped from None
                retry = self.limit.admit(budget, latest=deadline - 0.05)
                if retry is None:
                    raise  # no turn for a retry inside the deadline
                sent, attempt = retry, attempt + 1
                continue
            except BaseException:
                self.limit.done(sent)
                raise
            self.limit.done(sent)
            on_attempt(SUCCESS)
            return record

    def _wait_after(self, err: ApiError, attempt: int) -> float:
        """What the upstream asked (Retry-After), else exponential backoff with jitter."""
        if err.retry_after is not None:
            return err.retry_after
        step = min(_BACKOFF_CAP, self._api.retry_backoff * 2.0**attempt)
        return step * (0.5 + self._clocks.random() / 2)

    def _worth_retrying(self, err: ApiError, attempt: int, delay: float, deadline: float) -> bool:
        if err.reason not in _RETRYABLE or attempt >= self._api.retries:
            return False
        # Only retry when the wait leaves time for another attempt inside the deadline.
        return self._clocks.monotonic() + delay < deadline - 0.05

    def _attempt(
        self, request: Request, body: dict[str, Any], parse: Callable[[Any], T], deadline: float
    ) -> T:
        remaining = deadline - self._clocks.monotonic()
        if remaining <= 0:
            raise ApiError(Reason.TIMEOUT, f"no answer within {self._api.timeout:g}s")
        watchdog = _Watchdog(remaining)
        answered = False
        try:
            with (
                watchdog,
                self._http.stream(
                    "POST",
                    self._url + request.method,
                    json=body,
                    timeout=httpx.Timeout(remaining, connect=min(remaining, _CONNECT_TIMEOUT)),
                    extensions={"trace": watchdog.trace},
                ) as response,
            ):
                answered = True
                content = self._read(response, deadline)
        except httpx.DecodingError:
            raise ApiError(Reason.INVALID_RESPONSE, "reply body cannot be decompressed") from None
        except httpx.TimeoutException:
            raise ApiError(Reason.TIMEOUT, f"no answer within {self._api.timeout:g}s") from None
        except httpx.TransportError as err:
            if watchdog.fired:
                what = "reply not complete" if answered else "no answer"
                raise ApiError(Reason.TIMEOUT, f"{what} within {self._api.timeout:g}s") from None
            raise ApiError(
                Reason.CONNECTION, f"cannot reach {self._api.url}: {self._clean(str(err))}"
            ) from None
        return self._decode(response, content, parse, deadline, request)

    def _read(self, response: httpx.Response, deadline: float) -> bytearray:
        """The reply's body, in one growing buffer: chunks and their join would hold it twice."""
        limit = self._api.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(Reason.TOO_LARGE, f"reply of {declared} bytes exceeds the {limit} limit")
        body = bytearray()
        # Decoded bytes are what costs memory, so the limit applies after decompression.
        for chunk in response.iter_bytes():
            if len(body) + len(chunk) > limit:
                raise ApiError(Reason.TOO_LARGE, f"reply exceeds the {limit} byte limit")
            if self._clocks.monotonic() > deadline:
                raise ApiError(Reason.TIMEOUT, f"reply not complete within {self._api.timeout:g}s")
            body += chunk
        return body

    def _decode(
        self,
        response: httpx.Response,
        content: bytearray,
        parse: Callable[[Any], T],
        deadline: float,
        request: Request,
    ) -> T:
        """The reply's JSON, parsed; decoding and parsing count against the deadline too.
        Consumes `content`: its bytes are let go once decoded to text."""
        status = response.status_code
        document = _json(content, request.json_hook)
        self._in_time(deadline, "decoded")
        # The one place the upstream's `error` field is read: it fails any call that carries it.
        failed = isinstance(document, dict) and document.get("error") not in (None, "")
        upstream = self._clean(str(document["error"])) if failed else ""
        if status >= 300:
            raise self._status_error(response, upstream, request.permission)
        if document is _NOT_JSON:
            kind = self._clean(
                response.headers.get("content-type", "no content type").split(";")[0]
            )
            raise ApiError(Reason.INVALID_RESPONSE, f"reply is not valid JSON ({kind})")
        try:
            record = parse(document)
        except MalformedResponse as err:
            raise ApiError(Reason.INVALID_RESPONSE, str(err)) from None
        self._in_time(deadline, "read")
        if failed:
            raise ApiError(Reason.API_ERROR, f"the API answered with an error: {upstream}")
        return record

    def _in_time(self, deadline: float, done: str) -> None:
        if self._clocks.monotonic() > deadline:
            raise ApiError(Reason.TIMEOUT, f"reply not {done} within {self._api.timeout:g}s")

    def _status_error(self, response: httpx.Response, upstream: str, permission: str) -> ApiError:
        status = response.status_code
        said = f": {upstream}" if upstream else ""
        if status in (401, 403):
            return ApiError(
                Reason.AUTH,
                f"HTTP {status}, the service key was refused (check it has {permission}){said}",
            )
        if status == 404:
            # Not only groups: a billing method or a path the server does not serve is a 404 too.
            return ApiError(
                Reason.NOT_FOUND,
                f"HTTP 404, not found (a group the team does not have, or a method this URL does"
                f" not serve){said}",
            )
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._clocks.wall())
        if status == 429:
            return ApiError(
                Reason.RATE_LIMITED, f"HTTP 429, rate limited{said}", retry_after, key_wait=True
            )
        if status >= 500:
            # A 503 that says when to come back is the key's limit too.
            key_wait = status == 503 and retry_after is not None
            return ApiError(Reason.SERVER_ERROR, f"HTTP {status}{said}", retry_after, key_wait)
        return ApiError(Reason.HTTP_ERROR, f"HTTP {status}{said}")

    def _clean(self, text: str) -> str:
        """Upstream or library text made safe for one log line: no secrets, no newlines, short."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        text = _TOKENISH.sub("<redacted>", text)
        text = " ".join(text.split())
        return text[:200] + ("..." if len(text) > 200 else "")


class _Watchdog:
    """Cuts an attempt off at the deadline: read timeouts bound each read, not headers or a body
    that drip in just under them, so a timer shuts the socket down instead. httpcore's trace
    hands over the socket as soon as it is connected (and again once TLS wraps it)."""

    def __init__(self, seconds: float) -> None:
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self.fired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        with self._lock:
            self._socket = info["return_value"].get_extra_info("socket")
            fired = self.fired
        if fired:  # the deadline passed while connecting
            self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


_NOT_JSON = object()


def _json(
    content: bytearray, hook: Callable[[], Callable[[dict[str, Any]], Any]] | None = None
) -> Any:
    """The body's JSON, as json.loads reads bytes, its objects made by a new `hook()` if any;
    the body is emptied once it is text, so a big reply is not held as bytes, text and objects
    at once."""
    try:
        text = content.decode(json.detect_encoding(content), "surrogatepass")
    except UnicodeDecodeError:
        return _NOT_JSON
    finally:
        content.clear()
    try:
        return json.loads(text, object_hook=hook() if hook else None)
    except (ValueError, RecursionError):
        return _NOT_JSON
