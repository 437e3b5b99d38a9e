"""UserPageAnalytics, polled per configured group: one request per activeDays window, the rows
merged by email into users (user_rows.py), the group's aggregates, and the families they give,
people labelled across the whole team (people.py). `apiKey` is never read into a record.

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
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

from exporter.config import Config, Window
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
from exporter.sources.people import People
from exporter.sources.user_rows import (
    FEATURES,
    METHOD,
    GroupReport,
    Page,
    Totals,
    UserStats,
    build_report,
    decode_page,
    person_key,
    request_body,
)

log = logging.getLogger("exporter.user_page")

_CACHED = " Cached from the last successful poll."


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


class Aggregates(NamedTuple):
    """The families a report's aggregates go to: a group's here, the team's in team.py."""

    users: Family
    billing_start: Family
    billing_end: Family
    updated: Family
    active: Family
    billable: Family
    credits: Family
    by_team_status: Family
    by_role: Family
    limited: Family
    unparsable: Family
    idle: Family


GROUP_AGGREGATES = Aggregates(
    users=GROUP_USERS,
    billing_start=BILLING_START,
    billing_end=BILLING_END,
    updated=GROUP_UPDATED,
    active=GROUP_ACTIVE,
    billable=GROUP_BILLABLE,
    credits=GROUP_CREDITS,
    by_team_status=GROUP_STATUS,
    by_role=GROUP_ROLE,
    limited=LIMITED,
    unparsable=UNPARSABLE,
    idle=GROUP_IDLE,
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
    from rendering to rendering (see `People`), so a publish costs what changed, not the
    whole team.
    """
    people = parts.get(
        ("people",), (config,), (), functools.partial(People, config, USER_INFO.name)
    )
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
        if config.per_user and team is not None and people.complete(USER_PAGE.targets(config)):
            rest = ("no group",)
            make = functools.partial(_rest_piece, people)
            pieces.append(parts.get(rest, (config,), (v(("team",)), v(rest)), make))
    # The info blocks were compressed by the pool meanwhile: waited for once, here.
    return _combine(
        [Rendered({USER_INFO: p.result()}) if isinstance(p, Future) else p for p in pieces]
    )


class _Lines:
    """Exposition lines by family, as they are added; a family's lines given all at once
    (`extend`) are compressed by the pool while the next family's are made."""

    def __init__(self) -> None:
        self._lines: dict[Family, list[str]] = {}
        self._soon: dict[Family, Future[Piece]] = {}

    def add(self, family: Family, pairs: Sequence[tuple[str, str]], value: float) -> None:
        text = labels(pairs) if pairs else ""  # a series without labels has no braces
        self._lines.setdefault(family, []).append(f"{family.name}{text} {number(value)}\n")

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


def _group_piece(group: str, report: GroupReport, people: People, config: Config) -> Rendered:
    active = _joined_active(report, people.team, config)
    aggregates = render_aggregates(GROUP_AGGREGATES, ("group", group), report, active, config)
    if not config.per_user:
        return aggregates
    # A member the team reply does not know yet (it changed between the requests) keeps the
    # row of this group's reply.
    own = {person_key(u.email): u for u in report.users}
    rows = {p: people.team.get(p) or u for p, u in own.items()}
    return _combine([aggregates, _seats_piece(group, rows, people)])


def _rest_piece(people: People) -> Rendered:
    """The series of the team's people in no group, under group=""."""
    rest = people.rest()
    seats = _seats_piece("", {p: people.team[p] for p in rest}, people)
    return _combine([seats, _info_lines("", rest, people)])


def _info_piece(group: str, block: int, people: People) -> Future[Piece]:
    """The info series of a block of the group's people, once each, in the order of its rows,
    compressed by the pool while the render goes on."""
    return piece_soon("".join(people.info_lines(group, people.in_block(group, block))))


def _info_lines(group: str, emails: Iterable[str], people: People) -> Rendered:
    """These people's info series in `group`."""
    lines = _Lines()
    lines.extend(USER_INFO, people.info_lines(group, emails))
    return Rendered(static=lines.static())


def _seats_piece(group: str, rows: Mapping[str, UserStats], people: People) -> Rendered:
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


def render_aggregates(
    families: Aggregates,
    label: tuple[str, str] | None,
    report: GroupReport,
    active: Sequence[tuple[str, int]],
    config: Config,
) -> Rendered:
    """A report's aggregates in `families`, each series under `label` (a group's; None: the
    team's, unlabelled), with `active` users per window; a billing cycle or update time the
    reply did not give is absent."""
    g = [label] if label else []
    lines = _Lines()
    add = lines.add
    add(families.users, g, report.rows)
    if report.billing_start is not None:
        add(families.billing_start, g, report.billing_start)
    if report.billing_end is not None:
        add(families.billing_end, g, report.billing_end)
    if report.updated is not None:
        add(families.updated, g, report.updated)
    for window, count in active:
        add(families.active, [*g, ("window", window)], count)
    agg = report.totals
    add(families.billable, g, agg.billable)
    add(families.credits, g, agg.prompt_credits)
    for status, count in agg.by_team_status:
        add(families.by_team_status, [*g, ("team_status", status)], count)
    for role, count in agg.by_role:
        add(families.by_role, [*g, ("role", role)], count)
    for limit in ("max_rows", "max_label_length", "max_label_values"):
        add(families.limited, [*g, ("limit", limit)], report.limited.get(limit, 0))
    for key, count in report.unparsable.items():
        add(families.unparsable, [*g, ("field", key)], count)
    idle = idle_counts(families.idle, [(label, agg)], config)
    return Rendered(static=lines.static(), dynamic={families.idle: idle})


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
