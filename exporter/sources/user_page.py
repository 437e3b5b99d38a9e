"""UserPageAnalytics, polled per configured group: one request per activeDays window, the rows
merged by email into users, the group's aggregates, and the families they give. `apiKey` is
never read into a record.

The exposition, for a group "eng" with one user, looks like:

    windsurf_group_users{group="eng"} 1
    windsurf_user_prompt_credits_used{group="eng",user="a@x.io"} 8300
    windsurf_user_last_usage_timestamp_seconds{group="eng",user="a@x.io",feature="chat"} 1.7e9
    ...
    windsurf_user_last_usage_age_seconds{group="eng",user="a@x.io",feature="chat"} 3600.000
    windsurf_user_idle_seconds{group="eng",user="a@x.io"} 3600.000
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import logging
import math
import operator
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from exporter.config import Config, Limits, Window
from exporter.exposition import (
    Ages,
    Family,
    Piece,
    escape,
    labels,
    number,
    piece,
    piece_soon,
    utf8,
)
from exporter.sources.base import Health, Live, Parts, Rendered, Request
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

log = logging.getLogger("exporter.user_page")

METHOD = "UserPageAnalytics"
FEATURES = ("autocomplete", "chat", "command")
_APPROVED = "USER_TEAM_STATUS_APPROVED"
_UPDATED = "lastUpdateTime"
_CACHED = " Cached from the last successful poll."
_DAY = 86400.0
# Impossible values are unusable, not data: counts are never negative, credits stay far below
# where a sum of every row could overflow, activeDays fit the window asked (a day more for the
# partial days at its ends), and times are not after the request, give or take clock skew.
_MAX_CREDITS = 1e15
_MAX_DAYS = 366 * 100.0  # a request without a window
_CLOCK_SKEW = 3600.0
_HEX = frozenset("0123456789abcdef")
INFO_BLOCK = 512  # people whose info series are one piece
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
    return f"{value[: most - 9]}…{_digest(value)[:8]}", True


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode()


def _digest(text: str) -> str:
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


def user_hash(email: str, salt: str = "") -> str:
    """`hash` mode's pseudonym: follows a user across polls, groups and restarts without
    saying who it is (SHA-256 of the salt and the lower-cased email, in hex)."""
    return _digest(salt + email.lower())


def user_labels(
    users: Sequence[UserStats], config: Config
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each user's `user` label and extra info labels in the configured labels.user mode.

    Only `email` mode shows emails and names. In every mode the labels are distinct (see
    `distinct`): names repeat, and two emails may differ only in case or in what was cut.
    """
    mode = config.labels.user
    salt = config.labels.hash_salt.reveal()
    values = [_value(u, mode, salt) for u in users]
    names = distinct(values, [u.email for u in users], salt)
    return [(name, _info(u, mode)) for name, u in zip(names, users, strict=True)]


def _value(user: UserStats, mode: str, salt: str) -> str:
    """What labels `user` in `mode` before `distinct`: the email, its hash, or the name."""
    if mode == "email":
        return user.email
    return user_hash(user.email, salt) if mode == "hash" else user.name


def _info(user: UserStats, mode: str) -> list[tuple[str, str]]:
    """The info labels `user` has in `mode`."""
    return [(name, getattr(user, name)) for name in _info_names(mode)]


def _info_names(mode: str) -> tuple[str, ...]:
    """The info labels in `mode`, each named as the field it shows: names and emails only in
    `email` mode."""
    return ("name", "email", "role", "team_status") if mode == "email" else ("role", "team_status")


def distinct(values: Sequence[str], emails: Sequence[str], salt: str) -> list[str]:
    """`values` made distinct, whatever they hold: a value that is empty, repeated, or could be
    mistaken for a suffixed one gets ` #` and 8 hex digits of the user's salted email hash,
    independent of the order of the rows; where those collide too, all 64. Emails are distinct."""
    taken = Counter(values)
    out = [_tagged(v, e, salt, taken[v] > 1) for v, e in zip(values, emails, strict=True)]
    again = Counter(out)
    return [
        _retagged(v, e, o, salt, again[o] > 1) for v, e, o in zip(values, emails, out, strict=True)
    ]


def _tagged(value: str, email: str, salt: str, repeated: bool) -> str:
    """`distinct`'s first pass for one value."""
    if repeated or _suffixed(value):
        return f"{value} #{_digest(salt + email)[:8]}".lstrip()
    return value


def _retagged(value: str, email: str, tagged: str, salt: str, repeated: bool) -> str:
    """`distinct`'s second pass for one value: `tagged` unless the first pass repeated it."""
    return f"{value} #{_digest(salt + email)}".lstrip() if repeated else tagged


def _suffixed(value: str) -> bool:
    """Empty, or ending like a disambiguated value (` #` and 8 or more hex digits)."""
    if value and value[0] != "#" and " #" not in value:
        return False  # the usual: no ` #` at all
    _, sep, tail = (" " + value).rpartition(" #")
    return not value or (bool(sep) and len(tail) >= 8 and all(c in _HEX for c in tail))


def _f(name: str, help_: str, type_: str = "gauge") -> Family:
    return Family(name, help_, type_)


# Group data: dropped with the users once the group's data is older than poll.max_staleness.
GROUP_USERS = _f(
    "windsurf_group_users", "Users (rows) UserPageAnalytics returned for the group." + _CACHED
)
BILLING_START = _f(
    "windsurf_billing_cycle_start_timestamp_seconds",
    "Unix time the current billing cycle started (billingCycleStart)." + _CACHED,
)
BILLING_END = _f(
    "windsurf_billing_cycle_end_timestamp_seconds",
    "Unix time the current billing cycle ends (billingCycleEnd)." + _CACHED,
)
GROUP_UPDATED = _f(
    "windsurf_group_data_updated_timestamp_seconds",
    "Unix time the API last refreshed the group's numbers: the newest lastUpdateTime of its"
    " rows." + _CACHED,
)
GROUP_ACTIVE = _f(
    "windsurf_group_active_users", "Users with activeDays > 0 in the window." + _CACHED
)
GROUP_BILLABLE = _f(
    "windsurf_group_billable_users",
    "Approved users whose access is not disabled: the seats paid for." + _CACHED,
)
GROUP_CREDITS = _f(
    "windsurf_group_prompt_credits_used",
    "Prompt credits the group's users used in the current billing cycle." + _CACHED,
)
GROUP_STATUS = _f("windsurf_group_users_by_team_status", "Users by teamStatus." + _CACHED)
GROUP_ROLE = _f("windsurf_group_users_by_role", "Users by role." + _CACHED)
USER_ACTIVE = _f(
    "windsurf_user_active_days", "Days with activity within the window (activeDays)." + _CACHED
)
USER_CREDITS = _f(
    "windsurf_user_prompt_credits_used",
    "Prompt credits used in the current billing cycle (promptCreditsUsed)." + _CACHED,
)
USER_LAST = _f(
    "windsurf_user_last_usage_timestamp_seconds",
    "Unix time of the user's last use of the feature; absent if never used." + _CACHED,
)
USER_SIGNUP = _f(
    "windsurf_user_signup_timestamp_seconds", "Unix time the user joined (signupTime)." + _CACHED
)
USER_DISABLED = _f(
    "windsurf_user_disabled",
    "1 if the user's access is switched off (disableCodeium), else 0." + _CACHED,
)
USER_INFO = _f(
    "windsurf_user_info", "User attributes as labels; value is always 1." + _CACHED, "info"
)
# Computed at scrape time from the cached timestamps.
USER_AGE = _f(
    "windsurf_user_last_usage_age_seconds",
    "Seconds since the user's last use of the feature, at scrape time.",
)
USER_IDLE = _f(
    "windsurf_user_idle_seconds",
    "Seconds since the user's last use of any feature (since signup if never used),"
    " at scrape time.",
)
GROUP_IDLE = _f(
    "windsurf_group_idle_users", "Billable users idle longer than idle_for, at scrape time."
)
LIMITED = _f(
    "windsurf_exporter_limited_values",
    "Values of the group's last poll cut to fit limits.<limit>: rows left out (max_rows), strings"
    " shortened (max_label_length), roles and statuses counted as other (max_label_values)."
    + _CACHED,
)
UNPARSABLE = _f(
    "windsurf_exporter_unparsable_values",
    "Values of the group's last poll read as unknown, by field: malformed, or impossible"
    " (negative, absurdly large, after the request)." + _CACHED,
)


class Replies:
    """How a UserPageAnalytics source reads its replies: pages, merged by email across windows."""

    def parse(self, request: Request, document: Any) -> Page:
        return decode_page(document, request)

    def report(
        self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]
    ) -> GroupReport:
        pages = [(r.window.label if r.window else "", page) for r, page in replies]
        report = build_report(pages, config.limits)
        log_losses(target, report)
        return report


class UserPage(Replies):
    """The UserPageAnalytics source, one target per configured group.

    Without the team poll (`team: false`) each group is asked once per window, and with no
    groups configured the whole team is the one group "". With it, each group is asked once,
    for the first window, for its members and their rows; the other windows' activeDays come
    from the team's replies, joined by email.
    """

    name: str = "user_page"
    collector: str = "user_page"
    # The groups join the team's rows (TEAM_KEY).
    reads: tuple[str, ...] = ("user_page", "team")
    health: Health | None = Health(prefix="", label="group", subject="group")
    families: tuple[Family, ...] = (
        GROUP_USERS,
        BILLING_START,
        BILLING_END,
        GROUP_UPDATED,
        GROUP_ACTIVE,
        GROUP_BILLABLE,
        GROUP_CREDITS,
        GROUP_STATUS,
        GROUP_ROLE,
        USER_ACTIVE,
        USER_CREDITS,
        USER_LAST,
        USER_SIGNUP,
        USER_DISABLED,
        USER_INFO,
        USER_AGE,
        USER_IDLE,
        GROUP_IDLE,
        LIMITED,
        UNPARSABLE,
    )

    def targets(self, config: Config) -> tuple[str, ...]:
        if not config.collector(self.collector).enabled:
            return ()
        return tuple(g for g in config.groups if g) if config.team else config.groups

    def depends_on(self, config: Config) -> Hashable:
        return (config.windows, config.team)

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        return plan(config, config.windows[:1] if config.team else config.windows, target, now)

    def render(self, config: Config, live: Live, parts: Parts) -> Rendered:
        groups = [(k[1], r) for k, r in live.items() if k[0] == self.name]
        team = live.get(TEAM_KEY)
        return render_groups(
            [(g, r) for g, r in groups if isinstance(r, GroupReport)],
            team if isinstance(team, GroupReport) else None,
            config,
            parts,
        )


USER_PAGE = UserPage()
TEAM_KEY = ("team", "")  # the team source's one target, whose replies the groups join


def plan(config: Config, windows: Sequence[Window], group: str, now: float) -> tuple[Request, ...]:
    """One request per window for `group` ("" = the whole team), read against `now` and the
    configured limits; a reply after the first is read for its window's activeDays only (see
    build_report)."""
    return tuple(
        Request(
            METHOD,
            request_body(group, now - w.seconds, now),
            group,
            w,
            now,
            config.limits,
            full=i == 0,
        )
        for i, w in enumerate(windows)
    )


def log_losses(group: str, report: GroupReport) -> None:
    """One warning per poll that cut values to fit the limits or could not use some."""
    cut = [f"{n} over limits.{limit}" for limit, n in report.limited.items() if n]
    bad = [f"{field} {n}" for field, n in report.unparsable.items()]
    if not cut and not bad:
        return
    log.warning(
        "reply read with losses: %s; unusable values read as unknown: %s",
        ", ".join(cut) or "nothing cut",
        ", ".join(bad) or "none",
        extra={"group": group or "(whole team)"},
    )


def render_groups(
    groups: Sequence[tuple[str, GroupReport]],
    team: GroupReport | None,
    config: Config,
    parts: Parts,
) -> Rendered:
    """The groups' aggregates and, with `per_user`, one set of series per (group, person);
    a person of the team in no group gets group="". Per-user values come from the team's rows
    when the team is live (every window), else from each group's own rows.

    A group's series are redone only when the config changed, its report's or the team's
    rows did (a new report equal to the one before is no change), or its members' `user`
    labels did; its info series likewise, but for its members' info labels (their groups
    included); so is the group-less rest of the team's. The people and their labels are kept
    from rendering to rendering (see `_People`), so a publish costs what changed, not the
    whole team.
    """
    people = parts.get(("people",), (config,), (), functools.partial(_People, config))
    pieces: list[Rendered | Future[Piece]] = []
    with people.lock:  # renderings may run at once (a poll's and a scrape's); they take turns
        people.sync(groups, team)
        v = people.version
        for group, report in groups:
            rows = (v(("data", group)), v(("team",)))
            make = functools.partial(_group_piece, group, report, people, config)
            seats = ("group", group)
            pieces.append(parts.get(seats, (config,), (*rows, v(seats)), make))
            for block in range(people.blocks(group)):
                info = ("info", group, block)
                block_of = functools.partial(_info_piece, group, block, people)
                pieces.append(parts.get(info, (config,), (*rows, v(info)), block_of))
        if config.per_user and team is not None and people.complete(config):
            rest = ("no group",)
            make = functools.partial(_rest_piece, people)
            pieces.append(parts.get(rest, (config,), (v(("team",)), v(rest)), make))
    # The info blocks were compressed by the pool meanwhile: waited for once, here.
    return _combine(
        [Rendered({USER_INFO: p.result()}) if isinstance(p, Future) else p for p in pieces]
    )


_VERSIONS = itertools.count()  # unique across _People objects: a version names one state


class _Person:
    """One person's labels and what they were made from."""

    __slots__ = ("groups", "label", "name", "out", "row", "value")

    def __init__(self, row: UserStats, groups: str, value: str) -> None:
        self.row = row  # the row naming them: the team's, else their first group's
        self.groups = groups  # their `groups` label
        self.value = value  # what labels them before `distinct`
        self.out = ""  # after `distinct`'s first pass
        self.name = ""  # their `user` label
        self.label = ""  # the same, escaped for the exposition


class _People:
    """Everyone of the live groups and the team, by lower-cased email (emails differ in case
    between replies): the team's rows, the groups each is in, and their labels, named across
    the whole team so a person has one label. Kept from rendering to rendering under one
    config and brought up to date by `sync` at the cost of the reports that changed. What a
    piece shows has versions (its group's rows, the team's, its people's labels), each bumped
    whenever what it names changes: a piece is kept while they are the same."""

    def __init__(self, config: Config) -> None:
        self.lock = threading.Lock()
        self.per_user = config.per_user
        self.mode = config.labels.user
        self.salt = config.labels.hash_salt.reveal()
        self.info_of = operator.attrgetter(*_info_names(self.mode))  # a row's info label values
        self.reports: dict[str, GroupReport] = {}
        self.team_report: GroupReport | None = None
        self.team: dict[str, UserStats] = {}  # its last row of each person
        # Only with per_user, where labels are shown:
        self.firsts: dict[str, dict[str, UserStats]] = {}  # group -> person -> first row
        # group -> person -> their block of INFO_BLOCK people, in the order of the rows: a
        # changed label redoes its block's info series, not the group's.
        self.block: dict[str, dict[str, int]] = {}
        self.member_of: dict[str, list[str]] = {}  # a group once per row of the person
        self.order: dict[str, int] = {}  # the live groups' positions
        self.people: dict[str, _Person] = {}
        self.taken: dict[str, int] = {}  # values, as `distinct` counts them
        self.again: dict[str, int] = {}  # first-pass labels, likewise
        self.versions: dict[Hashable, int] = {}

    def version(self, piece: Hashable) -> int:
        return self.versions.setdefault(piece, next(_VERSIONS))

    def _bump(self, piece: Hashable) -> None:
        self.versions[piece] = next(_VERSIONS)

    def blocks(self, group: str) -> int:
        """How many blocks of info series the group's people make (none without per_user)."""
        return -(-len(self.block.get(group, ())) // INFO_BLOCK)

    def in_block(self, group: str, block: int) -> Iterator[str]:
        """The group's people of that block, in the order of its rows."""
        return itertools.islice(self.firsts[group], block * INFO_BLOCK, (block + 1) * INFO_BLOCK)

    def complete(self, config: Config) -> bool:
        """Who is in no group is known only when every configured group's members are."""
        return set(self.order) == set(USER_PAGE.targets(config))

    def rest(self) -> list[str]:
        """The team's people in no live group."""
        return [p for p in self.team if p not in self.member_of]

    def sync(self, groups: Sequence[tuple[str, GroupReport]], team: GroupReport | None) -> None:
        """Take in the live reports: a report whose rows changed bumps the version of its
        rows, one equal to the one before only takes its place."""
        touched: set[str] = set()
        order = {g: i for i, (g, _) in enumerate(groups)}
        if [g for g in self.order if g in order] != [g for g in order if g in self.order]:
            # Whose row names them (their first group's) may change.
            touched.update(p for p, gs in self.member_of.items() if len(gs) > 1)
        for gone in [g for g in self.reports if g not in order]:
            self._set_group(gone, None, touched)
        self.order = order
        self._sync_team(team, touched)
        for group, report in groups:
            self._sync_group(group, report, touched)
        if self.per_user:
            self._relabel(touched)

    def _sync_team(self, team: GroupReport | None, touched: set[str]) -> None:
        old = self.team_report
        if team is old:
            return
        rows = {person_key(u.email): u for u in team.users} if team else {}
        before, self.team_report, self.team = self.team, team, rows
        if team is not None and old is not None and team == old:
            self._repoint(before, rows)
            return
        self._bump(("team",))
        if self.per_user:
            touched.update(before.keys() - rows.keys())
            touched.update(self._renaming(rows))

    def _sync_group(self, group: str, report: GroupReport, touched: set[str]) -> None:
        old = self.reports.get(group)
        if report is old:
            return
        if old is None or report != old:
            self._set_group(group, report, touched)
            return
        self.reports[group] = report
        if self.per_user:
            firsts = _firsts(report)
            self._repoint(self.firsts[group], firsts)
            self.firsts[group] = firsts

    def _repoint(self, old: Mapping[str, UserStats], new: Mapping[str, UserStats]) -> None:
        """Rows equal to the `old` ones name the people the old ones did, so that the old
        report can go."""
        if not self.per_user:
            return
        for person, row in new.items():
            who = self.people.get(person)
            if who is not None and who.row is old.get(person):
                who.row = row

    def _renaming(self, rows: Mapping[str, UserStats]) -> list[str]:
        """Of these rows' people (their memberships up to date), those whose labels the rows
        may change: new, or named by a row now that shows them otherwise. The others are named
        by their new row from now on, so that the old report can go."""
        out = []
        for person in rows:
            who = self.people.get(person)
            row = self._row(person, self.member_of.get(person, ()))
            if who is None or row is None or _naming(who.row) != _naming(row):
                out.append(person)
            else:
                who.row = row
        return out

    def _set_group(self, group: str, report: GroupReport | None, touched: set[str]) -> None:
        """A group's new report (None: no longer live); its old and new members are
        `touched`."""
        self._bump(("data", group))
        if report is None:
            del self.reports[group]
        else:
            self.reports[group] = report
        if not self.per_user:
            return
        old = self.firsts.pop(group, {})
        self.block.pop(group, None)
        before = {p: len(self.member_of[p]) for p in old}
        for person in old:
            left = [g for g in self.member_of[person] if g != group]
            if left:
                self.member_of[person] = left
            else:
                del self.member_of[person]
        firsts = _firsts(report) if report else {}
        for user in report.users if report else ():
            self.member_of.setdefault(person_key(user.email), []).append(group)
        if report is not None:
            self.firsts[group] = firsts
            self.block[group] = {p: i // INFO_BLOCK for i, p in enumerate(firsts)}
        # Who joined or left the group, or has another number of rows in it (their `groups`
        # label changes), and whose row there names them otherwise.
        touched.update(old.keys() ^ firsts.keys())
        touched.update(p for p, n in before.items() if len(self.member_of.get(p, ())) != n)
        touched.update(self._renaming({p: r for p, r in firsts.items() if p in old}))

    def _row(self, person: str, groups: Sequence[str]) -> UserStats | None:
        """The row naming `person`, in `groups`: the team's, else their first live group's;
        None: gone."""
        row = self.team.get(person)
        if row is None and groups:
            first = groups[0] if len(groups) == 1 else min(groups, key=self.order.__getitem__)
            row = self.firsts[first][person]
        return row

    def _relabel(self, touched: set[str]) -> None:
        """Bring the `touched` people's labels up to date (and whoever's `distinct` makes
        depend on theirs), and bump the versions of the pieces showing a changed one."""
        old, shown = self._refresh(touched)
        renamed = self._rename(old)
        # Who is new is only in reports that changed, whose pieces are redone anyway.
        shown.update(p for p in renamed if old.get(p, ()) is not None)
        infos: set[tuple[str, str, int]] = set()
        seats: set[str] = set()
        for person in shown:
            groups = self.member_of.get(person, ())
            infos.update(("info", g, self.block[g][person]) for g in groups)
            if person in renamed:
                seats.update(groups)
        for info in infos:
            self._bump(info)
        for group in seats:
            self._bump(("group", group))
        if not self.team.keys().isdisjoint(shown):
            self._bump(("no group",))

    def _refresh(self, touched: set[str]) -> tuple[dict[str, tuple[str, str] | None], set[str]]:
        """The `touched` people's rows, groups and values as they are now; returns whose
        value (or email) changed, with their value and first-pass label before (None: new),
        and who stays with other `groups` or info labels."""
        old: dict[str, tuple[str, str] | None] = {}
        shown: set[str] = set()
        info_of = self.info_of
        for person in touched:
            groups = self.member_of.get(person, ())
            row = self._row(person, groups)
            who = self.people.get(person)
            if who is None:
                if row is not None:
                    self.people[person] = _Person(row, _groups_label(groups), self._value(row))
                    old[person] = None
                continue
            if row is None:
                old[person] = (who.value, who.out)
                del self.people[person]
                continue
            same = who.row.email == row.email
            value = who.value if same and self.mode == "hash" else self._value(row)
            if not same or value != who.value:
                old[person] = (who.value, who.out)
            label = _groups_label(groups)
            if label != who.groups or (row is not who.row and info_of(row) != info_of(who.row)):
                shown.add(person)
            who.row, who.groups, who.value = row, label, value
        return old, shown

    def _value(self, row: UserStats) -> str:
        return _value(row, self.mode, self.salt)

    def _rename(self, old: Mapping[str, tuple[str, str] | None]) -> set[str]:
        """`distinct` again where the values of the people in `old` changed (None: new): for
        them, and for whoever's value or first-pass label repeats differently because of
        them. Returns who got another `user` label, or lost theirs."""
        firsts, gone = self._first_pass(old)
        seconds = set(firsts)
        flipped = _recount(self.again, gone, [self.people[p].out for p in firsts])
        if flipped:
            seconds.update(p for p, w in self.people.items() if w.out in flipped)
        renamed = {p for p, was in old.items() if was is None or p not in self.people}
        return renamed.union(self._second_pass(seconds))

    def _first_pass(self, old: Mapping[str, tuple[str, str] | None]) -> tuple[list[str], list[str]]:
        """`distinct`'s first pass for the people in `old` and whoever shares a value whose
        repetition they changed; returns them, and the first-pass labels no longer held."""
        people = self.people
        firsts = [p for p in old if p in people]
        flipped = _recount(
            self.taken, [w[0] for w in old.values() if w], [people[p].value for p in firsts]
        )
        if flipped:
            firsts += [p for p, w in people.items() if w.value in flipped and p not in old]
        gone = [w[1] for w in old.values() if w]
        gone += [people[p].out for p in firsts if p not in old]
        taken = self.taken.get
        for person in firsts:
            who = people[person]
            who.out = _tagged(who.value, who.row.email, self.salt, taken(who.value, 0) > 1)
        return firsts, gone

    def _second_pass(self, seconds: Iterable[str]) -> list[str]:
        """`distinct`'s second pass for these people; returns whose label it changed."""
        renamed = []
        again = self.again.get
        for person in seconds:
            who = self.people[person]
            name = _retagged(who.value, who.row.email, who.out, self.salt, again(who.out, 0) > 1)
            if name != who.name:
                who.name = name
                who.label = escape(name)
                renamed.append(person)
        return renamed

    def info_lines(self, group: str, persons: Iterable[str]) -> list[str]:
        """These people's info series in `group`: the labels many share (role, team status,
        groups) escaped once per render, not once per person."""
        g = escape(group)
        name = USER_INFO.name
        tails: dict[tuple[str, str, str], str] = {}
        out = []
        for person in persons:
            who = self.people[person]
            row = who.row
            shared = (row.role, row.team_status, who.groups)
            tail = tails.get(shared)
            if tail is None:
                tail = tails[shared] = (
                    f'role="{escape(row.role)}",team_status="{escape(row.team_status)}",'
                    f'groups="{escape(who.groups)}"}} 1\n'
                )
            user = who.label
            if self.mode == "email":  # the labels of _info_names, written out: 4x faster
                out.append(
                    f'{name}{{group="{g}",user="{user}",name="{escape(row.name)}",'
                    f'email="{escape(row.email)}",{tail}'
                )
            else:
                out.append(f'{name}{{group="{g}",user="{user}",{tail}')
        return out


def _firsts(report: GroupReport) -> dict[str, UserStats]:
    """The first row of each person of the report."""
    firsts: dict[str, UserStats] = {}
    for user in report.users:
        firsts.setdefault(person_key(user.email), user)
    return firsts


def _naming(row: UserStats) -> tuple[str, str, str, str]:
    """What of a row may show in its person's labels, in any labels.user mode."""
    return (row.email, row.name, row.role, row.team_status)


def _groups_label(groups: Sequence[str]) -> str:
    """The `groups` label of someone in these groups (each once per row of theirs)."""
    if len(groups) < 2:
        return groups[0] if groups else ""
    return sys.intern(",".join(sorted(g for g in groups if g)))


def _recount(counts: dict[str, int], gone: Sequence[str], new: Sequence[str]) -> set[str]:
    """`counts` less `gone` plus `new`; returns the keys now repeated that were not, or the
    reverse."""
    delta = Counter(new)
    for key in gone:
        delta[key] -= 1
    known = delta.keys() & counts.keys()
    flipped = set()
    for key in known:
        count, step = counts[key], delta[key]
        if count + step:
            counts[key] = count + step
        else:
            del counts[key]
        if (count > 1) != (count + step > 1):
            flipped.add(key)
    # The rest are new: only `new` holds them (what is gone was counted).
    fresh = {key: step for key, step in delta.items() if key not in known}
    counts.update(fresh)
    flipped.update(key for key, step in fresh.items() if step > 1)
    return flipped


class _Lines:
    """Exposition lines by family, as they are added; a family's lines given all at once
    (`extend`) are compressed by the pool while the next family's are made."""

    def __init__(self) -> None:
        self._lines: dict[Family, list[str]] = {}
        self._soon: dict[Family, Future[Piece]] = {}

    def add(self, family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        self._lines.setdefault(family, []).append(f"{family.name}{labels(pairs)} {number(value)}\n")

    def extend(self, family: Family, lines: list[str]) -> None:
        """All of `family`'s lines (once a family)."""
        if lines:
            self._soon[family] = piece_soon("".join(lines))

    def static(self) -> dict[Family, Piece]:
        """The lines as pieces, each family's list dropped once compressed (a render's peak)."""
        out = {}
        for family in list(self._lines):
            out[family] = piece("".join(self._lines.pop(family)))
        out.update((family, soon.result()) for family, soon in self._soon.items())
        return out


def _group_piece(group: str, report: GroupReport, people: _People, config: Config) -> Rendered:
    lines = _Lines()
    _group_lines(lines.add, group, report, _joined_active(report, people.team, config))
    idle = idle_counts(GROUP_IDLE, [(("group", group), report.totals)], config)
    aggregates = Rendered(static=lines.static(), dynamic={GROUP_IDLE: idle})
    if not config.per_user:
        return aggregates
    # A member the team reply does not know yet (it changed between the requests) keeps the
    # row of this group's reply.
    own = {person_key(u.email): u for u in report.users}
    rows = {p: people.team.get(p) or u for p, u in own.items()}
    return _combine([aggregates, _seats_piece(group, rows, people)])


def _rest_piece(people: _People) -> Rendered:
    """The series of the team's people in no group, under group=""."""
    rest = people.rest()
    seats = _seats_piece("", {p: people.team[p] for p in rest}, people)
    return _combine([seats, _info_lines("", rest, people)])


def _info_piece(group: str, block: int, people: _People) -> Future[Piece]:
    """The info series of a block of the group's people, once each, in the order of its rows,
    compressed by the pool while the render goes on."""
    return piece_soon("".join(people.info_lines(group, people.in_block(group, block))))


def _info_lines(group: str, emails: Iterable[str], people: _People) -> Rendered:
    """These people's info series in `group`."""
    lines = _Lines()
    lines.extend(USER_INFO, people.info_lines(group, emails))
    return Rendered(static=lines.static())


def _seats_piece(group: str, rows: Mapping[str, UserStats], people: _People) -> Rendered:
    """The per-user series of these people in `group` but their info: each person's labels
    escaped once, each family's lines made in one pass over them."""
    g = escape(group)
    named = people.people
    who = [(f'{{group="{g}",user="{named[p].label}"', u) for p, u in rows.items()]
    last = [
        (f'{w},feature="{feature}"}} ', t)
        for w, u in who
        for feature, t in zip(FEATURES, u.last_usage, strict=True)
        if t is not None
    ]
    lines = _Lines()
    lines.extend(USER_ACTIVE, _active_lines(who))
    n = USER_CREDITS.name
    lines.extend(
        USER_CREDITS,
        [f"{n}{w}}} {number(u.prompt_credits)}\n" for w, u in who if u.prompt_credits is not None],
    )
    n = USER_LAST.name
    lines.extend(USER_LAST, [f"{n}{w}{number(t)}\n" for w, t in last])
    n = USER_SIGNUP.name
    lines.extend(
        USER_SIGNUP, [f"{n}{w}}} {number(u.signup)}\n" for w, u in who if u.signup is not None]
    )
    n = USER_DISABLED.name
    lines.extend(USER_DISABLED, [f"{n}{w}}} {int(u.disabled)}\n" for w, u in who])
    return Rendered(static=lines.static(), dynamic=_ages(who, last))


def _active_lines(who: Sequence[tuple[str, UserStats]]) -> list[str]:
    """The activeDays lines of these people (labels before the window's): people with the
    same activeDays share one mapping (build_report), whose lines' ends are made once."""
    shared = {id(u.active_days): u.active_days for _, u in who}
    ends = {
        key: [f',window="{escape(label)}"}} {number(d)}\n' for label, d in mapping.items()]
        for key, mapping in shared.items()
    }
    n = USER_ACTIVE.name
    return [f"{n}{w}{end}" for w, u in who for end in ends[id(u.active_days)]]


def _ages(
    who: Sequence[tuple[str, UserStats]], last: Sequence[tuple[str, float]]
) -> dict[Family, Callable[[float], Iterable[bytes]]]:
    """The lines of these people computed at scrape time: the ages of their last uses (`last`:
    each line's labels and time) and how long they have been idle."""
    ages = Ages([f"{USER_AGE.name}{w}" for w, _ in last], [t for _, t in last])
    idle_rows = [(w, t) for w, u in who if (t := u.idle_since) is not None]
    idle = Ages([f"{USER_IDLE.name}{w}}} " for w, _ in idle_rows], [t for _, t in idle_rows])
    return {USER_AGE: ages.render, USER_IDLE: idle.render}


def _combine(pieces: Sequence[Rendered]) -> Rendered:
    """Pieces of one source's lines as one: each family's lines in the order of the pieces,
    kept as the pieces' bytes (not joined: a piece reused by the next rendering is neither
    copied nor compressed again)."""
    static: dict[Family, tuple[Piece, ...]] = {}
    dynamic: dict[Family, Callable[[float], Iterable[bytes]]] = {}
    for family in USER_PAGE.families:
        chunks = [p.static[family] for p in pieces if family in p.static]
        if chunks:
            static[family] = tuple(b for c in chunks for b in ((c,) if isinstance(c, Piece) else c))
        renders = [p.dynamic[family] for p in pieces if family in p.dynamic]
        if renders:
            dynamic[family] = functools.partial(_joined, renders)
    return Rendered(static=static, dynamic=dynamic)


def _joined(renders: Sequence[Callable[[float], Iterable[bytes]]], now: float) -> Iterator[bytes]:
    for render in renders:
        yield from render(now)


Add = Callable[[Family, Sequence[tuple[str, str]], float], None]


def _group_lines(
    add: Add, group: str, report: GroupReport, active: Sequence[tuple[str, int]]
) -> None:
    g = ("group", group)
    add(GROUP_USERS, [g], report.rows)
    if report.billing_start is not None:
        add(BILLING_START, [g], report.billing_start)
    if report.billing_end is not None:
        add(BILLING_END, [g], report.billing_end)
    if report.updated is not None:
        add(GROUP_UPDATED, [g], report.updated)
    for window, count in active:
        add(GROUP_ACTIVE, [g, ("window", window)], count)
    agg = report.totals
    add(GROUP_BILLABLE, [g], agg.billable)
    add(GROUP_CREDITS, [g], agg.prompt_credits)
    for status, count in agg.by_team_status:
        add(GROUP_STATUS, [g, ("team_status", status)], count)
    for role, count in agg.by_role:
        add(GROUP_ROLE, [g, ("role", role)], count)
    for limit in ("max_rows", "max_label_length", "max_label_values"):
        add(LIMITED, [g, ("limit", limit)], report.limited.get(limit, 0))
    for key, count in report.unparsable.items():
        add(UNPARSABLE, [g, ("field", key)], count)


def _joined_active(
    report: GroupReport, team: Mapping[str, UserStats], config: Config
) -> list[tuple[str, int]]:
    """Active members per window: from the group's own replies, and for the windows only the
    team was asked about, from the members' team rows; absent when a member is missing there."""
    own = dict(report.totals.active)
    out = []
    for window in (w.label for w in config.windows):
        if window in own:
            out.append((window, own[window]))
            continue
        if not team:
            continue
        rows = [team.get(person_key(u.email)) for u in report.users]
        if all(rows):  # a member the team reply does not know yet makes the count unknown
            out.append((window, sum(1 for r in rows if r and r.active_days.get(window, 0) > 0)))
    return out


def idle_counts(
    family: Family, totals: Sequence[tuple[tuple[str, str] | None, Totals]], config: Config
) -> Callable[[float], Iterable[bytes]]:
    """`family`'s lines at scrape time: billable users idle beyond each idle_thresholds entry,
    per labelled set of totals (None: no label)."""

    def render(now: float) -> Iterable[bytes]:
        text = "".join(
            f"{family.name}{labels([*([label] if label else []), ('idle_for', t.label)])} "
            f"{bisect.bisect_left(agg.idle_since, now - t.seconds)}\n"
            for label, agg in totals
            for t in config.idle_thresholds
        )
        return (utf8(text),)

    return render
