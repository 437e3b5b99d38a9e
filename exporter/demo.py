"""A complete fake Windsurf API on loopback: a synthetic team, real HTTP, switchable faults.

`--demo` serves it to the exporter, the tests use it as their upstream, and the benchmark sizes
it up to tens of thousands of users. Every request is recorded so tests can prove what the
exporter really sent (and when).
"""

from __future__ import annotations

import calendar
import gzip
import json
import random
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.sources.values import parse_time

DEMO_SERVICE_KEY = "demo-service-key-not-secret"
DEMO_GROUPS = ("engineering", "research", "design", "sales", "support")
DAY = 86400.0

_FIRST = (
    "Alice",
    "Bob",
    "Chen",
    "Dana",
    "Émile",
    "Fatima",
    "Grzegorz",
    "Hana",
    "Ivan",
    "Jürgen",
    "Kofi",
    "Léa",
    "Mateo",
    "Nadia",
    "Olu",
    "Priya",
    "Quinn",
    "Rosa",
    "Søren",
    "Tomás",
    "Uma",
    "Vikram",
    "Wen",
    "Xavier",
    "Yuki",
    "Zoë",
)
_LAST = (
    "Smith",
    "O'Brien",
    "García",
    "Müller",
    "Nakamura",
    "Kowalski",
    "Okafor",
    "Dubois",
    "Rossi",
    "Novák",
    "Andersen",
    "Haddad",
    "Silva",
    "Kim",
    "Patel",
    "Ivanova",
)


@dataclass(frozen=True)
class Member:
    """A synthetic user: fixed traits; the times are derived from them at request time."""

    name: str
    email: str
    groups: tuple[str, ...]
    profile: str  # heavy, regular, occasional, idle, never, disabled, pending, new
    role: str
    signup_days_ago: float
    idle_days: float  # how long since the last use, for idle profiles
    usage_rate: float  # fraction of days active
    credits_per_day: float
    features: tuple[bool, bool, bool]  # autocomplete, chat, command ever used
    api_key: str


def synthetic_team(
    size: int = 300, groups: Iterable[str] = DEMO_GROUPS, seed: int = 7
) -> list[Member]:
    """A realistic, deterministic team: most seats used, some idle, a few never used, disabled,
    pending or brand new; about one in ten users in a second group."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    groups = tuple(groups)
    profiles = (
        ["heavy"] * 20
        + ["regular"] * 35
        + ["occasional"] * 15
        + ["idle"] * 12
        + ["never"] * 6
        + ["disabled"] * 4
        + ["pending"] * 4
        + ["new"] * 4
    )
    members = []
    for index in range(size):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        profile = (
            profiles[index % len(profiles)]
            if index >= 8
            else (
                "heavy",
                "regular",
                "idle",
                "never",
                "disabled",
                "pending",
                "new",
                "occasional",
            )[index]
        )
        home = groups[index % len(groups)] if groups else ""
        extra = groups[(index + 1) % len(groups)] if groups and index % 10 == 3 else None
        member_groups = (home, extra) if extra and extra != home else (home,)
        signup = rng.uniform(1, 3) if profile == "new" else rng.uniform(60, 700)
        members.append(
            Member(
                name=f"{first} {last}",
                email=f"{_ascii(first)}.{_ascii(last)}.{index}@example.com",
                groups=member_groups,
                profile=profile,
                role="admin" if rng.random() < 0.05 else "member",
                signup_days_ago=signup,
                idle_days=rng.uniform(20, 120) if profile in ("idle", "disabled") else 0.0,
                usage_rate={"heavy": 0.9, "regular": 0.6, "occasional": 0.2}.get(profile, 0.0),
                credits_per_day={
                    "heavy": rng.uniform(150, 600),
                    "regular": rng.uniform(20, 150),
                    "occasional": rng.uniform(1, 20),
                }.get(profile, 0.0),
                features=(True, rng.random() < 0.8, rng.random() < 0.5),
                api_key=f"{rng.getrandbits(128):032x}",
            )
        )
    return members


def _ascii(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.lower())
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


def _rfc3339(timestamp: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{whole}.{int(timestamp % 1 * 1e6):06d}Z"


def billing_cycle(now: float) -> tuple[float, float]:
    """The calendar month around `now`, as Windsurf bills."""
    tm = time.gmtime(now)
    year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    start = calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0, 0, 0, 0))
    return float(start), float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


def member_row(
    member: Member, now: float, window: tuple[float, float], base: float, cycle_start: float
) -> dict[str, Any]:
    """The UserPageAnalytics row for a member at `now`, omitting what protobuf JSON omits."""
    signup = base - member.signup_days_ago * DAY
    row: dict[str, Any] = {
        "name": member.name,
        "email": member.email,
        "lastUpdateTime": _rfc3339(now - 600),
        "apiKey": member.api_key,
        "role": member.role,
        "signupTime": _rfc3339(signup),
        "teamStatus": "USER_TEAM_STATUS_PENDING"
        if member.profile == "pending"
        else "USER_TEAM_STATUS_APPROVED",
    }
    if member.profile == "disabled":
        row["disableCodeium"] = True
    if member.usage_rate:
        # Active users keep working: their last use trails the clock by a few minutes.
        offset = zlib.crc32(member.email.encode()) % 3600 + 60
        lasts = (now - offset, now - offset * 7, now - offset * 31)
        start, end = window
        span = max(0.0, (min(end, now) - max(start, signup)) / DAY)
        row["activeDays"] = round(span * member.usage_rate)
        used_days = (now - max(cycle_start, signup)) / DAY
        row["promptCreditsUsed"] = str(round(used_days * member.credits_per_day))
    elif member.idle_days:
        last = base - member.idle_days * DAY
        lasts = (last, last - 3 * DAY, last - 9 * DAY)
    else:
        return row
    for used, key, when in zip(
        member.features,
        ("lastAutocompleteUsageTime", "lastChatUsageTime", "lastCommandUsageTime"),
        lasts,
        strict=True,
    ):
        if used:
            row[key] = _rfc3339(when)
    return row


@dataclass
class Fault:
    """What the fake API does instead of answering normally, for the next `times` requests
    (forever when None)."""

    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # a 200 (or `status`) reply whose JSON carries `error`
    delay: float = 0.0  # hang this long before answering
    drop: bool = False  # close the connection without a reply
    drip: float = 0.0  # send the body a few bytes at a time, this many seconds apart
    drip_head: bool = False  # with drip, send the status line and headers that way too
    times: int | None = None


@dataclass(frozen=True)
class Recorded:
    """One request as the fake API saw it."""

    at: float
    group: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeWindsurf:
    """The fake API server; `start()` binds 127.0.0.1 on a free port unless told otherwise."""

    def __init__(
        self,
        team: list[Member] | None = None,
        service_key: str = DEMO_SERVICE_KEY,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.team = synthetic_team() if team is None else team
        self.service_key = service_key
        self.clock = clock
        self.base = clock()
        self.groups = sorted({g for m in self.team for g in m.groups})
        self.requests: list[Recorded] = []
        self.overrides: dict[str, list[dict[str, Any]]] = {}
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _FakeHandler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeWindsurf:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="fake-windsurf", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeWindsurf:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(self, group: str, fault: Fault | None) -> None:
        """Make requests for `group` ("" for the whole team, "*" for all) misbehave."""
        with self._lock:
            if fault is None:
                self._faults.pop(group, None)
            else:
                self._faults[group] = fault

    def requests_for(self, group: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.group == group]

    def _take_fault(self, group: str) -> Fault | None:
        with self._lock:
            key = group if group in self._faults else "*" if "*" in self._faults else None
            if key is None:
                return None
            fault = self._faults[key]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The reply to a well-formed request body: status and JSON document."""
        if body.get("service_key") != self.service_key:
            return 401, {"error": "invalid service key or missing Teams Read-only permission"}
        now = self.clock()
        window = []
        for key, default in (("start_timestamp", now - 365 * DAY), ("end_timestamp", now)):
            if key in body:
                parsed = parse_time(body[key])
                if parsed is None:
                    return 400, {"error": f"invalid timestamp format for {key}"}
                window.append(parsed)
            else:
                window.append(default)
        group = body.get("group_name") or ""
        if group and group not in self.groups:
            return 404, {"error": f"group not found: {group}"}
        start, end = billing_cycle(now)
        if group in self.overrides:
            rows = self.overrides[group]
        else:
            rows = [
                member_row(m, now, (window[0], window[1]), self.base, start)
                for m in self.team
                if not group or group in m.groups
            ]
        document: dict[str, Any] = {
            "billingCycleStart": _rfc3339(start),
            "billingCycleEnd": _rfc3339(end),
        }
        if rows:
            document["userTableStats"] = rows
        return 200, document


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connects when many groups poll at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (e.g. refusing a too-large reply) is normal here, not news."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's, taken over to drip the head

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake: FakeWindsurf = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            self._reply(400, json.dumps({"error": "request body is not a JSON object"}).encode())
            return
        group = str(body.get("group_name") or "")
        with fake._lock:
            fake.requests.append(Recorded(fake.clock(), group, body, dict(self.headers)))
        if self.path != "/api/v1/UserPageAnalytics":
            self._reply(404, b'{"error": "not found"}')
            return
        fault = fake._take_fault(group)
        if fault is not None:
            self._fault(fake, fault, body)
            return
        status, document = fake.respond(body)
        self._reply(status, json.dumps(document).encode())

    def _fault(self, fake: FakeWindsurf, fault: Fault, body: dict[str, Any]) -> None:
        if fault.delay and fake._stopping.wait(fault.delay):
            return
        if fault.drop:
            self.close_connection = True
            return
        if fault.body is not None:
            payload = fault.body
        elif fault.error is not None:
            payload = json.dumps({"error": fault.error}).encode()
        elif fault.status != 200:
            payload = json.dumps({"error": _phrase(fault.status)}).encode()
        else:
            payload = json.dumps(fake.respond(body)[1]).encode()
        self._reply(
            fault.status, payload, fault.content_type, fault.headers, fault.drip, fault.drip_head
        )

    def _reply(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        drip: float = 0.0,
        drip_head: bool = False,
    ) -> None:
        compress = (
            not drip and "gzip" in self.headers.get("Accept-Encoding", "") and len(payload) > 1024
        )
        if compress:
            payload = gzip.compress(payload, compresslevel=1)
        try:
            self.send_response(status, _phrase(status))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if compress:
                self.send_header("Content-Encoding", "gzip")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if drip_head:  # end_headers() without its write: the head drips with the body
                self._headers_buffer.append(b"\r\n")
                payload = b"".join(self._headers_buffer) + payload
                self._headers_buffer = []
            else:
                self.end_headers()
            if not drip:
                self.wfile.write(payload)
            for start in range(0, len(payload) if drip else 0, 16):
                self.wfile.write(payload[start : start + 16])
                self.wfile.flush()
                if self.server.fake._stopping.wait(drip):  # type: ignore[attr-defined]
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass
