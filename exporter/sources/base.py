"""The interface every source implements, after node_exporter's collectors: a name, what it
asks, how it reads the answers, and what it exports. A source does no I/O: the poller sends
its requests through api.py and keeps what `report` returns in the Snapshot; the collector
renders the live reports with `render` whenever one of them changes.

Adding a source is one module here with one object implementing `Source`, plus its line in
`SOURCES` (exporter/sources/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from exporter.config import Config, Limits, Window
from exporter.exposition import Family, Piece
from exporter.state import Report


@dataclass(frozen=True)
class Request:
    """One call of a v1 method: its body without the service key (the transport adds it), the
    target it is for, the window it covers, if any, and what its reply is read against: when
    it was asked (wall time; None: no bound), the limits on what is built from it, whether its
    source reads all of it, and the permission it needs."""

    method: str
    body: Mapping[str, Any]
    target: str
    window: Window | None = None
    asked_at: float | None = None
    limits: Limits = field(default_factory=Limits)
    # False: the source reads only what this request adds to the poll's first one (a later
    # activeDays window's reply: its activeDays), and none of the reply's other values.
    full: bool = True
    # The key's permission the method needs, named when the upstream refuses the key.
    permission: str = "Teams Read-only"
    # Makes the object_hook its reply's JSON is read with, one per reply (None: plain dicts): a
    # method whose replies hold many rows has them made compact while they are read.
    json_hook: Callable[[], Callable[[dict[str, Any]], Any]] | None = None


@dataclass(frozen=True)
class Rendered:
    """One target's report as exposition lines: per family, the lines that only a new poll
    changes (an `exposition.piece`, compressed once, or several in order, kept apart so each
    is reused while unchanged), and the UTF-8 lines computed at scrape time from `now`, in
    chunks (so no scrape holds them all at once)."""

    static: Mapping[Family, Piece | tuple[Piece, ...]] = field(default_factory=dict)
    dynamic: Mapping[Family, Callable[[float], Iterable[bytes]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """How a source's health series are named: `windsurf_{prefix}up`,
    `windsurf_exporter_{prefix}polls_total`, ..., labelled `{label}="<target>"` (no label when
    empty); `subject` ("group", "team") words their HELP."""

    prefix: str
    label: str
    subject: str


Live = Mapping[tuple[str, str], Report]  # (source, target) -> report, for every live target
T = TypeVar("T")


class Parts:
    """The pieces of a source's previous rendering, so a new one redoes only what changed. A
    piece is reused when the objects it was made from are the same ones (`same`, by identity)
    and what else it depends on is equal (`equal`); the collector hands each rendering the
    pieces of the one before and keeps what it used (`kept`)."""

    def __init__(self, previous: Mapping[Hashable, tuple[tuple[object, ...], Hashable, Any]]):
        self._previous = previous
        self.kept: dict[Hashable, tuple[tuple[object, ...], Hashable, Any]] = {}

    def get(
        self, key: Hashable, same: tuple[object, ...], equal: Hashable, make: Callable[[], T]
    ) -> T:
        old = self._previous.get(key)
        if (
            old is not None
            and old[1] == equal
            and len(old[0]) == len(same)
            and all(a is b for a, b in zip(old[0], same, strict=True))
        ):
            value: T = old[2]
        else:
            value = make()
        self.kept[key] = (same, equal, value)
        return value


class Source(Protocol):
    """One upstream endpoint (or one way of asking it)."""

    # Names the source in logs and in the Snapshot's states.
    name: str
    # The `collectors:` key that switches it on and sets its interval; also the `collector`
    # label of its windsurf_collector_* health series.
    collector: str
    # Health series of its own besides the windsurf_collector_* ones every source has; None:
    # none.
    health: Health | None
    # Every family it may export, in exposition order.
    families: tuple[Family, ...]
    # The sources whose live reports its `render` reads (its own among them): a poll of any
    # other source leaves its rendering as it is.
    reads: tuple[str, ...]

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

    def render(self, config: Config, live: Live, parts: Parts) -> Rendered:
        """The live reports of the sources it `reads` (so it may join another's) -> its lines;
        called once per change of the live reports, never per scrape. `parts` may hold pieces
        of the previous rendering worth reusing."""
