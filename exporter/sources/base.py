"""The interface every source implements, after node_exporter's collectors: a name, what it
asks, how it reads the answers, and what it exports. A source does no I/O: the poller sends
its requests through api.py and keeps what `report` returns in the Snapshot; the collector
renders it with `render` at each new poll result.

Adding a source is one module here with one object implementing `Source`, plus its line in
`SOURCES` (exporter/sources/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.config import Config, Limits, Window
from exporter.exposition import Family
from exporter.state import Report


@dataclass(frozen=True)
class Request:
    """One call of a v1 method: its body without the service key (the transport adds it), the
    target it is for, the window it covers, if any, and what its reply is read against: when
    it was asked (wall time; None: no bound) and the limits on what is built from it."""

    method: str
    body: Mapping[str, str]
    target: str
    window: Window | None = None
    asked_at: float | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Rendered:
    """One target's report as exposition lines: per family, the UTF-8 lines that only a new
    poll changes, and the lines computed at scrape time from `now`."""

    static: Mapping[Family, bytes] = field(default_factory=dict)
    dynamic: Mapping[Family, Callable[[float], str]] = field(default_factory=dict)


class Source(Protocol):
    """One upstream endpoint."""

    # Names the source in logs and in the Snapshot's states.
    name: str
    # The label that names a target in the health series (`group` for per-group sources).
    target_label: str
    # Every family it may export, in exposition order.
    families: tuple[Family, ...]

    def targets(self, config: Config) -> tuple[str, ...]:
        """What is polled separately, each with its own schedule, health and last good data."""

    def depends_on(self, config: Config) -> Hashable:
        """The settings besides `api` that its requests depend on: a reload that changes them
        polls at once and makes polls in flight worthless; one that does not leaves them be."""

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        """The requests one poll of `target` makes at wall time `now`."""

    def parse(self, request: Request, document: Any) -> Any:
        """One JSON reply -> a typed record; raises MalformedResponse for a wrong shape."""

    def report(self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]) -> Report:
        """A poll's parsed replies, in plan order -> the report kept as the target's data."""

    def render(self, config: Config, target: str, report: Any) -> Rendered:
        """A report -> its lines; called once per new report, never per scrape."""
