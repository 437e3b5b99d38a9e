"""The whole team, from UserPageAnalytics without a group_name: one request per activeDays
window. Its people are counted once each, whatever their groups, people in no configured group
included: the numbers a team pays by. The groups (sources/user_page.py) join its rows by email.

    windsurf_team_up 1
    windsurf_team_users 300
    windsurf_team_billable_users 274
    windsurf_team_active_users{window="30d"} 231
    windsurf_team_idle_users{idle_for="30d"} 21
"""

from __future__ import annotations

import functools
from collections.abc import Hashable

from exporter.config import Config
from exporter.exposition import Family
from exporter.sources.base import Health, Live, Parts, Rendered, Request
from exporter.sources.user_page import TEAM_KEY, Aggregates, Replies, plan, render_aggregates
from exporter.sources.user_rows import GroupReport

_CACHED = " Cached from the last successful poll."


def _f(name: str, help_: str) -> Family:
    return Family(name, help_ + _CACHED)


TEAM_USERS = _f("windsurf_team_users", "People (rows) UserPageAnalytics returned for the team.")
TEAM_BILLING_START = _f(
    "windsurf_team_billing_cycle_start_timestamp_seconds",
    "Unix time the team's billing cycle started (billingCycleStart).",
)
TEAM_BILLING_END = _f(
    "windsurf_team_billing_cycle_end_timestamp_seconds",
    "Unix time the team's billing cycle ends (billingCycleEnd).",
)
TEAM_UPDATED = _f(
    "windsurf_team_data_updated_timestamp_seconds",
    "Unix time the API last refreshed the team's numbers: the newest lastUpdateTime of its rows.",
)
TEAM_ACTIVE = _f("windsurf_team_active_users", "People with activeDays > 0 in the window.")
TEAM_BILLABLE = _f(
    "windsurf_team_billable_users",
    "Approved people whose access is not disabled: the seats paid for, each person once.",
)
TEAM_CREDITS = _f(
    "windsurf_team_prompt_credits_used",
    "Prompt credits the team used in the current billing cycle, each person once.",
)
TEAM_STATUS = _f("windsurf_team_users_by_team_status", "People by teamStatus.")
TEAM_ROLE = _f("windsurf_team_users_by_role", "People by role.")
TEAM_LIMITED = _f(
    "windsurf_exporter_team_limited_values",
    "Values of the team's last poll cut to fit limits.<limit>: rows left out (max_rows), strings"
    " shortened (max_label_length), roles and statuses counted as other (max_label_values).",
)
TEAM_UNPARSABLE = _f(
    "windsurf_exporter_team_unparsable_values",
    "Values of the team's last poll read as unknown, by field: malformed, or impossible"
    " (negative, absurdly large, after the request).",
)
TEAM_IDLE = Family(
    "windsurf_team_idle_users", "Billable people idle longer than idle_for, at scrape time."
)
TEAM_AGGREGATES = Aggregates(
    users=TEAM_USERS,
    billing_start=TEAM_BILLING_START,
    billing_end=TEAM_BILLING_END,
    updated=TEAM_UPDATED,
    active=TEAM_ACTIVE,
    billable=TEAM_BILLABLE,
    credits=TEAM_CREDITS,
    by_team_status=TEAM_STATUS,
    by_role=TEAM_ROLE,
    limited=TEAM_LIMITED,
    unparsable=TEAM_UNPARSABLE,
    idle=TEAM_IDLE,
)


class Team(Replies):
    """The team source: one target, "", polled when `team` is on (the default)."""

    name: str = TEAM_KEY[0]
    collector: str = "user_page"
    reads: tuple[str, ...] = (TEAM_KEY[0],)
    health: Health | None = Health(prefix="team_", label="", subject="team")
    families: tuple[Family, ...] = TEAM_AGGREGATES

    def targets(self, config: Config) -> tuple[str, ...]:
        on = config.team and config.collector(self.collector).enabled
        return (TEAM_KEY[1],) if on else ()

    def depends_on(self, config: Config) -> Hashable:
        return config.windows

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        return plan(config, config.windows, target, now)

    def render(self, config: Config, live: Live, parts: Parts) -> Rendered:
        team = live.get(TEAM_KEY)
        if not isinstance(team, GroupReport):
            return Rendered()
        # Kept while the team's report is: a group's poll leaves the team's lines as they were.
        make = functools.partial(render_team, team, config)
        return parts.get(("team",), (team, config), (), make)


TEAM = Team()


def render_team(team: GroupReport, config: Config) -> Rendered:
    """The team's families: its aggregates as a group's, unlabelled."""
    return render_aggregates(TEAM_AGGREGATES, None, team, team.totals.active, config)
