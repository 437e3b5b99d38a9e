"""A complete fake Windsurf API on loopback: a synthetic team, real HTTP, switchable faults.

`--demo` serves it to the exporter, the tests use it as their upstream, and the benchmark sizes
it up to tens of thousands of users. Every request is recorded so tests can prove what the
exporter really sent (and when).

Each person lives one story: a history of the days they used autocomplete, chat and command
(Cascade days are some of the chat days), anchored at the moment the fake starts and running on
into the future, so a demo left running keeps its heavy users busy and its idle seats idle.
Every reply is derived from those days at the fake's clock: `activeDays` for any window, the
last-use times, the billing cycle's prompt credits, CascadeAnalytics and the credit balance.
"""

from __future__ import annotations

import calendar
import functools
import gzip
import json
import math
import random
import sys
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEMO_SERVICE_KEY = "demo-service-key-not-secret"
DEMO_GROUPS = ("engineering", "research", "design", "sales", "support")
DAY = 86400.0
APPROVED = "USER_TEAM_STATUS_APPROVED"
PENDING = "USER_TEAM_STATUS_PENDING"
PAST_DAYS = 800  # history before the fake's start: longer than any signup and a year's window
FUTURE_DAYS = 400  # history after it: a demo left running for a year still looks alive
CASCADE_SHARE = 0.85  # of a person's chat days, the share that were Cascade conversations
SEAT_CREDITS = 500  # prompt credits per seat per billing cycle (GetTeamCreditBalance)
ADDON_CAP = 200  # add-on credits one user may use per cycle (GetUsageConfig, team level)
USER_PAGE = "UserPageAnalytics"
CASCADE = "CascadeAnalytics"
CREDIT_BALANCE = "GetTeamCreditBalance"
USAGE_CONFIG = "GetUsageConfig"
METHODS = (USER_PAGE, CASCADE, CREDIT_BALANCE, USAGE_CONFIG)  # at /api/v1/<method>
BILLING_METHODS = frozenset({CREDIT_BALANCE, USAGE_CONFIG})
_FEATURE_FIELDS = ("lastAutocompleteUsageTime", "lastChatUsageTime", "lastCommandUsageTime")

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
    "Ægir",
    "Łucja",
    "Øystein",
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
    "Weiß",
    "Østergaard",
    "Łukasiewicz",
    "Đorđević",
)
# Letters NFKD does not reduce to ASCII, spelled as their languages do in addresses.
_LETTERS = str.maketrans(
    {
        "ß": "ss",
        "ø": "o",
        "æ": "ae",
        "œ": "oe",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "\u0131": "i",  # dotless i
        "ħ": "h",
    }
)


def transliterate(name: str) -> str:
    """A name as the local part of an email: lower-case ASCII letters and digits only."""
    decomposed = unicodedata.normalize("NFKD", name.lower().translate(_LETTERS))
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


@dataclass(frozen=True)
class Profile:
    """How a kind of person uses Windsurf; days are counted back from the fake's start."""

    rate: float  # share of days in use, while in use at all
    signup: tuple[float, float] = (60, 700)  # joined this many days before the start
    stopped: tuple[int, int] | None = None  # last use this many days before the start
    credits: tuple[float, float] = (100, 500)  # hundredths of a credit per Cascade day
    chat: tuple[float, float] = (0.3, 0.9)  # share of the days in use with chat
    weekdays_only: bool = False
    status: str = APPROVED
    disabled: bool = False


PROFILES = {
    "power": Profile(0.95, credits=(3000, 5000), chat=(0.85, 0.95)),  # beyond a seat's credits
    "heavy": Profile(0.92, credits=(600, 1600), chat=(0.7, 0.95)),
    "weekday": Profile(0.9, credits=(150, 600), weekdays_only=True),
    "regular": Profile(0.6, credits=(100, 450)),
    "occasional": Profile(0.15, credits=(50, 300)),
    "fading": Profile(0.6, stopped=(8, 25)),  # active in the last 30 days, not in the last 7
    "idle": Profile(0.5, stopped=(20, 120)),
    "never": Profile(0.0),
    "pending": Profile(0.0, signup=(1, 40), status=PENDING),  # invited, not yet joined
    "disabled": Profile(0.4, stopped=(20, 120), disabled=True),
    "new": Profile(0.7, signup=(2, 25)),  # inside the 30-day grace period, already at work
    "new-unused": Profile(0.0, signup=(2, 25)),  # inside it, not started yet
}
# One hundred people of a synthetic team, by profile; shuffled per hundred.
_MIX = {
    "power": 2,
    "heavy": 10,
    "weekday": 20,
    "regular": 25,
    "occasional": 12,
    "fading": 7,
    "idle": 7,
    "never": 4,
    "pending": 4,
    "disabled": 3,
    "new": 4,
    "new-unused": 2,
}
# The first people of any team, so that even a tiny one has every kind.
_FIRST_PROFILES = (
    "heavy",
    "power",
    "weekday",
    "idle",
    "never",
    "disabled",
    "pending",
    "new",
    "fading",
    "occasional",
    "regular",
    "new-unused",
)


@dataclass(frozen=True)
class Member:
    """A synthetic person: fixed traits; their days of use are derived from them (`Activity`)."""

    name: str
    email: str
    groups: tuple[str, ...]  # empty: in no group, seen only by whole-team requests
    profile: str
    role: str
    signup_days_ago: float
    stopped_days: int | None  # last use this many days before the fake's start; None: ongoing
    shares: tuple[float, float, float]  # of those days, the share with autocomplete/chat/command
    credits_per_day: float  # hundredths of a prompt credit on a typical Cascade day
    seed: int
    api_key: str

    @property
    def team_status(self) -> str:
        return PROFILES[self.profile].status

    @property
    def disabled(self) -> bool:
        return PROFILES[self.profile].disabled

    @property
    def billable(self) -> bool:
        """A seat paid for: approved and not disabled."""
        return self.team_status == APPROVED and not self.disabled


def _profiles(size: int, rng: random.Random) -> list[str]:
    mix = [name for name, count in _MIX.items() for _ in range(count)]
    profiles = list(_FIRST_PROFILES[:size])
    while len(profiles) < size:
        rng.shuffle(mix)
        profiles += mix
    return profiles[:size]


def _shares(profile: Profile, rng: random.Random) -> tuple[float, float, float]:
    chat = rng.uniform(*profile.chat) if profile.chat[0] >= 0.5 or rng.random() > 0.15 else 0.0
    autocomplete = 0.95 if chat == 0.0 or rng.random() > 0.1 else 0.0
    command = rng.uniform(0.1, 0.5) if rng.random() < 0.5 else 0.0
    return autocomplete, chat, command


def synthetic_team(
    size: int = 300, groups: Iterable[str] = DEMO_GROUPS, seed: int = 7
) -> list[Member]:
    """A realistic, deterministic team (the same seed gives the same people): mostly in use,
    some fading or idle, a few never used, disabled, pending or brand new; about one in ten
    people in a second group and one in twenty in none."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    groups = tuple(groups)
    members: list[Member] = []
    taken: Counter[str] = Counter()
    grouped = 0
    for index, name in enumerate(_profiles(size, rng)):
        profile = PROFILES[name]
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        local = f"{transliterate(first)}.{transliterate(last)}"
        taken[local] += 1
        if taken[local] > 1:
            local += str(taken[local])
        member_groups: tuple[str, ...] = ()
        if groups and index % 20 != 19:
            home, extra = groups[grouped % len(groups)], groups[(grouped + 1) % len(groups)]
            member_groups = (home, extra) if index % 10 == 3 and extra != home else (home,)
            grouped += 1
        signup = rng.uniform(*profile.signup)
        # Stopped using it at least a day after joining.
        stopped = min(rng.randint(*profile.stopped), int(signup) - 2) if profile.stopped else None
        members.append(
            Member(
                name=f"{first} {last}",
                email=f"{local}@example.com",
                groups=member_groups,
                profile=name,
                role="admin" if rng.random() < 0.05 else "member",
                signup_days_ago=signup,
                stopped_days=stopped,
                shares=_shares(profile, rng),
                credits_per_day=rng.uniform(*profile.credits),
                seed=rng.getrandbits(64),
                api_key=f"{rng.getrandbits(128):032x}",
            )
        )
    return members


def _day(timestamp: float) -> int:
    """The UTC day (days since the epoch) a moment falls on."""
    return math.floor(timestamp / DAY)


def _mix(*values: int) -> int:
    """A cheap, stable 64-bit hash of integers (splitmix64 steps): per-day variety without
    storing a number per person and day."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = ((h ^ value) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


@functools.cache
def _coin(threshold: int) -> bytes:
    """A byte -> '1' with probability threshold/256, else '0' (a table for bytes.translate)."""
    return bytes(0x31 if b < threshold else 0x30 for b in range(256))


def _days_drawn(rng: random.Random, share: float, size: int) -> int:
    """A bit per day, each set with probability `share`: one random byte per day, in C."""
    threshold = round(share * 256)
    if threshold <= 0:
        return 0
    return int(rng.randbytes(size).translate(_coin(threshold))[::-1], 2)


def _span(first: int, last: int) -> int:
    """Bits first..last (indexes, inclusive) set."""
    first = max(first, 0)
    return ((1 << (last - first + 1)) - 1) << first if last >= first else 0


@functools.cache
def _weekdays(origin: int, size: int) -> int:
    """Bits set for Monday to Friday (1970-01-01, day 0, was a Thursday)."""
    return int("".join("1" if (origin + i + 3) % 7 < 5 else "0" for i in range(size))[::-1], 2)


def _bits(mask: int, first: int, last: int) -> Iterator[int]:
    """The set bit indexes of `mask` in first..last, ascending."""
    window = (mask >> first) & ((1 << (last - first + 1)) - 1) if last >= first else 0
    while window:
        low = window & -window
        yield first + low.bit_length() - 1
        window ^= low


# Cascade: paid models share a day's prompt credits; the free one uses none.
_PAID_MODELS = (
    "claude-sonnet-4.5",
    "gpt-5 (medium reasoning)",
    'Claude Sonnet 4.5 "Thinking"',
    "gemini-2.5-pro",
)
_FREE_MODEL = "swe-1.5"
_MODES = (
    ("CONVERSATIONAL_PLANNER_MODE_DEFAULT", 75),
    ("CONVERSATIONAL_PLANNER_MODE_READ_ONLY", 19),
    ("CONVERSATIONAL_PLANNER_MODE_NO_TOOL", 4),
    ("UNKNOWN", 2),
)
_IDES = (("editor", 70), ("jetbrains", 20), ("cli", 10))
_IDE_TYPES = frozenset(ide for ide, _ in _IDES)
_WRITE_MODE = _MODES[0][0]
# Tools by uses per message on average; the write-only ones only in the default (write) mode.
_TOOLS = (
    ("VIEW_FILE", 2.0, False),
    ("CODE_ACTION", 1.2, True),
    ("GREP_SEARCH", 0.8, False),
    ("RUN_COMMAND", 0.5, True),
    ("FIND", 0.4, False),
    ("LIST_DIRECTORY", 0.4, False),
    ("VIEW_FILE_OUTLINE", 0.3, False),
    ("PROPOSE_CODE", 0.2, True),
    ("MQUERY", 0.1, False),
    ("MCP_TOOL", 0.1, False),
    ("SEARCH_WEB", 0.05, False),
    ("MEMORY", 0.05, False),
    ("WORKFLOWS_USED", 0.03, True),
    ("DEPLOY_WEB_APP", 0.01, True),
    ("PROXY_WEB_SERVER", 0.01, True),
)


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass(frozen=True)
class Conversation:
    """A Cascade conversation: what stays the same on every day it runs."""

    cascade_id: str
    model: str
    mode: str
    ide: str


@dataclass(frozen=True)
class Run:
    """One conversation's activity on one day: a cascadeRuns row, plus its lines and tools."""

    day: int
    conversation: Conversation
    messages: int
    prompts: int  # hundredths of a prompt credit
    lines_suggested: int
    lines_accepted: int
    tools: tuple[tuple[str, int], ...]


def _conversation(seed: int, free: bool) -> Conversation:
    """A conversation's fixed traits, from its seed; `free` lets it use the free model."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data
    uid = f"{rng.getrandbits(128):032x}"
    return Conversation(
        cascade_id=f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}",
        model=rng.choice((*_PAID_MODELS, _FREE_MODEL) if free else _PAID_MODELS),
        mode=_pick(rng, _MODES),
        ide=_pick(rng, _IDES),
    )


def _run(
    day: int, conversation: Conversation, messages: int, prompts: int, rng: random.Random
) -> Run:
    """Lines come from writing in an editor; tools from any mode but no-tool, not from the CLI
    (which reports runs only)."""
    in_editor = conversation.ide != "cli"
    writes = in_editor and conversation.mode == _WRITE_MODE
    suggested = messages * rng.randint(3, 40) if writes else 0
    accepted = round(suggested * rng.choice((0.0, 0.3, 0.5, 0.7, 0.9)))
    tools: tuple[tuple[str, int], ...] = ()
    if in_editor and conversation.mode != "CONVERSATIONAL_PLANNER_MODE_NO_TOOL":
        counts = (
            (tool, int(messages * per_message * 2 * rng.random()))
            for tool, per_message, write_only in _TOOLS
            if writes or not write_only
        )
        tools = tuple((tool, count) for tool, count in counts if count)
    return Run(day, conversation, messages, prompts, suggested, accepted, tools)


class Activity:
    """One person's days of use, anchored at the fake's start: every number the fake API
    reports about them is derived from these bits (bit i is UTC day `origin + i`).

    On a day in use a person works from `start` to their feature's end (seconds after
    midnight); the clock stops their day at `now - lag`, so an active user's last use trails
    the clock by a few minutes and a day that has not begun yet has no use.
    """

    __slots__ = (
        "active",
        "cascade",
        "conversation_days",
        "ends",
        "features",
        "lag",
        "member",
        "origin",
        "start",
    )

    def __init__(self, member: Member, base: float) -> None:
        rng = random.Random(member.seed)  # noqa: S311 - synthetic data
        self.member = member
        base_day = _day(base)
        self.origin = base_day - PAST_DAYS
        size = PAST_DAYS + FUTURE_DAYS
        first = _day(base - member.signup_days_ago * DAY) + 1 - self.origin
        stopped = member.stopped_days
        last = size - 1 if stopped is None else base_day - stopped - self.origin
        profile = PROFILES[member.profile]
        days = _days_drawn(rng, profile.rate, size) & _span(first, last)
        if profile.weekdays_only:
            days &= _weekdays(self.origin, size)
        features = [days & _days_drawn(rng, share, size) for share in member.shares]
        if stopped is not None and profile.rate and last >= first:
            used = next(i for i, share in enumerate(member.shares) if share)
            features[used] |= 1 << last  # their last day in use is the one their profile says
        self.features = tuple(features)
        self.active = features[0] | features[1] | features[2]
        self.cascade = features[1] & _days_drawn(rng, CASCADE_SHARE, size)
        self.start = rng.uniform(0, 14 * 3600)
        length = rng.uniform(4 * 3600, 10 * 3600)
        self.ends = tuple(self.start + length * f for f in (1.0, rng.uniform(0.5, 1), 0.9))
        self.lag = rng.uniform(60, 900)
        self.conversation_days = rng.randint(1, 4)

    def _used(self, day: int, feature: int, start: float, end: float, cap: float) -> bool:
        """Whether `feature` was used on `day` at some moment in [start, end), before `cap`."""
        if not self.features[feature] >> (day - self.origin) & 1:
            return False
        begin = max(day * DAY + self.start, start)
        return begin <= min(day * DAY + self.ends[feature], cap) and begin < end

    def active_days(self, start: float, end: float, now: float) -> int:
        """Days with some use inside [start, end): the API's activeDays for that window."""
        cap = now - self.lag
        first = max(_day(start), self.origin)
        last = min(_day(min(end, cap)), self.origin + PAST_DAYS + FUTURE_DAYS - 1)
        if last < first:
            return 0
        inner = (self.active >> (first + 1 - self.origin)) & ((1 << max(last - first - 1, 0)) - 1)
        edges = sum(any(self._used(d, f, start, end, cap) for f in range(3)) for d in {first, last})
        return inner.bit_count() + edges

    def last_use(self, feature: int, now: float) -> float | None:
        """When `feature` was last used by `now`; None if never."""
        cap = now - self.lag
        limit = _day(cap) - self.origin
        mask = self.features[feature] & ((1 << (limit + 1)) - 1) if limit >= 0 else 0
        while mask:
            index = mask.bit_length() - 1
            day = self.origin + index
            if day * DAY + self.start <= cap:
                return min(day * DAY + self.ends[feature], cap)
            mask ^= 1 << index  # today, before their day began
        return None

    def last_any_use(self, now: float) -> float | None:
        uses = [t for t in (self.last_use(f, now) for f in range(3)) if t is not None]
        return max(uses) if uses else None

    def cascade_days(self, first: int, last: int, now: float) -> Iterator[int]:
        """The days first..last (UTC day numbers) with Cascade use by `now`."""
        cap = now - self.lag
        last = min(last, _day(cap))
        for index in _bits(self.cascade, max(first - self.origin, 0), last - self.origin):
            day = self.origin + index
            if day * DAY + self.start <= cap:
                yield day

    def prompts(self, day: int) -> int:
        """Hundredths of a prompt credit used on a Cascade day: around the person's usual."""
        return round(
            self.member.credits_per_day * (0.5 + _mix(self.member.seed, day) % 1000 / 1000)
        )

    def credits(self, since: float, now: float) -> int:
        """Prompt credits (in hundredths) used from the UTC day of `since` up to `now`: the
        billing cycle's promptCreditsUsed when `since` is its start."""
        return sum(self.prompts(d) for d in self.cascade_days(_day(since), _day(now), now))

    def runs(self, day: int) -> list[Run]:
        """The day's conversations: one that may span days (the same for a block of
        `conversation_days` days), sometimes a second one of the day's own. The paid ones share
        the day's prompt credits in proportion to their messages."""
        seed = self.member.seed
        rng = random.Random(_mix(seed, day, 1))  # noqa: S311 - synthetic data
        conversations = [_conversation(_mix(seed, day // self.conversation_days, 2), free=False)]
        if rng.random() < 0.35:
            conversations.append(_conversation(_mix(seed, day, 3), free=True))
        messages = [rng.randint(1, 15) for _ in conversations]
        weights = [
            m * (c.model != _FREE_MODEL) for c, m in zip(conversations, messages, strict=True)
        ]
        total = self.prompts(day)
        shares = [total * w // sum(weights) for w in weights]
        shares[0] += total - sum(shares)  # the first is always paid
        return [
            _run(day, c, m, p, rng) for c, m, p in zip(conversations, messages, shares, strict=True)
        ]


def _rfc3339(timestamp: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{whole}.{int(timestamp % 1 * 1e6):06d}Z"


def _date(day: int) -> str:
    return time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(day * DAY))


def billing_cycle(now: float) -> tuple[float, float]:
    """The calendar month around `now`, as Windsurf bills."""
    tm = time.gmtime(now)
    year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    start = calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0, 0, 0, 0))
    return float(start), float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


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
    method: str = USER_PAGE  # the path's last part: `/api/v1/<method>`
    service_key: str = ""


class Refused(Exception):
    """A request the API turns down: its HTTP status and the `error` text of the reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _timestamp(body: dict[str, Any], key: str, default: float) -> float:
    if key not in body:
        return default
    try:
        parsed = datetime.fromisoformat(body[key])
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Refused(400, f"invalid timestamp format for {key}")
    return parsed.timestamp()


def _window(body: dict[str, Any], now: float) -> tuple[float, float]:
    """start_timestamp and end_timestamp; by default the year up to now."""
    return (
        _timestamp(body, "start_timestamp", now - 365 * DAY),
        _timestamp(body, "end_timestamp", now),
    )


def _present(row: dict[str, Any]) -> dict[str, Any]:
    """A row as protobuf JSON writes it: 64-bit numbers as strings, zeros left out."""
    return {k: str(v) if isinstance(v, int) else v for k, v in row.items() if v != 0}


def _repeated(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A query result; protobuf JSON leaves an empty list out."""
    return {name: {name: rows} if rows else {}}


def _lines(runs: list[Run]) -> dict[str, Any]:
    by_day: dict[int, tuple[int, int]] = {}
    for run in runs:
        if run.conversation.ide != "cli":
            suggested, accepted = by_day.get(run.day, (0, 0))
            by_day[run.day] = (suggested + run.lines_suggested, accepted + run.lines_accepted)
    rows = [
        _present({"day": _date(day), "linesSuggested": s, "linesAccepted": a})
        for day, (s, a) in sorted(by_day.items())
    ]
    return _repeated("cascadeLines", rows)


def _runs(runs: list[Run]) -> dict[str, Any]:
    rows = [
        _present(
            {
                "day": _date(run.day),
                "model": run.conversation.model,
                "mode": run.conversation.mode,
                "messagesSent": run.messages,
                "cascadeId": run.conversation.cascade_id,
                "promptsUsed": run.prompts,
            }
        )
        for run in sorted(runs, key=lambda r: r.day)
    ]
    return _repeated("cascadeRuns", rows)


def _tool_usage(runs: list[Run]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for run in runs:
        counts.update(dict(run.tools))
    rows = [{"tool": tool, "count": str(count)} for tool, count in counts.most_common()]
    return _repeated("cascadeToolUsage", rows)


_QUERIES: dict[str, Callable[[list[Run]], dict[str, Any]]] = {
    "cascade_lines": _lines,
    "cascade_runs": _runs,
    "cascade_tool_usage": _tool_usage,
}


def _queries(body: dict[str, Any]) -> list[Callable[[list[Run]], dict[str, Any]]]:
    requests = body.get("query_requests")
    if not isinstance(requests, list) or not requests:
        raise Refused(400, "query_requests is required: one object per data source")
    kinds = [next(iter(r)) if isinstance(r, dict) and len(r) == 1 else None for r in requests]
    unknown = [r for r, kind in zip(requests, kinds, strict=True) if kind not in _QUERIES]
    if unknown:
        raise Refused(400, f"unknown query request: {json.dumps(unknown[0])}")
    return [_QUERIES[str(kind)] for kind in kinds]


def _ide_types(body: dict[str, Any]) -> frozenset[str]:
    ides = body.get("ide_types") or sorted(_IDE_TYPES)
    if not isinstance(ides, list) or not set(ides) <= _IDE_TYPES:
        raise Refused(400, f"ide_types must be a list of {', '.join(sorted(_IDE_TYPES))}")
    return frozenset(ides)


class FakeWindsurf:
    """The fake API server; `start()` binds 127.0.0.1 on a free port unless told otherwise.

    It serves UserPageAnalytics, CascadeAnalytics, GetTeamCreditBalance and GetUsageConfig
    at `/api/v1/<method>`. `billing_read = False` makes the key lack "Billing Read", so the two
    billing methods answer 403; `addon_cap = None` means no add-on credit cap is set.
    """

    def __init__(
        self,
        team: list[Member] | None = None,
        service_key: str = DEMO_SERVICE_KEY,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        billing_read: bool = True,
        addon_cap: int | None = ADDON_CAP,
    ) -> None:
        self.team = synthetic_team() if team is None else team
        self.service_key = service_key
        self.clock = clock
        self.base = clock()
        self.billing_read = billing_read
        self.addon_cap = addon_cap
        self.groups = sorted({g for m in self.team for g in m.groups})
        self.requests: list[Recorded] = []
        self.overrides: dict[str, list[dict[str, Any]]] = {}
        self._activities: dict[Member, Activity] = {}
        self._faults: dict[tuple[str, str], Fault] = {}
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

    def set_fault(self, group: str, fault: Fault | None, method: str = "*") -> None:
        """Make requests for `group` ("" for the whole team, "*" for all) misbehave, for one
        method or ("*") every method."""
        with self._lock:
            if fault is None:
                self._faults.pop((method, group), None)
            else:
                self._faults[(method, group)] = fault

    def requests_for(self, group: str, method: str | None = USER_PAGE) -> list[Recorded]:
        """The requests for `group` (UserPageAnalytics unless told; None: every method)."""
        with self._lock:
            return [r for r in self.requests if r.group == group and method in (None, r.method)]

    def _take_fault(self, group: str, method: str) -> Fault | None:
        with self._lock:
            keys = ((method, group), (method, "*"), ("*", group), ("*", "*"))
            key = next((k for k in keys if k in self._faults), None)
            if key is None:
                return None
            fault = self._faults[key]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def activity(self, member: Member) -> Activity:
        """A member's days of use (made on first use: a large team costs only what is asked)."""
        found = self._activities.get(member)
        if found is None:
            found = self._activities.setdefault(member, Activity(member, self.base))
        return found

    def signup(self, member: Member) -> float:
        return self.base - member.signup_days_ago * DAY

    def idle_since(self, member: Member, now: float) -> float:
        """When the seat last did anything by `now`: its latest use, else when it joined."""
        last = self.activity(member).last_any_use(now)
        return self.signup(member) if last is None else last

    def members(self, group: str) -> list[Member]:
        """The people a request for `group` returns ("" is the whole team)."""
        return [m for m in self.team if not group or group in m.groups]

    def handle(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The reply to a request for `method`: status and JSON document."""
        handler = {
            USER_PAGE: self.respond,
            CASCADE: self.respond_cascade,
            CREDIT_BALANCE: self.respond_credit_balance,
            USAGE_CONFIG: self.respond_usage_config,
        }.get(method)
        if handler is None:
            return 404, {"error": f"unknown method: {method}"}
        if body.get("service_key") != self.service_key:
            return 401, {"error": "invalid service key"}
        if method in BILLING_METHODS and not self.billing_read:
            return 403, {"error": "permission denied: the service key lacks Billing Read"}
        try:
            return handler(body)
        except Refused as refused:
            return refused.status, {"error": str(refused)}

    def _group(self, body: dict[str, Any]) -> str:
        group = str(body.get("group_name") or "")
        if group and group not in self.groups:
            raise Refused(404, f"group not found: {group}")
        return group

    def row(
        self, member: Member, now: float, window: tuple[float, float], cycle_start: float
    ) -> dict[str, Any]:
        """A member's UserPageAnalytics row at `now`, omitting what protobuf JSON omits."""
        activity = self.activity(member)
        row: dict[str, Any] = {
            "name": member.name,
            "email": member.email,
            "lastUpdateTime": _rfc3339(now - 600),
            "apiKey": member.api_key,
            "role": member.role,
            "signupTime": _rfc3339(self.signup(member)),
            "teamStatus": member.team_status,
            "activeDays": activity.active_days(*window, now),
            # promptsUsed is in hundredths of a credit, promptCreditsUsed in whole credits.
            "promptCreditsUsed": str(activity.credits(cycle_start, now) // 100),
        }
        if member.disabled:
            row["disableCodeium"] = True
        for feature, key in enumerate(_FEATURE_FIELDS):
            last = activity.last_use(feature, now)
            if last is not None:
                row[key] = _rfc3339(last)
        return {k: v for k, v in row.items() if v not in (0, "0")}

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """UserPageAnalytics: the group's (or whole team's) rows; `overrides` replaces a
        group's rows with hand-written ones."""
        now = self.clock()
        window = _window(body, now)
        group = self._group(body)
        start, end = billing_cycle(now)
        if group in self.overrides:
            rows = self.overrides[group]
        else:
            rows = [self.row(m, now, window, start) for m in self.members(group)]
        document: dict[str, Any] = {
            "billingCycleStart": _rfc3339(start),
            "billingCycleEnd": _rfc3339(end),
        }
        if rows:
            document["userTableStats"] = rows
        return 200, document

    def respond_cascade(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """CascadeAnalytics: per day (and conversation) over the people asked about."""
        now = self.clock()
        queries = _queries(body)
        emails = body.get("emails")
        if emails is not None and body.get("group_name"):
            raise Refused(400, "group_name cannot be combined with emails")
        if emails is not None and not isinstance(emails, list):
            raise Refused(400, "emails must be a list of strings")
        members = self.members(self._group(body))
        if emails is not None:
            members = [m for m in members if m.email in emails]
        ides = _ide_types(body)
        start, end = _window(body, now)
        first, last = _day(start), math.ceil(end / DAY) - 1
        runs = [
            run
            for member in members
            for day in self.activity(member).cascade_days(first, last, now)
            for run in self.activity(member).runs(day)
            if run.conversation.ide in ides
        ]
        return 200, {"queryResults": [query(runs) for query in queries]}

    def addon_used(self, since: float, now: float) -> int:
        """Add-on credits used: what each person used beyond their seat's credits, up to the
        cap per user."""
        cap = math.inf if self.addon_cap is None else self.addon_cap
        return sum(
            int(min(cap, max(0, self.activity(m).credits(since, now) // 100 - SEAT_CREDITS)))
            for m in self.team
        )

    def respond_credit_balance(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """GetTeamCreditBalance: seats bought (a round number above those held) and add-on
        credits; the cycle's add-on pool is half as much again as the cycle will use."""
        now = self.clock()
        start, end = billing_cycle(now)
        billable = sum(m.billable for m in self.team)
        whole_cycle = self.addon_used(start, end - 1)
        return 200, {
            "promptCreditsPerSeat": SEAT_CREDITS,
            "numSeats": (billable // 25 + 1) * 25,
            "addOnCreditsAvailable": max(1000, math.ceil(whole_cycle * 1.5 / 1000) * 1000),
            "addOnCreditsUsed": self.addon_used(start, now),
            "billingCycleStart": _date(_day(start)),
            "billingCycleEnd": _date(_day(end)),
        }

    def respond_usage_config(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """GetUsageConfig: the cap is set for the team; no group or user has one of its own."""
        scopes = [k for k in ("team_level", "group_id", "user_email") if body.get(k)]
        if len(scopes) != 1:
            raise Refused(400, "give exactly one of team_level, group_id, user_email")
        scope, value = scopes[0], body[scopes[0]]
        if scope == "group_id" and value not in self.groups:
            raise Refused(404, f"group not found: {value}")
        if scope == "user_email" and all(m.email != value for m in self.team):
            raise Refused(404, f"user not found: {value}")
        if scope != "team_level" or self.addon_cap is None:
            return 200, {}
        return 200, {"add_on_credit_cap": self.addon_cap}


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
        method = self.path.partition("?")[0].removeprefix("/api/v1/")
        key = str(body.get("service_key") or "")
        with fake._lock:
            fake.requests.append(
                Recorded(fake.clock(), group, body, dict(self.headers), method, key)
            )
        fault = fake._take_fault(group, method) if method in METHODS else None
        if fault is not None:
            self._fault(fake, fault, method, body)
            return
        status, document = fake.handle(method, body)
        self._reply(status, json.dumps(document).encode())

    def _fault(self, fake: FakeWindsurf, fault: Fault, method: str, body: dict[str, Any]) -> None:
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
            payload = json.dumps(fake.handle(method, body)[1]).encode()
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
