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
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.config import Config, Limits, Window
from exporter.exposition import Ages, Family, Piece, labels, number, piece, utf8
from exporter.sources.base import Health, Live, Parts, Rendered, Request
from exporter.sources.values import (
    bool_field,
    count_field,
    json_list,
    json_object,
    text_field,
    time_field,
)

log = logging.getLogger("exporter.user_page")

METHOD = "UserPageAnalytics"
FEATURES = ("autocomplete", "chat", "command")
_FEATURE_FIELDS = (
    "lastAutocompleteUsageTime",
    "lastChatUsageTime",
    "lastCommandUsageTime",
)
_APPROVED = "USER_TEAM_STATUS_APPROVED"
_CACHED = " Cached from the last successful poll."
_DAY = 86400.0
# Impossible values are unusable, not data: counts are never negative, credits stay far below
# where a sum of every row could overflow, activeDays fit the window asked (a day more for the
# partial days at its ends), and times are not after the request, give or take clock skew.
_MAX_CREDITS = 1e15
_MAX_DAYS = 366 * 100.0  # a request without a window
_CLOCK_SKEW = 3600.0
_HEX = frozenset("0123456789abcdef")
OTHER = "other"  # the role / team_status value of those over limits.max_label_values


@dataclass(frozen=True, slots=True)
class UserStats:
    """One user's row of a group, merged across the configured activeDays windows."""

    email: str
    name: str = ""
    role: str = ""
    team_status: str = ""
    disabled: bool = False
    signup: float | None = None
    last_usage: tuple[float | None, float | None, float | None] = (None, None, None)
    prompt_credits: float | None = None
    active_days: Mapping[str, float] = field(default_factory=dict)

    @property
    def last_any_usage(self) -> float | None:
        used = [t for t in self.last_usage if t is not None]
        return max(used) if used else None

    @property
    def idle_since(self) -> float | None:
        """When the seat last did anything: its latest use, else when it joined."""
        last = self.last_any_usage
        return last if last is not None else self.signup

    @property
    def billable(self) -> bool:
        return self.team_status == _APPROVED and not self.disabled


@dataclass(frozen=True, slots=True)
class Page:
    """One decoded UserPageAnalytics reply: its rows with an email, the activeDays of each
    (None: unknown), and what reading it left out or could not use."""

    rows: tuple[UserStats, ...]
    billing_start: float | None
    billing_end: float | None
    active_days: tuple[float | None, ...] = ()
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
    return Totals(
        active=tuple(
            (window, sum(1 for u in users if u.active_days.get(window, 0) > 0))
            for window in windows
            if window not in unknown
        ),
        billable=sum(1 for u in users if u.billable),
        prompt_credits=sum(u.prompt_credits or 0 for u in users),
        by_team_status=by_status,
        by_role=by_role,
        idle_since=tuple(
            sorted(u.idle_since for u in users if u.billable and u.idle_since is not None)
        ),
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
    `_Reader`) is unknown and counted, so a hostile reply costs no more than a plain one.
    """
    document = json_object(document)
    rows = json_list(document, "userTableStats")
    reader = _Reader(request or Request(METHOD, {}, ""))
    kept = rows[: reader.limits.max_rows]
    users = [u for u in map(reader.user, kept) if u is not None]
    # When the API last refreshed these people's numbers (it does every few hours).
    updates = [reader.time(row, "lastUpdateTime") for row in kept if isinstance(row, dict)]
    return Page(
        rows=tuple(u for u, _ in users),
        billing_start=reader.time(document, "billingCycleStart"),
        billing_end=reader.time(document, "billingCycleEnd", math.inf),
        active_days=tuple(days for _, days in users),
        size=len(rows),
        no_email=len(kept) - len(users),
        limited={"max_rows": len(rows) - len(kept), "max_label_length": reader.cut},
        unparsable=dict(reader.unparsable),
        updated=max((t for t in updates if t is not None), default=None),
    )


class _Reader:
    """Reads one reply's values against its request: times not after it was asked (plus clock
    skew), activeDays within its window, credits and counts not negative nor absurd, strings
    as label values can hold them. Counts what it cannot use, and the strings it cuts."""

    def __init__(self, request: Request) -> None:
        window = request.window
        self.limits = request.limits
        self.max_days = math.ceil(window.seconds / _DAY) + 1 if window else _MAX_DAYS
        asked = request.asked_at
        self.latest = math.inf if asked is None else asked + _CLOCK_SKEW
        self.unparsable: Counter[str] = Counter()
        self.cut = 0

    def _bad(self, key: str, bad: bool) -> None:
        if bad:
            self.unparsable[key] += 1

    def time(self, row: Mapping[str, Any], key: str, latest: float | None = None) -> float | None:
        value, bad = time_field(row.get(key), self.latest if latest is None else latest)
        self._bad(key, bad)
        return value

    def count(self, row: Mapping[str, Any], key: str, maximum: float) -> float | None:
        value, bad = count_field(row.get(key), maximum)
        self._bad(key, bad)
        return value

    def text(self, row: Mapping[str, Any], key: str) -> str:
        value, bad = text_field(row.get(key))
        self._bad(key, bad)
        label, cut = label_value(value.strip() if key == "email" else value, self.limits)
        self.cut += cut
        return label

    def user(self, row: Any) -> tuple[UserStats, float | None] | None:
        """A row with an email -> its UserStats and activeDays; None for a row with no email."""
        if not isinstance(row, dict):
            return None
        email = self.text(row, "email")
        if not email:
            return None
        usage = [self.time(row, f) for f in _FEATURE_FIELDS]
        days = self.count(row, "activeDays", self.max_days)
        disabled, bad = bool_field(row.get("disableCodeium"))
        self._bad("disableCodeium", bad)
        stats = UserStats(
            email=email,
            name=self.text(row, "name"),
            # A handful of values repeated on every row: one string each, not one per user.
            role=sys.intern(self.text(row, "role")),
            team_status=sys.intern(self.text(row, "teamStatus")),
            disabled=disabled,
            signup=self.time(row, "signupTime"),
            last_usage=(usage[0], usage[1], usage[2]),
            prompt_credits=self.count(row, "promptCreditsUsed", _MAX_CREDITS),
        )
        return stats, days


def label_value(value: str, limits: Limits) -> tuple[str, bool]:
    """Any string JSON can carry -> one a label can hold, and whether it was cut: valid UTF-8
    (a lone surrogate becomes U+FFFD) of at most `limits.max_label_length` characters, a longer
    one keeping its start and ending in `…` and 8 hex digits of its hash, so cut values stay
    distinct."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode()
    most = limits.max_label_length
    if len(value) <= most:
        return value, False
    return f"{value[: most - 9]}…{_digest(value)[:8]}", True


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
    users: dict[str, UserStats] = {}
    active: dict[str, dict[str, float]] = {}
    skipped = first.no_email
    missing: set[str] = set()  # windows whose reply lacks someone of the first
    for index, (window, page) in enumerate(pages):
        seen = set()
        for user, days in zip(page.rows, page.active_days, strict=True):
            if index == 0 and user.email in users:
                skipped += 1
                continue
            if index == 0:
                users[user.email], active[user.email] = user, {}
            elif user.email not in users:
                continue
            seen.add(user.email)
            if days is not None:
                active[user.email].setdefault(window, days)
        if len(seen) < len(users):
            missing.add(window)
    stats = tuple(replace(u, active_days=active[e]) for e, u in users.items())
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
    if mode == "email":
        values = [u.email for u in users]
    else:
        values = [user_hash(u.email, salt) if mode == "hash" else u.name for u in users]
    names = distinct(values, [u.email for u in users], salt)
    if mode == "email":
        return [
            (
                name,
                [
                    ("name", u.name),
                    ("email", u.email),
                    ("role", u.role),
                    ("team_status", u.team_status),
                ],
            )
            for name, u in zip(names, users, strict=True)
        ]
    return [
        (name, [("role", u.role), ("team_status", u.team_status)])
        for name, u in zip(names, users, strict=True)
    ]


def distinct(values: Sequence[str], emails: Sequence[str], salt: str) -> list[str]:
    """`values` made distinct, whatever they hold: a value that is empty, repeated, or could be
    mistaken for a suffixed one gets ` #` and 8 hex digits of the user's salted email hash,
    independent of the order of the rows; where those collide too, all 64. Emails are distinct."""
    taken = Counter(values)
    out = [
        f"{v} #{_digest(salt + e)[:8]}".lstrip() if taken[v] > 1 or _suffixed(v) else v
        for v, e in zip(values, emails, strict=True)
    ]
    again = Counter(out)
    return [
        f"{v} #{_digest(salt + e)}".lstrip() if again[o] > 1 else o
        for v, e, o in zip(values, emails, out, strict=True)
    ]


def _suffixed(value: str) -> bool:
    """Empty, or ending like a disambiguated value (` #` and 8 or more hex digits)."""
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
    configured limits."""
    return tuple(
        Request(METHOD, request_body(group, now - w.seconds, now), group, w, now, config.limits)
        for w in windows
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

    A group's lines are redone only when its report, the team's, the config or its members'
    labels (their groups included) changed; so is the group-less rest of the team's.
    """
    people = _People(groups, team, config)
    pieces = []
    for group, report in groups:
        members = [u.email.lower() for u in report.users]
        make = functools.partial(_group_piece, group, report, people, config)
        pieces.append(
            parts.get(("group", group), (report, team, config), people.sig(members), make)
        )
    if config.per_user and team is not None and people.complete:
        rest = [e for e in people.stats if e not in people.member_of]
        make = functools.partial(_seats_piece, "", rest, people, config)
        pieces.append(parts.get(("no group",), (team, config), people.sig(rest), make))
    return _combine(pieces)


class _People:
    """Everyone of the live groups and the team, by lower-cased email (emails differ in case
    between replies): their stats (the team's row, else their first group's), the groups they
    are in, and their labels, named across the whole team so a person has one label."""

    def __init__(
        self, groups: Sequence[tuple[str, GroupReport]], team: GroupReport | None, config: Config
    ) -> None:
        self.team = {u.email.lower(): u for u in team.users} if team else {}
        self.stats = dict(self.team)
        self.member_of: dict[str, list[str]] = {}
        for group, report in groups:
            for user in report.users:
                self.member_of.setdefault(user.email.lower(), []).append(group)
                self.stats.setdefault(user.email.lower(), user)
        # Who is in no group is known only when every configured group's members are.
        self.complete = {g for g, _ in groups} == set(USER_PAGE.targets(config))
        self.named: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        if config.per_user:  # labels only name per-user series
            labelled = user_labels(list(self.stats.values()), config)
            self.named = dict(zip(self.stats, labelled, strict=True))

    def info(self, email: str) -> tuple[str, list[tuple[str, str]]]:
        """A person's `user` label and info labels, `groups` last."""
        name, info = self.named[email]
        groups = ",".join(sorted(g for g in self.member_of.get(email, ()) if g))
        return name, [*info, ("groups", groups)]

    def sig(self, emails: Sequence[str]) -> Hashable:
        """What these people's lines show besides their stats: their labels, as a digest
        (kept until the next rendering: the labels themselves would cost megabytes)."""
        if not self.named:
            return ()
        digest = hashlib.blake2b()
        for email in emails:
            digest.update(repr((email, self.info(email))).encode())
        return digest.digest()


class _Lines:
    """Exposition lines by family, as they are added."""

    def __init__(self) -> None:
        self._lines: dict[Family, list[str]] = {}

    def add(self, family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        self._lines.setdefault(family, []).append(f"{family.name}{labels(pairs)} {number(value)}\n")

    def static(self) -> dict[Family, Piece]:
        """The lines as pieces, each family's list dropped once compressed (a render's peak)."""
        out = {}
        for family in list(self._lines):
            out[family] = piece("".join(self._lines.pop(family)))
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
    own = {u.email.lower(): u for u in report.users}
    seats = _seats_piece(group, list(own), people, config, own)
    return _combine([aggregates, seats])


def _seats_piece(
    group: str,
    emails: Sequence[str],
    people: _People,
    config: Config,
    own: Mapping[str, UserStats] | None = None,
) -> Rendered:
    """The per-user series of these people in `group`."""
    lines = _Lines()
    add = lines.add
    ages: list[tuple[str, float]] = []
    idle: list[tuple[str, float]] = []
    for email in emails:
        user = people.team.get(email) or (own or people.stats)[email]
        name, info = people.info(email)
        who = [("group", group), ("user", name)]
        for label, days in user.active_days.items():
            add(USER_ACTIVE, [*who, ("window", label)], days)
        if user.prompt_credits is not None:
            add(USER_CREDITS, who, user.prompt_credits)
        for feature, last in zip(FEATURES, user.last_usage, strict=True):
            if last is not None:
                add(USER_LAST, [*who, ("feature", feature)], last)
                ages.append((f"{USER_AGE.name}{labels([*who, ('feature', feature)])} ", last))
        if user.signup is not None:
            add(USER_SIGNUP, who, user.signup)
        add(USER_DISABLED, who, float(user.disabled))
        add(USER_INFO, [*who, *info], 1)
        if user.idle_since is not None:
            idle.append((f"{USER_IDLE.name}{labels(who)} ", user.idle_since))
    dynamic = {USER_AGE: Ages(ages).render, USER_IDLE: Ages(idle).render}
    return Rendered(static=lines.static(), dynamic=dynamic)


def _combine(pieces: Sequence[Rendered]) -> Rendered:
    """Pieces of one source's lines as one: each family's lines in the order of the pieces,
    kept as the pieces' bytes (not joined: a piece reused by the next rendering is neither
    copied nor compressed again)."""
    static: dict[Family, tuple[bytes, ...]] = {}
    dynamic: dict[Family, Callable[[float], Iterable[bytes]]] = {}
    for family in USER_PAGE.families:
        chunks = [p.static[family] for p in pieces if family in p.static]
        if chunks:
            static[family] = tuple(b for c in chunks for b in ((c,) if isinstance(c, bytes) else c))
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
        rows = [team.get(u.email.lower()) for u in report.users]
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
