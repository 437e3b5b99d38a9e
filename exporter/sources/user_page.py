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
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config import Config
from exporter.exposition import Ages, Family, labels, number, utf8
from exporter.sources.base import Rendered, Request
from exporter.sources.values import parse_bool, parse_count, parse_time, text
from exporter.state import MalformedResponse

METHOD = "UserPageAnalytics"
FEATURES = ("autocomplete", "chat", "command")
_FEATURE_FIELDS = (
    "lastAutocompleteUsageTime",
    "lastChatUsageTime",
    "lastCommandUsageTime",
)
_APPROVED = "USER_TEAM_STATUS_APPROVED"
_CACHED = " Cached from the last successful poll."


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
    """One decoded UserPageAnalytics reply."""

    rows: tuple[Mapping[str, Any], ...]
    billing_start: float | None
    billing_end: float | None


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


def totals(users: Sequence[UserStats], windows: Sequence[str]) -> Totals:
    return Totals(
        active=tuple(
            (window, sum(1 for u in users if u.active_days.get(window, 0) > 0))
            for window in windows
        ),
        billable=sum(1 for u in users if u.billable),
        prompt_credits=sum(u.prompt_credits or 0 for u in users),
        by_team_status=tuple(sorted(Counter(u.team_status for u in users).items())),
        by_role=tuple(sorted(Counter(u.role for u in users).items())),
        idle_since=tuple(
            sorted(u.idle_since for u in users if u.billable and u.idle_since is not None)
        ),
    )


@dataclass(frozen=True, slots=True)
class GroupReport:
    """Everything one group's poll produced: its users, billing cycle and aggregates."""

    users: tuple[UserStats, ...]
    rows: int
    skipped: int
    billing_start: float | None = None
    billing_end: float | None = None
    totals: Totals = field(default_factory=Totals)
    updated: float | None = None  # the newest lastUpdateTime: when the API last refreshed


def request_body(group: str, start: float, end: float) -> dict[str, str]:
    body = {"start_timestamp": _rfc3339(start), "end_timestamp": _rfc3339(end)}
    if group:
        body["group_name"] = group
    return body


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def decode_page(document: Any) -> Page:
    """Top-level reply -> Page; protobuf JSON omits an empty userTableStats: absent means none."""
    if not isinstance(document, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(document).__name__}")
    rows = document.get("userTableStats")
    if rows is None:
        rows = []
    if not isinstance(rows, list):
        raise MalformedResponse("userTableStats is not a list")
    return Page(
        rows=tuple(rows),
        billing_start=parse_time(document.get("billingCycleStart")),
        billing_end=parse_time(document.get("billingCycleEnd")),
    )


def build_report(pages: Sequence[tuple[str, Page]]) -> GroupReport:
    """Merge one group's pages (one per window) into users keyed by email, with its aggregates.

    The first page says who is in the group (windsurf_group_users counts its rows); later
    pages only add their window's activeDays, so a user who joined between the requests waits
    for the next poll. Rows without an email have no stable identity and are skipped; a
    repeated email keeps its first row, so the exposition never holds duplicate series.
    """
    users: dict[str, dict[str, Any]] = {}
    skipped = 0
    for index, (window, page) in enumerate(pages):
        for row in page.rows:
            email = text(row.get("email")).strip() if isinstance(row, dict) else ""
            if not email:
                skipped += index == 0
                continue
            if email not in users:
                if index > 0:
                    continue
                users[email] = {"row": row, "active": {}}
            elif index == 0:
                skipped += 1
                continue
            days = parse_count(row.get("activeDays"))
            if days is not None:
                users[email]["active"].setdefault(window, days)
    first = pages[0][1] if pages else Page((), None, None)
    stats = tuple(_user(email, u["row"], u["active"]) for email, u in users.items())
    return GroupReport(
        users=stats,
        rows=len(first.rows),
        skipped=skipped,
        billing_start=first.billing_start,
        billing_end=first.billing_end,
        totals=totals(stats, [window for window, _ in pages]),
        updated=newest_update(pages),
    )


def newest_update(pages: Sequence[tuple[str, Page]]) -> float | None:
    """The newest `lastUpdateTime` of any row: the API refreshes its numbers every few hours,
    and this says when it last did for these people (None when no row says)."""
    times = (
        parse_time(row.get("lastUpdateTime"))
        for _, page in pages
        for row in page.rows
        if isinstance(row, dict)
    )
    return max((t for t in times if t is not None), default=None)


def _user(email: str, row: Mapping[str, Any], active: Mapping[str, float]) -> UserStats:
    usage = tuple(parse_time(row.get(f)) for f in _FEATURE_FIELDS)
    return UserStats(
        email=email,
        name=text(row.get("name")),
        # A handful of values repeated on every row: one string each, not one per user.
        role=sys.intern(text(row.get("role"))),
        team_status=sys.intern(text(row.get("teamStatus"))),
        disabled=parse_bool(row.get("disableCodeium")),
        signup=parse_time(row.get("signupTime")),
        last_usage=(usage[0], usage[1], usage[2]),
        prompt_credits=parse_count(row.get("promptCreditsUsed")),
        active_days=dict(active),
    )


def user_hash(email: str, salt: str = "") -> str:
    """`hash` mode's pseudonym: follows a user across polls, groups and restarts without
    saying who it is (SHA-256 of the salt and the lower-cased email, in hex)."""
    return hashlib.sha256((salt + email.lower()).encode()).hexdigest()


def user_labels(
    users: Sequence[UserStats], config: Config
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each user's `user` label and extra info labels in the configured labels.user mode.

    Only `email` mode shows emails and names. Names repeat, so in `name` mode a name shared
    within the group, or an empty one, gets ` #` and 8 hex digits of the user's salted email
    hash: distinct series that do not depend on the order of the rows.
    """
    mode = config.labels.user
    salt = config.labels.hash_salt.reveal()
    if mode == "email":
        return [
            (
                u.email,
                [
                    ("name", u.name),
                    ("email", u.email),
                    ("role", u.role),
                    ("team_status", u.team_status),
                ],
            )
            for u in users
        ]
    values = [user_hash(u.email, salt) if mode == "hash" else u.name for u in users]
    taken = Counter(values)
    out = []
    for user, value in zip(users, values, strict=True):
        label = value
        if taken[value] > 1 or not value:
            suffix = hashlib.sha256((salt + user.email).encode()).hexdigest()[:8]
            label = f"{value} #{suffix}".lstrip()
        out.append((label, [("role", user.role), ("team_status", user.team_status)]))
    return out


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


class UserPage:
    """The UserPageAnalytics source: one target per configured group ("" = the whole team)."""

    name: str = "user_page"
    target_label: str = "group"
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
    )

    def targets(self, config: Config) -> tuple[str, ...]:
        return config.groups

    def depends_on(self, config: Config) -> Hashable:
        return config.windows

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        return tuple(
            Request(METHOD, request_body(target, now - w.seconds, now), target, w)
            for w in config.windows
        )

    def parse(self, request: Request, document: Any) -> Page:
        return decode_page(document)

    def report(
        self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]
    ) -> GroupReport:
        return build_report([(r.window.label if r.window else "", page) for r, page in replies])

    def render(self, config: Config, target: str, report: GroupReport) -> Rendered:
        return render_group(target, report, config)


USER_PAGE = UserPage()


def render_group(group: str, report: GroupReport, config: Config) -> Rendered:
    """A group's report -> its lines, the per-user ones only with `per_user`."""
    g = ("group", group)
    lines: dict[Family, list[str]] = {}

    def add(family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        lines.setdefault(family, []).append(f"{family.name}{labels(pairs)} {number(value)}")

    add(GROUP_USERS, [g], report.rows)
    if report.billing_start is not None:
        add(BILLING_START, [g], report.billing_start)
    if report.billing_end is not None:
        add(BILLING_END, [g], report.billing_end)
    if report.updated is not None:
        add(GROUP_UPDATED, [g], report.updated)
    agg = report.totals
    for window, active in agg.active:
        add(GROUP_ACTIVE, [g, ("window", window)], active)
    add(GROUP_BILLABLE, [g], agg.billable)
    add(GROUP_CREDITS, [g], agg.prompt_credits)
    for status, count in agg.by_team_status:
        add(GROUP_STATUS, [g, ("team_status", status)], count)
    for role, count in agg.by_role:
        add(GROUP_ROLE, [g, ("role", role)], count)
    ages: list[tuple[str, float]] = []
    idle: list[tuple[str, float]] = []
    if config.per_user:
        for user, (name, info) in zip(report.users, user_labels(report.users, config), strict=True):
            who = [g, ("user", name)]
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
    static = {f: utf8("".join([line + "\n" for line in ls])) for f, ls in lines.items()}

    def idle_counts(now: float) -> str:
        return "".join(
            f"{GROUP_IDLE.name}{labels([g, ('idle_for', t.label)])} "
            f"{bisect.bisect_left(report.totals.idle_since, now - t.seconds)}\n"
            for t in config.idle_thresholds
        )

    return Rendered(
        static=static,
        dynamic={
            USER_AGE: Ages(ages).render,
            USER_IDLE: Ages(idle).render,
            GROUP_IDLE: idle_counts,
        },
    )
