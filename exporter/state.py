"""What the exporter knows, shared by every room: the immutable Snapshot that polls replace and
scrapes read, each polled target's state, the fixed set of failure reasons, and the one rule
that says when data is too old to show."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from exporter.config import Config


class Reason(StrEnum):
    """Why a poll failed; a small fixed set so it can be a label."""

    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_RESPONSE = "invalid_response"
    API_ERROR = "api_error"
    TOO_LARGE = "too_large"


SUCCESS = "success"
REASONS = tuple(r.value for r in Reason)
# What one request can end in: the label values of the request counter.
OUTCOMES = (SUCCESS, *REASONS)

_EMPTY: Mapping[str, int] = MappingProxyType({})


class MalformedResponse(ValueError):
    """A reply is JSON but not the shape its endpoint promises."""


class Report(Protocol):
    """What every source's report says about its replies, for the health series."""

    @property
    def rows(self) -> int:
        """Rows (records) the replies held."""

    @property
    def skipped(self) -> int:
        """Rows left out: no identity, or one seen twice."""


@dataclass(frozen=True, slots=True)
class SourceState:
    """One target of one source (for the user page: one group): its last good report, as the
    source parsed it, and how its polls have gone."""

    source: str
    name: str
    report: Report | None = None
    up: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    last_duration: float | None = None
    last_error: Reason | None = None
    last_error_message: str | None = None  # the failure's one redacted line, for the landing page
    polls: int = 0
    overruns: int = 0  # polls that took longer than poll.interval (queued behind the budget)
    errors: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    requests: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.name)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every target at one instant; replaced whole, so a scrape never sees half a poll."""

    states: tuple[SourceState, ...] = ()
    config: Config = field(default_factory=Config)
    # Wall time the service key's latest rate-limit wait ends (0: never waited).
    rate_limited_until: float = 0.0


def is_live(state: SourceState, now: float, max_staleness: float) -> bool:
    """Whether a target's data may still be shown: it exists and is younger than the limit."""
    return (
        state.report is not None
        and state.last_success is not None
        and now - state.last_success <= max_staleness
    )
