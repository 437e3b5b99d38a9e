"""Upstream JSON -> typed records, forgiving about what the Windsurf API really sends.

Any field may be missing or null, 64-bit numbers may arrive as strings (protobuf JSON), times are
RFC 3339 with 0-9 fraction digits and any offset. `apiKey` is never read into a record.
"""

from __future__ import annotations

import calendar
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FEATURES = ("autocomplete", "chat", "command")
_FEATURE_FIELDS = (
    "lastAutocompleteUsageTime",
    "lastChatUsageTime",
    "lastCommandUsageTime",
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:?\d\d)",
    re.ASCII,
)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_APPROVED = "USER_TEAM_STATUS_APPROVED"


def parse_time(value: Any) -> float | None:
    """RFC 3339 -> Unix seconds; None for missing, malformed, or the zero time meaning 'never'."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and hour < 24 and minute < 60 and second <= 60):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    offset = match.group(8)
    if offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            return None
        seconds -= sign * (hours * 3600 + minutes * 60)
    if seconds <= 0:
        return None
    fraction = match.group(7)
    return seconds + int(fraction) / 10 ** len(fraction) if fraction else float(seconds)


def parse_number(value: Any) -> float | None:
    """A JSON number or a numeric string -> float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and not _NUMBER.fullmatch(value.strip()):
        return None  # float() would also take "1_000", "inf" spelled out, or non-ASCII digits
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):  # OverflowError: a JSON integer beyond a double
        return None
    return number if math.isfinite(number) else None


def parse_count(value: Any) -> float | None:
    """Like parse_number, but absent or null is 0: protobuf JSON omits zero-valued fields."""
    return 0.0 if value is None else parse_number(value)


def parse_bool(value: Any) -> bool:
    """true, "true" (any case), or a non-zero number or numeric string; all else is false."""
    if isinstance(value, str):
        text = value.strip().lower()
        return text == "true" or (parse_number(text) or 0) != 0
    if isinstance(value, bool):
        return value
    return (parse_number(value) or 0) != 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
    error: str | None


@dataclass(frozen=True, slots=True)
class GroupReport:
    """Everything one group's poll produced: its users and billing cycle."""

    users: tuple[UserStats, ...]
    rows: int
    skipped: int
    billing_start: float | None = None
    billing_end: float | None = None


class MalformedResponse(ValueError):
    """The reply is JSON but not the shape UserPageAnalytics promises."""


def decode_page(document: Any) -> Page:
    """Top-level reply -> Page; protobuf JSON omits an empty userTableStats: absent means none."""
    if not isinstance(document, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(document).__name__}")
    rows = document.get("userTableStats")
    if rows is None:
        rows = []
    if not isinstance(rows, list):
        raise MalformedResponse("userTableStats is not a list")
    error = document.get("error")
    return Page(
        rows=tuple(rows),
        billing_start=parse_time(document.get("billingCycleStart")),
        billing_end=parse_time(document.get("billingCycleEnd")),
        error=str(error) if error not in (None, "") else None,
    )


def build_report(pages: Sequence[tuple[str, Page]]) -> GroupReport:
    """Merge one group's pages (one per window) into users keyed by email.

    The first page says who is in the group (windsurf_group_users counts its rows); later
    pages only add their window's activeDays, so a user who joined between the requests waits
    for the next poll. Rows without an email have no stable identity and are skipped; a
    repeated email keeps its first row, so the exposition never holds duplicate series.
    """
    users: dict[str, dict[str, Any]] = {}
    skipped = 0
    for index, (window, page) in enumerate(pages):
        for row in page.rows:
            email = _text(row.get("email")).strip() if isinstance(row, dict) else ""
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
    first = pages[0][1] if pages else Page((), None, None, None)
    return GroupReport(
        users=tuple(_user(email, u["row"], u["active"]) for email, u in users.items()),
        rows=len(first.rows),
        skipped=skipped,
        billing_start=first.billing_start,
        billing_end=first.billing_end,
    )


def _user(email: str, row: Mapping[str, Any], active: Mapping[str, float]) -> UserStats:
    usage = tuple(parse_time(row.get(f)) for f in _FEATURE_FIELDS)
    return UserStats(
        email=email,
        name=_text(row.get("name")),
        # A handful of values repeated on every row: one string each, not one per user.
        role=sys.intern(_text(row.get("role"))),
        team_status=sys.intern(_text(row.get("teamStatus"))),
        disabled=parse_bool(row.get("disableCodeium")),
        signup=parse_time(row.get("signupTime")),
        last_usage=(usage[0], usage[1], usage[2]),
        prompt_credits=parse_count(row.get("promptCreditsUsed")),
        active_days=dict(active),
    )
