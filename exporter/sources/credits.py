"""The credit balance: seats bought and add-on credits (GetTeamCreditBalance) and the team's
add-on credit cap per user (GetUsageConfig, team_level), one request each per poll. Both need
the "Billing Read" permission; a key without it makes this source down (reason auth) and
leaves every other one alone.

    windsurf_team_seats 50
    windsurf_team_prompt_credits_per_seat 500
    windsurf_team_addon_credits_available 10000
    windsurf_team_addon_credits_used 3500
    windsurf_team_addon_credit_cap 200
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config import Config
from exporter.exposition import Family, number, piece
from exporter.sources.base import Health, Live, Parts, Rendered, Request
from exporter.sources.values import count_field, json_object

log = logging.getLogger("exporter.credits")

BALANCE = "GetTeamCreditBalance"
USAGE_CONFIG = "GetUsageConfig"
_PERMISSION = "Billing Read"
_MAX = 1e15  # beyond any plan: an impossible value is unusable, not data
_CACHED = " Cached from the last successful poll."
# Reply field -> what it is kept as, in exposition order.
_BALANCE_FIELDS = (
    ("numSeats", "seats"),
    ("promptCreditsPerSeat", "per_seat"),
    ("addOnCreditsAvailable", "addon_available"),
    ("addOnCreditsUsed", "addon_used"),
)
# The documented spelling, and the camelCase one a third-party client reports.
_CAP_FIELDS = ("add_on_credit_cap", "addOnCreditCap")


@dataclass(frozen=True, slots=True)
class Values:
    """One reply's numbers by name (None: unusable), and the fields that were unusable."""

    values: Mapping[str, float | None]
    unparsable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CreditsReport:
    """The team's credit balance and cap; a value None is unknown (or, for the cap, none)."""

    values: Mapping[str, float | None] = field(default_factory=dict)
    rows: int = 2
    skipped: int = 0


def decode_balance(document: Any) -> Values:
    """GetTeamCreditBalance's reply; an absent field is 0, as protobuf JSON leaves zeros out."""
    found = json_object(document)
    values: dict[str, float | None] = {}
    bad = []
    for key, name in _BALANCE_FIELDS:
        values[name], unusable = count_field(found.get(key), _MAX)
        if unusable:
            bad.append(key)
    return Values(values, tuple(bad))


def decode_usage_config(document: Any) -> Values:
    """GetUsageConfig's reply: the cap, None when there is none (absent, or 0)."""
    found = json_object(document)
    key = next((k for k in _CAP_FIELDS if found.get(k) is not None), _CAP_FIELDS[0])
    cap, unusable = count_field(found.get(key), _MAX)
    return Values({"cap": cap or None}, (key,) if unusable else ())


def _f(name: str, help_: str) -> Family:
    return Family(name, help_ + _CACHED)


# Value name -> its family.
FAMILIES: Mapping[str, Family] = {
    "seats": _f("windsurf_team_seats", "Seats the team bought (GetTeamCreditBalance numSeats)."),
    "per_seat": _f(
        "windsurf_team_prompt_credits_per_seat",
        "Prompt credits each seat brings per billing cycle (promptCreditsPerSeat).",
    ),
    "addon_available": _f(
        "windsurf_team_addon_credits_available",
        "Add-on prompt credits available this billing cycle (addOnCreditsAvailable).",
    ),
    "addon_used": _f(
        "windsurf_team_addon_credits_used",
        "Add-on prompt credits used this billing cycle (addOnCreditsUsed).",
    ),
    "cap": _f(
        "windsurf_team_addon_credit_cap",
        "Add-on prompt credits one user may use per cycle, set for the team (GetUsageConfig);"
        " absent when there is no cap.",
    ),
}


class Credits:
    """The credits source: one target, the team (""), when `collectors.credits` is on."""

    name: str = "credits"
    collector: str = "credits"
    reads: tuple[str, ...] = ("credits",)
    health: Health | None = None
    families: tuple[Family, ...] = tuple(FAMILIES.values())

    def targets(self, config: Config) -> tuple[str, ...]:
        return ("",) if config.collector(self.collector).enabled else ()

    def depends_on(self, config: Config) -> Hashable:
        return ()

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        return (
            Request(BALANCE, {}, target, asked_at=now, permission=_PERMISSION),
            Request(
                USAGE_CONFIG, {"team_level": True}, target, asked_at=now, permission=_PERMISSION
            ),
        )

    def parse(self, request: Request, document: Any) -> Values:
        if request.method == BALANCE:
            return decode_balance(document)
        return decode_usage_config(document)

    def report(
        self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]
    ) -> CreditsReport:
        values: dict[str, float | None] = {}
        bad: list[str] = []
        for _, reply in replies:
            values.update(reply.values)
            bad.extend(reply.unparsable)
        if bad:
            log.warning(
                "credit balance read with losses: unusable values read as unknown: %s",
                ", ".join(bad),
                extra={"group": "(whole team)"},
            )
        return CreditsReport(values=values)

    def render(self, config: Config, live: Live, parts: Parts) -> Rendered:
        report = live.get((self.name, ""))
        if not isinstance(report, CreditsReport):
            return Rendered()
        return Rendered(
            static={
                family: piece(f"{family.name} {number(value)}\n")
                for name, family in FAMILIES.items()
                if (value := report.values.get(name)) is not None
            }
        )


CREDITS = Credits()
