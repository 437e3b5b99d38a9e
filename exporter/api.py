"""One call of any v1 method: request, deadline, size limit, retries, Retry-After, the upstream's
`error` field, and the few reasons a call can fail, each with a message that is safe to log.
The transport knows no endpoint: the caller's `parse` turns the JSON into its record."""

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
    """A failed call; `str()` is one safe line, `retry_after` the wait the upstream asked for."""

    def __init__(self, reason: Reason, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

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
    ) -> None:
        self._api = api
        self._clocks = clocks or Clocks()
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

        Raises ApiError with the last failure, or Stopped when a shutdown interrupts a wait.
        """
        clocks = self._clocks
        deadline = clocks.monotonic() + self._api.timeout
        body = {"service_key": self._api.service_key.reveal(), **request.body}
        attempt = 0
        while True:
            try:
                record = self._attempt(request.method, body, parse, deadline)
            except ApiError as err:
                on_attempt(err.reason.value)
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
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
                attempt += 1
                continue
            on_attempt(SUCCESS)
            return record

    def _retry_delay(self, err: ApiError, attempt: int, deadline: float) -> float | None:
        if err.reason not in _RETRYABLE or attempt >= self._api.retries:
            return None
        if err.retry_after is not None:
            delay = err.retry_after
        else:
            step = min(_BACKOFF_CAP, self._api.retry_backoff * 2**attempt)
            delay = step * (0.5 + self._clocks.random() / 2)
        # Only retry when the wait leaves time for another attempt inside the deadline.
        if self._clocks.monotonic() + delay >= deadline - 0.05:
            return None
        return delay

    def _attempt(
        self, method: str, body: dict[str, Any], parse: Callable[[Any], T], deadline: float
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
                    self._url + method,
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
        return self._decode(response, content, parse, deadline)

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        limit = self._api.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(Reason.TOO_LARGE, f"reply of {declared} bytes exceeds the {limit} limit")
        chunks = []
        size = 0
        # Decoded bytes are what costs memory, so the limit applies after decompression.
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise ApiError(Reason.TOO_LARGE, f"reply exceeds the {limit} byte limit")
            if self._clocks.monotonic() > deadline:
                raise ApiError(Reason.TIMEOUT, f"reply not complete within {self._api.timeout:g}s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(
        self, response: httpx.Response, content: bytes, parse: Callable[[Any], T], deadline: float
    ) -> T:
        """The reply's JSON, parsed; decoding and parsing count against the deadline too."""
        status = response.status_code
        document = _json(content)
        self._in_time(deadline, "decoded")
        # The one place the upstream's `error` field is read: it fails any call that carries it.
        failed = isinstance(document, dict) and document.get("error") not in (None, "")
        upstream = self._clean(str(document["error"])) if failed else ""
        if status >= 300:
            raise self._status_error(response, upstream)
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

    def _status_error(self, response: httpx.Response, upstream: str) -> ApiError:
        status = response.status_code
        said = f": {upstream}" if upstream else ""
        if status in (401, 403):
            return ApiError(
                Reason.AUTH,
                f"HTTP {status}, the service key was refused (check it has Teams Read-only){said}",
            )
        if status == 404:
            return ApiError(Reason.NOT_FOUND, f"HTTP 404, group not found{said}")
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._clocks.wall())
        if status == 429:
            return ApiError(Reason.RATE_LIMITED, f"HTTP 429, rate limited{said}", retry_after)
        if status >= 500:
            return ApiError(Reason.SERVER_ERROR, f"HTTP {status}{said}", retry_after)
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


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NOT_JSON
