"""Snapshot + now -> Prometheus exposition (text 0.0.4 or OpenMetrics), with no I/O.

Everything that does not depend on the scrape time is rendered once per poll result and cached
(also gzip-compressed); only ages and idle counts are formatted per scrape. The exposition, for a
group "eng" with one user, looks like:

    windsurf_up{group="eng"} 1
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
import platform
import threading
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import AnyStr

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as om_exposition

from exporter import __version__
from exporter.api import Reason
from exporter.config import Config
from exporter.model import FEATURES, GroupReport, UserStats
from exporter.poller import GroupState, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_REASONS = tuple(r.value for r in Reason)
_OUTCOMES = ("success", *_REASONS)
_CACHED = " Cached from the last successful poll."


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: str = "gauge"

    def header(self, openmetrics: bool) -> str:
        """HELP and TYPE lines; OpenMetrics names counters and infos without their suffix."""
        if not openmetrics:
            kind = "gauge" if self.type == "info" else self.type
            return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {kind}\n"
        name = self.name.removesuffix({"counter": "_total", "info": "_info"}.get(self.type, ""))
        return f"# HELP {name} {self.help}\n# TYPE {name} {self.type}\n"


def _f(name: str, help_: str, type_: str = "gauge") -> Family:
    return Family(name, help_, type_)


# Health: always exported, even for a group whose data has gone stale.
UP = _f("windsurf_up", "1 if the last poll of the group's UserPageAnalytics succeeded, else 0.")
LAST_SUCCESS = _f(
    "windsurf_exporter_last_success_timestamp_seconds",
    "Unix time of the group's last successful poll.",
)
LAST_POLL = _f(
    "windsurf_exporter_last_poll_timestamp_seconds",
    "Unix time the group's last poll started, successful or not.",
)
POLL_DURATION = _f(
    "windsurf_exporter_last_poll_duration_seconds",
    "Seconds the group's last poll took, retries included.",
)
POLLS = _f("windsurf_exporter_polls_total", "Polls of the group, successful or not.", "counter")
POLL_ERRORS = _f(
    "windsurf_exporter_poll_errors_total", "Failed polls of the group by reason.", "counter"
)
REQUESTS = _f(
    "windsurf_exporter_api_requests_total",
    "UserPageAnalytics requests by outcome, retries included.",
    "counter",
)
SKIPPED = _f(
    "windsurf_exporter_skipped_rows",
    "Rows of the group's last reply left out: no email, or an email seen twice." + _CACHED,
)
BUILD = _f(
    "windsurf_exporter_build_info", "Version of windsurf-exporter; value is always 1.", "info"
)
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

_HEALTH = (UP, LAST_SUCCESS, LAST_POLL, POLL_DURATION, POLLS, POLL_ERRORS, REQUESTS, SKIPPED)
_GROUP_DATA = (
    GROUP_USERS,
    BILLING_START,
    BILLING_END,
    GROUP_ACTIVE,
    GROUP_BILLABLE,
    GROUP_CREDITS,
    GROUP_STATUS,
    GROUP_ROLE,
)
_USER_DATA = (USER_ACTIVE, USER_CREDITS, USER_LAST, USER_SIGNUP, USER_DISABLED, USER_INFO)


def escape(value: str) -> str:
    """A label value as the exposition formats need it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join([f'{k}="{escape(v)}"' for k, v in pairs]) + "}"


def number(value: float) -> str:
    """Integers without a fraction, other floats as shortest round-trip repr."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


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


class _Ages:
    """Lines whose value is `now - t` at scrape time, clamped at 0 so clock skew reads as 0.

    Kept as [text before the value, a slot for it, newline] per line: a scrape only formats the
    numbers into a copy and joins it, the hot loop of every scrape.
    """

    __slots__ = ("_parts", "_times")

    def __init__(self, lines: Iterable[tuple[str, float]]) -> None:
        self._parts: list[str] = []
        self._times: list[float] = []
        for prefix, t in lines:
            self._parts += (prefix, "", "\n")
            self._times.append(t)

    def render(self, now: float) -> str:
        parts = self._parts.copy()  # scrapes may run concurrently: each fills its own copy
        parts[1::3] = [f"{now - t if t < now else 0.0:.3f}" for t in self._times]
        return "".join(parts)


@dataclass(frozen=True)
class _Prepared:
    """One group's report, pre-rendered: static chunks (UTF-8, shared by both formats) and what
    ages need at scrape time."""

    chunks: dict[Family, bytes]
    ages: _Ages
    idle: _Ages
    idle_since: list[float]  # billable users, sorted, for windsurf_group_idle_users


def _prepare(group: str, report: GroupReport, config: Config) -> _Prepared:
    g = ("group", group)
    lines: dict[Family, list[str]] = {f: [] for f in (*_GROUP_DATA, *_USER_DATA)}
    ages: list[tuple[str, float]] = []
    idle: list[tuple[str, float]] = []

    def add(family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        lines[family].append(f"{family.name}{labels(pairs)} {number(value)}")

    add(GROUP_USERS, [g], report.rows)
    if report.billing_start is not None:
        add(BILLING_START, [g], report.billing_start)
    if report.billing_end is not None:
        add(BILLING_END, [g], report.billing_end)
    for window in config.windows:
        active = sum(1 for u in report.users if u.active_days.get(window.label, 0) > 0)
        add(GROUP_ACTIVE, [g, ("window", window.label)], active)
    add(GROUP_BILLABLE, [g], sum(1 for u in report.users if u.billable))
    add(GROUP_CREDITS, [g], sum(u.prompt_credits or 0 for u in report.users))
    for status, count in sorted(Counter(u.team_status for u in report.users).items()):
        add(GROUP_STATUS, [g, ("team_status", status)], count)
    for role, count in sorted(Counter(u.role for u in report.users).items()):
        add(GROUP_ROLE, [g, ("role", role)], count)
    idle_since = sorted(
        u.idle_since for u in report.users if u.billable and u.idle_since is not None
    )

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
    chunks = {f: _utf8("".join([line + "\n" for line in ls])) for f, ls in lines.items() if ls}
    return _Prepared(chunks, _Ages(ages), _Ages(idle), idle_since)


def _utf8(text: str) -> bytes:
    # JSON can carry lone surrogates; one bad name must not make every scrape fail.
    return text.encode("utf-8", "replace")


def _health(state: GroupState) -> dict[Family, str]:
    """The group's health series; none before its first poll, since unknown is not down."""
    if not state.polls:
        return {}
    g = labels([("group", state.name)])
    out = {UP: f"{UP.name}{g} {int(state.up)}\n", POLLS: f"{POLLS.name}{g} {state.polls}\n"}
    if state.last_success is not None:
        out[LAST_SUCCESS] = f"{LAST_SUCCESS.name}{g} {number(state.last_success)}\n"
    if state.last_attempt is not None:
        out[LAST_POLL] = f"{LAST_POLL.name}{g} {number(state.last_attempt)}\n"
    if state.last_duration is not None:
        out[POLL_DURATION] = f"{POLL_DURATION.name}{g} {state.last_duration:.6f}\n"
    out[POLL_ERRORS] = _counter(POLL_ERRORS, state.name, "reason", _REASONS, state.errors)
    out[REQUESTS] = _counter(REQUESTS, state.name, "outcome", _OUTCOMES, state.requests)
    if state.report is not None:
        out[SKIPPED] = f"{SKIPPED.name}{g} {state.report.skipped}\n"
    return out


def _counter(
    family: Family, group: str, label: str, keys: Sequence[str], counts: Mapping[str, int]
) -> str:
    """One series per key, zero included, so rate() sees a counter from its first poll."""
    return "".join(
        f"{family.name}{labels([('group', group), (label, key)])} {counts.get(key, 0)}\n"
        for key in keys
    )


def is_live(state: GroupState, now: float, max_staleness: float) -> bool:
    """Whether the group's data may still be shown: it exists and is younger than the limit."""
    return (
        state.report is not None
        and state.last_success is not None
        and now - state.last_success <= max_staleness
    )


@dataclass
class _Static:
    """The part of the exposition that only a new poll changes, for one snapshot and format:
    its pieces (the groups' chunks, not copies) and, once a scrape asks for gzip, the pieces
    compressed and the compressor's state after them."""

    snapshot: Snapshot
    live: tuple[bool, ...]
    pieces: list[bytes]
    gzip: zlib._Compress | None = None
    gzip_head: bytes = b""


class Collector:
    """Renders Snapshots; owns the per-poll caches so repeated scrapes cost only the ages."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        self._prepared: dict[str, tuple[GroupReport, Config, _Prepared]] = {}
        self._static: dict[bool, _Static] = {}
        self._lock = threading.Lock()
        self._build = (
            f"{BUILD.name}"
            f"{labels([('version', __version__), ('python_version', platform.python_version())])}"
            " 1\n"
        )

    def render(
        self, snapshot: Snapshot, now: float, openmetrics: bool = False, gzip: bool = False
    ) -> bytes:
        """The whole exposition at time `now`, gzip-compressed when asked."""
        config = snapshot.config
        live = tuple(is_live(s, now, config.poll.max_staleness) for s in snapshot.groups)
        prepared = [
            self._prepare(s, config) if ok else None
            for s, ok in zip(snapshot.groups, live, strict=True)
        ]
        static = self._static_part(snapshot, live, prepared, openmetrics)
        dynamic = _utf8(self._dynamic_part(snapshot, prepared, now, openmetrics))
        if not gzip:
            return b"".join([*static.pieces, dynamic])
        with self._lock:
            if static.gzip is None:
                static.gzip = zlib.compressobj(1, zlib.DEFLATED, 31)
                head = [static.gzip.compress(piece) for piece in static.pieces]
                static.gzip_head = b"".join([*head, static.gzip.flush(zlib.Z_SYNC_FLUSH)])
            compressor = static.gzip.copy()
        return static.gzip_head + compressor.compress(dynamic) + compressor.flush()

    def _prepare(self, state: GroupState, config: Config) -> _Prepared:
        report = state.report
        assert report is not None
        with self._lock:
            cached = self._prepared.get(state.name)
        if cached is not None and cached[0] is report and cached[1] is config:
            return cached[2]
        prepared = _prepare(state.name, report, config)
        with self._lock:
            self._prepared[state.name] = (report, config, prepared)
        return prepared

    def _static_part(
        self,
        snapshot: Snapshot,
        live: tuple[bool, ...],
        prepared: list[_Prepared | None],
        openmetrics: bool,
    ) -> _Static:
        with self._lock:
            cached = self._static.get(openmetrics)
            if cached is not None and cached.snapshot is snapshot and cached.live == live:
                return cached
            known = {s.name for s in snapshot.groups}
            for name in [n for n in self._prepared if n not in known]:
                del self._prepared[name]
        health = [_health(s) for s in snapshot.groups]
        out: list[str] = []
        for family in _HEALTH:
            out.extend(_family(family.header(openmetrics), [h.get(family, "") for h in health]))
        out.append(BUILD.header(openmetrics) + self._build)
        pieces = [_utf8("".join(out))]
        for family in (*_GROUP_DATA, *_USER_DATA):
            chunks = [p.chunks.get(family, b"") for p in prepared if p]
            pieces.extend(_family(family.header(openmetrics).encode(), chunks))
        static = _Static(snapshot=snapshot, live=live, pieces=pieces)
        with self._lock:
            self._static[openmetrics] = static
        return static

    def _dynamic_part(
        self, snapshot: Snapshot, prepared: list[_Prepared | None], now: float, openmetrics: bool
    ) -> str:
        live = [(s.name, p) for s, p in zip(snapshot.groups, prepared, strict=True) if p]
        out = [
            *_family(USER_AGE.header(openmetrics), [p.ages.render(now) for _, p in live]),
            *_family(USER_IDLE.header(openmetrics), [p.idle.render(now) for _, p in live]),
            *_family(
                GROUP_IDLE.header(openmetrics),
                [_idle_counts(name, p.idle_since, snapshot.config, now) for name, p in live],
            ),
        ]
        if self._registry is not None:
            if openmetrics:
                extra = om_exposition.generate_latest(self._registry).decode()  # type: ignore[no-untyped-call]
                out.append(extra.removesuffix("# EOF\n"))
            else:
                out.append(text_exposition.generate_latest(self._registry).decode())
        if openmetrics:
            out.append("# EOF\n")
        return "".join(out)


def _family(header: AnyStr, chunks: list[AnyStr]) -> list[AnyStr]:
    """A family's header and its groups' lines; nothing when no group has any."""
    if not any(chunks):
        return []
    out = [header]
    out.extend(chunks)
    return out


def _idle_counts(group: str, idle_since: list[float], config: Config, now: float) -> str:
    return "".join(
        f"{GROUP_IDLE.name}{labels([('group', group), ('idle_for', t.label)])} "
        f"{bisect.bisect_left(idle_since, now - t.seconds)}\n"
        for t in config.idle_thresholds
    )
