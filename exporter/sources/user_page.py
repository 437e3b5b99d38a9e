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
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config import Config, Window
from exporter.exposition import Ages, Family, labels, number, utf8
from exporter.sources.base import Health, Live, Parts, Rendered, Request
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
        # A window's count only when every user has its activeDays: a person missing from that
        # window's reply (the team changed between two requests) makes the count unknown.
        active=tuple(
            (window, sum(1 for u in users if u.active_days[window] > 0))
            for window in windows
            if all(window in u.active_days for u in users)
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
    )


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


class Replies:
    """How a UserPageAnalytics source reads its replies: pages, merged by email across windows."""

    def parse(self, request: Request, document: Any) -> Page:
        return decode_page(document)

    def report(
        self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]
    ) -> GroupReport:
        return build_report([(r.window.label if r.window else "", page) for r, page in replies])


class UserPage(Replies):
    """The UserPageAnalytics source, one target per configured group.

    Without the team poll (`team: false`) each group is asked once per window, and with no
    groups configured the whole team is the one group "". With it, each group is asked once,
    for the first window, for its members and their rows; the other windows' activeDays come
    from the team's replies, joined by email.
    """

    name: str = "user_page"
    health: Health = Health(prefix="", label="group", subject="group")
    families: tuple[Family, ...] = (
        GROUP_USERS,
        BILLING_START,
        BILLING_END,
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
        return tuple(g for g in config.groups if g) if config.team else config.groups

    def depends_on(self, config: Config) -> Hashable:
        return (config.windows, config.team)

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        return plan(config.windows[:1] if config.team else config.windows, target, now)

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


def plan(windows: Sequence[Window], group: str, now: float) -> tuple[Request, ...]:
    """One request per window for `group` ("" = the whole team)."""
    return tuple(
        Request(METHOD, request_body(group, now - w.seconds, now), group, w) for w in windows
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
        """What these people's lines show besides their stats: their labels."""
        if not self.named:
            return ()
        out = []
        for email in emails:
            name, info = self.info(email)
            out.append((email, name, *info))
        return tuple(out)


class _Lines:
    """Exposition lines by family, as they are added."""

    def __init__(self) -> None:
        self._lines: dict[Family, list[str]] = {}

    def add(self, family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        self._lines.setdefault(family, []).append(f"{family.name}{labels(pairs)} {number(value)}")

    def static(self) -> dict[Family, bytes]:
        return {f: utf8("".join([line + "\n" for line in ls])) for f, ls in self._lines.items()}


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
    """Pieces of one source's lines as one: each family's lines in the order of the pieces."""
    static: dict[Family, bytes] = {}
    dynamic: dict[Family, Callable[[float], str]] = {}
    for family in USER_PAGE.families:
        chunks = [p.static[family] for p in pieces if family in p.static]
        if chunks:
            static[family] = b"".join(chunks)
        renders = [p.dynamic[family] for p in pieces if family in p.dynamic]
        if renders:
            dynamic[family] = functools.partial(_joined, renders)
    return Rendered(static=static, dynamic=dynamic)


def _joined(renders: Sequence[Callable[[float], str]], now: float) -> str:
    return "".join([render(now) for render in renders])


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
    for window, count in active:
        add(GROUP_ACTIVE, [g, ("window", window)], count)
    agg = report.totals
    add(GROUP_BILLABLE, [g], agg.billable)
    add(GROUP_CREDITS, [g], agg.prompt_credits)
    for status, count in agg.by_team_status:
        add(GROUP_STATUS, [g, ("team_status", status)], count)
    for role, count in agg.by_role:
        add(GROUP_ROLE, [g, ("role", role)], count)


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
        days = [r.active_days.get(window) if r else None for r in rows]
        if None not in days:
            out.append((window, sum(1 for d in days if d)))
    return out


def idle_counts(
    family: Family, totals: Sequence[tuple[tuple[str, str] | None, Totals]], config: Config
) -> Callable[[float], str]:
    """`family`'s lines at scrape time: billable users idle beyond each idle_thresholds entry,
    per labelled set of totals (None: no label)."""

    def render(now: float) -> str:
        return "".join(
            f"{family.name}{labels([*([label] if label else []), ('idle_for', t.label)])} "
            f"{bisect.bisect_left(agg.idle_since, now - t.seconds)}\n"
            for label, agg in totals
            for t in config.idle_thresholds
        )

    return render
