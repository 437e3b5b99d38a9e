"""UserPageAnalytics replies -> reports: each value read against its request and the limits,
and a group's pages (one per activeDays window) merged by email into its users and aggregates.
The records the user page, the team, Cascade and whois share, apart from naming people
(people.py) and rendering them (user_page.py)."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from exporter.config import Limits
from exporter.sources.base import Request
from exporter.sources.values import (
    MEMO,
    bool_field,
    count_field,
    fresh,
    json_list,
    json_object,
    kept_once,
    text_field,
    time_field,
)

METHOD = "UserPageAnalytics"
FEATURES = ("autocomplete", "chat", "command")
_APPROVED = "USER_TEAM_STATUS_APPROVED"
_UPDATED = "lastUpdateTime"
_DAY = 86400.0
# Impossible values are unusable, not data: counts are never negative, credits stay far below
# where a sum of every row could overflow, activeDays fit the window asked (a day more for the
# partial days at its ends), and times are not after the request, give or take clock skew.
_MAX_CREDITS = 1e15
_MAX_DAYS = 366 * 100.0  # a request without a window
_CLOCK_SKEW = 3600.0
OTHER = "other"  # the role / team_status value of those over limits.max_label_values


_NEVER: tuple[None, None, None] = (None, None, None)
_NO_DAYS: Mapping[str, float] = MappingProxyType({})


class UserStats(NamedTuple):
    """One user's row of a group, merged across the configured activeDays windows. A named
    tuple: the cheapest immutable record to make and to keep, one per person of every group;
    people with the same activeDays share one read-only mapping of them."""

    email: str
    name: str = ""
    role: str = ""
    team_status: str = ""
    disabled: bool = False
    signup: float | None = None
    last_usage: tuple[float | None, float | None, float | None] = _NEVER
    prompt_credits: float | None = None
    active_days: Mapping[str, float] = _NO_DAYS

    @property
    def last_any_usage(self) -> float | None:
        latest = None  # a loop: read for every billable person, it beats max() of a list
        for used in self.last_usage:
            if used is not None and (latest is None or used > latest):
                latest = used
        return latest

    @property
    def idle_since(self) -> float | None:
        """When the seat last did anything: its latest use, else when it joined."""
        last = self.last_any_usage
        return last if last is not None else self.signup

    @property
    def billable(self) -> bool:
        return self.team_status == _APPROVED and not self.disabled


# A row's values as UserStats holds them, its activeDays left out: a plain tuple (which the
# garbage collector stops tracking) until build_report makes it the person's one UserStats, with
# every window's activeDays.
RowValues = tuple[
    str,
    str,
    str,
    str,
    bool,
    float | None,
    tuple[float | None, float | None, float | None],
    float | None,
]


@dataclass(frozen=True, slots=True)
class Page:
    """One decoded UserPageAnalytics reply: its rows with an email (their emails, the
    activeDays of each (None: unknown), and the other values of each), and what reading it
    left out or could not use. A reply not read in full (a later window's) has only the emails
    and activeDays, and no billing cycle."""

    rows: tuple[RowValues, ...]
    billing_start: float | None
    billing_end: float | None
    active_days: tuple[float | None, ...] = ()
    emails: tuple[str, ...] = ()
    size: int = 0  # rows the reply held
    no_email: int = 0
    limited: Mapping[str, int] = field(default_factory=dict)  # per limits key: values cut
    unparsable: Mapping[str, int] = field(default_factory=dict)  # per field
    updated: float | None = None  # the newest lastUpdateTime: when the API last refreshed


@dataclass(frozen=True, slots=True)
class Totals:
    """Aggregates over a set of users, each user counted once."""

    # Users with activeDays > 0, per window label, in the order of the windows polled.
    active: tuple[tuple[str, int], ...] = ()
    billable: int = 0
    prompt_credits: float = 0
    by_team_status: tuple[tuple[str, int], ...] = ()
    by_role: tuple[tuple[str, int], ...] = ()
    # When each billable user was last active (or joined), ascending: idle counts bisect it.
    idle_since: tuple[float, ...] = ()
    # Distinct roles and team statuses counted under `other` (limits.max_label_values).
    folded: int = 0


def totals(
    users: Sequence[UserStats],
    windows: Sequence[str],
    max_values: int = Limits.max_label_values,
    unknown: Collection[str] = (),
) -> Totals:
    """The users' aggregates; no active count for the `unknown` windows (see build_report)."""
    by_status, folded_statuses = bounded(Counter(u.team_status for u in users), max_values)
    by_role, folded_roles = bounded(Counter(u.role for u in users), max_values)
    billable = [u for u in users if u.billable]
    return Totals(
        active=tuple(
            (window, sum(1 for u in users if u.active_days.get(window, 0) > 0))
            for window in windows
            if window not in unknown
        ),
        billable=len(billable),
        prompt_credits=sum(u.prompt_credits or 0 for u in users),
        by_team_status=by_status,
        by_role=by_role,
        idle_since=tuple(sorted(t for u in billable if (t := u.idle_since) is not None)),
        folded=folded_statuses + folded_roles,
    )


def bounded(counts: Counter[str], most: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """The `most` commonest values (ties by value) with their counts, the rest summed under
    `other`, sorted by value; and how many distinct values went to `other`."""
    if len(counts) <= most:
        return tuple(sorted(counts.items())), 0
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = Counter(dict(ranked[:most]))
    kept[OTHER] += sum(count for _, count in ranked[most:])
    return tuple(sorted(kept.items())), len(ranked) - most


@dataclass(frozen=True, slots=True)
class GroupReport:
    """Everything one group's poll produced: its users, billing cycle and aggregates."""

    users: tuple[UserStats, ...]
    rows: int
    skipped: int
    billing_start: float | None = None
    billing_end: float | None = None
    totals: Totals = field(default_factory=Totals)
    limited: Mapping[str, int] = field(default_factory=dict)  # per limits key: values cut
    unparsable: Mapping[str, int] = field(default_factory=dict)  # per field
    updated: float | None = None  # the newest lastUpdateTime: when the API last refreshed


def request_body(group: str, start: float, end: float) -> dict[str, str]:
    body = {"start_timestamp": _rfc3339(start), "end_timestamp": _rfc3339(end)}
    if group:
        body["group_name"] = group
    return body


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def decode_page(document: Any, request: Request | None = None) -> Page:
    """Top-level reply -> Page; protobuf JSON omits an empty userTableStats: absent means none.

    Reads at most `limits.max_rows` rows, each value within bounds: an impossible one (see
    `_Reader`) is unknown and counted, so a hostile reply costs no more than a plain one. A
    reply its request does not read in `full` gives its rows' email and activeDays and its
    lastUpdateTime only: what build_report takes from a later window's page; its other values
    are neither read nor counted when unusable.
    """
    document = json_object(document)
    rows = json_list(document, "userTableStats")
    request = request or Request(METHOD, {}, "")
    reader = _Reader(request)
    kept = rows[: reader.limits.max_rows]
    for row in kept:
        if isinstance(row, dict):
            reader.row(row)
    return Page(
        rows=tuple(reader.users),
        billing_start=reader.time(document, "billingCycleStart") if request.full else None,
        billing_end=reader.time(document, "billingCycleEnd", math.inf) if request.full else None,
        active_days=tuple(reader.active_days),
        emails=tuple(reader.emails),
        size=len(rows),
        no_email=len(kept) - len(reader.emails),
        limited={"max_rows": len(rows) - len(kept), "max_label_length": reader.cut},
        unparsable=dict(reader.unparsable),
        updated=reader.updated,
    )


class _Reader:
    """Reads one reply's values against its request: times not after it was asked (plus clock
    skew), activeDays within its window, credits and counts not negative nor absurd, strings
    as label values can hold them, into the rows of its Page. Counts what it cannot use, and
    the strings it cuts.

    Values repeated on many rows are kept once: role and teamStatus as interned strings,
    numbers as one float each, and lastUpdateTime (the same on every row) is read once."""

    def __init__(self, request: Request) -> None:
        window = request.window
        self.full = request.full
        self.limits = request.limits
        self.max_days = math.ceil(window.seconds / _DAY) + 1 if window else _MAX_DAYS
        asked = request.asked_at
        self.latest = math.inf if asked is None else asked + _CLOCK_SKEW
        self.unparsable: Counter[str] = Counter()
        self.cut = 0
        self._most = self.limits.max_label_length
        self._numbers: dict[float, float] = {}
        self._counts: dict[str | int, float] = {}  # as sent -> read, below any maximum
        self._words: dict[str, str] = {}
        self._update: tuple[Any, float | None, bool] = (None, None, False)
        self.emails: list[str] = []
        self.users: list[RowValues] = []
        self.active_days: list[float | None] = []
        self.updated: float | None = None  # the newest lastUpdateTime

    def time(self, row: Mapping[str, Any], key: str, latest: float | None = None) -> float | None:
        value = row.get(key)
        if value is None:  # never, as time_field would say: most rows lack a time or two
            return None
        seconds, bad = time_field(value, self.latest if latest is None else latest)
        if bad:
            self.unparsable[key] += 1
        return seconds

    def update(self, row: Mapping[str, Any]) -> None:
        """Keeps the newest lastUpdateTime, read again only when it differs from the previous
        row's."""
        text = row.get(_UPDATED)
        last, value, bad = self._update
        if text != last or type(text) is not str:
            value, bad = time_field(text, self.latest)
            self._update = (text, value, bad)
            if value is not None and (self.updated is None or value > self.updated):
                self.updated = value
        if bad:
            self.unparsable[_UPDATED] += 1

    def count(self, row: Mapping[str, Any], key: str, maximum: float) -> float | None:
        """A count, looked up when the same text or int was read before (credits and days
        repeat on many rows: one float each)."""
        value: Any = row.get(key)
        plain = type(value) is str or type(value) is int
        known = self._counts.get(value) if plain else None
        if known is not None and known <= maximum:
            return known
        number, bad = count_field(value, maximum)
        if bad:
            self.unparsable[key] += 1
            return None
        if number is None:
            return None
        number = kept_once(self._numbers, number)
        if plain and len(self._counts) < MEMO:
            self._counts[value] = number
        return number

    def text(self, row: Mapping[str, Any], key: str) -> str:
        value = row.get(key)
        if type(value) is str:
            if key == "email":
                value = value.strip()
            if len(value) <= self._most:  # what label_value would make of it, only faster
                if not value.isascii():
                    return _utf8(value)
                # A copy (see fresh) only of what a report keeps: a later window's emails
                # are only matched against the first's.
                return fresh(value) if self.full else value
        text, bad = text_field(value)
        if bad:
            self.unparsable[key] += 1
        label, cut = label_value(text, self.limits)
        self.cut += cut
        return label

    def word(self, row: Mapping[str, Any], key: str) -> str:
        """A text repeated on many rows (role, teamStatus): one interned string each, read once
        when it is kept as it is."""
        value = row.get(key)
        known = self._words.get(value) if type(value) is str else None
        if known is None:
            known = sys.intern(self.text(row, key))
            if known == value and len(self._words) < MEMO:
                self._words[known] = known
        return known

    def row(self, row: dict[str, Any]) -> None:
        """Reads a row: its lastUpdateTime, then, when it has an email, its activeDays and,
        when the reply is read in full, its UserStats."""
        self.update(row)
        email = self.text(row, "email")
        if email:
            self.emails.append(email)
            self.active_days.append(self.count(row, "activeDays", self.max_days))
            if self.full:
                self.users.append(self.user(email, row))

    def user(self, email: str, row: dict[str, Any]) -> RowValues:
        time = self.time
        usage = (
            time(row, "lastAutocompleteUsageTime"),
            time(row, "lastChatUsageTime"),
            time(row, "lastCommandUsageTime"),
        )
        disabled = row.get("disableCodeium", False)
        if type(disabled) is not bool:
            disabled, bad = bool_field(disabled)
            if bad:
                self.unparsable["disableCodeium"] += 1
        return (
            email,
            self.text(row, "name"),
            self.word(row, "role"),
            self.word(row, "teamStatus"),
            disabled,
            time(row, "signupTime"),
            _NEVER if usage == _NEVER else usage,
            self.count(row, "promptCreditsUsed", _MAX_CREDITS),
        )


def label_value(value: str, limits: Limits) -> tuple[str, bool]:
    """Any string JSON can carry -> one a label can hold, and whether it was cut: valid UTF-8
    (a lone surrogate becomes U+FFFD) of at most `limits.max_label_length` characters, a longer
    one keeping its start and ending in `…` and 8 hex digits of its hash, so cut values stay
    distinct."""
    if not value.isascii():
        value = _utf8(value)
    most = limits.max_label_length
    if len(value) <= most:
        return value, False
    return f"{value[: most - 9]}…{digest(value)[:8]}", True


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode()


def digest(text: str) -> str:
    """SHA-256 of `text` in hex: what tells cut labels and pseudonyms apart."""
    return hashlib.sha256(text.encode()).hexdigest()


def build_report(pages: Sequence[tuple[str, Page]], limits: Limits | None = None) -> GroupReport:
    """Merge one group's pages (one per window) into users keyed by email, with its aggregates.

    The first page says who is in the group (windsurf_group_users counts its rows); later
    pages only add their window's activeDays, so a user who joined between the requests waits
    for the next poll, and a window whose page lacks someone of the first has no active count.
    Rows without an email have no stable identity and are skipped; a repeated email keeps its
    first row, so the exposition never holds duplicate series.
    """
    limits = limits or Limits()
    first = pages[0][1] if pages else Page((), None, None)
    users: dict[str, RowValues] = {}
    active: dict[str, dict[str, float]] = {}
    skipped = first.no_email
    for user, days in zip(first.rows, first.active_days, strict=True):
        email = user[0]
        if email in users:
            skipped += 1
        else:
            users[email] = user
            active[email] = {} if days is None else {pages[0][0]: days}
    missing: set[str] = set()  # windows whose reply lacks someone of the first
    for window, page in pages[1:]:
        for email, days in zip(page.emails, page.active_days, strict=True):
            if days is not None and (known := active.get(email)) is not None:
                known.setdefault(window, days)
        if not users.keys() <= set(page.emails):
            missing.add(window)
    stats = tuple(_with_days(users.values(), active.values()))
    # A person missing from a window's reply (the team changed between two requests) makes
    # that window's count unknown, not smaller.
    windows = [window for window, _ in pages]
    agg = totals(stats, windows, limits.max_label_values, missing)
    limited: Counter[str] = Counter({"max_label_values": agg.folded})
    unparsable: Counter[str] = Counter()
    for _, page in pages:
        limited.update(page.limited)
        unparsable.update(page.unparsable)
    return GroupReport(
        users=stats,
        rows=first.size,
        skipped=skipped,
        billing_start=first.billing_start,
        billing_end=first.billing_end,
        totals=agg,
        limited=dict(sorted(limited.items())),
        unparsable=dict(sorted(unparsable.items())),
        updated=max((p.updated for _, p in pages if p.updated is not None), default=None),
    )


def _with_days(
    users: Iterable[RowValues], active: Iterable[Mapping[str, float]]
) -> Iterator[UserStats]:
    """Each user with their activeDays, one read-only mapping for everyone with the same ones
    (there are few distinct ones: a few bytes a person instead of a dict): the one UserStats
    made of each row."""
    shared: dict[tuple[tuple[str, float], ...], Mapping[str, float]] = {}
    for user, days in zip(users, active, strict=True):
        key = tuple(days.items())
        mapping = shared.get(key)
        if mapping is None:
            mapping = shared[key] = MappingProxyType(dict(key))
        yield UserStats._make((*user, mapping))


def person_key(email: str) -> str:
    """Who an email names: emails differ in case between replies. The email itself when it is
    already lower case (the usual), so the maps of people share the rows' strings instead of
    holding a copy each."""
    return email if email.islower() else email.lower()
