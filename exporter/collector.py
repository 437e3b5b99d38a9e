"""Snapshot + now -> Prometheus exposition (text 0.0.4 or OpenMetrics), with no I/O.

The health families of every polled target are here; each source renders its own data
(exporter/sources). Everything that does not depend on the scrape time is rendered once per
poll result and kept only compressed; only ages and idle counts are formatted (and compressed)
per scrape. The health of a group "eng" looks like:

    windsurf_up{group="eng"} 1
    windsurf_exporter_last_success_timestamp_seconds{group="eng"} 1.7e9
    windsurf_exporter_api_requests_total{group="eng",outcome="success"} 2
    ...
"""

from __future__ import annotations

import functools
import platform
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition

from exporter import __version__
from exporter.config import Config
from exporter.exposition import (
    Family,
    Piece,
    StaticBody,
    family_lines,
    header_piece,
    labels,
    number,
    piece,
    utf8,
)
from exporter.sources import SOURCES, Rendered, Source
from exporter.sources.base import Health, Live, Parts
from exporter.state import OUTCOMES, REASONS, Report, Snapshot, SourceState, is_live

_CACHED = " Cached from the last successful poll."


def _f(name: str, help_: str, type_: str = "gauge") -> Family:
    return Family(name, help_, type_)


BUILD = _f(
    "windsurf_exporter_build_info", "Version of windsurf-exporter; value is always 1.", "info"
)
# The key's, not a target's: computed at scrape time, since a wait ends without a new poll.
RATE_LIMITED_UNTIL = _f(
    "windsurf_exporter_rate_limited_until_timestamp_seconds",
    "Unix time the service key's rate-limit wait (Retry-After of a 429 or 503) ends; every"
    " request waits until then. 0 when not limited.",
)
POLL_REQUESTS = _f(
    "windsurf_exporter_poll_requests",
    "Requests one poll of every group, and of the team, makes under the running config;"
    " retries not included.",
)
_BY_NAME: Mapping[str, Source] = {s.name: s for s in SOURCES}
# Every source's health, the same families for all: `collector` is its collectors: key,
# `group` its target (empty for a team-level poll).
COLLECTOR_HEALTH = (
    _f(
        "windsurf_collector_up",
        "1 if the last poll of the collector for the group (empty: the whole team) succeeded,"
        " else 0.",
    ),
    _f(
        "windsurf_exporter_collector_last_success_timestamp_seconds",
        "Unix time of the collector's last successful poll for the group.",
    ),
    _f(
        "windsurf_exporter_collector_last_poll_duration_seconds",
        "Seconds the collector's last poll for the group took, retries included.",
    ),
    _f(
        "windsurf_exporter_collector_poll_errors_total",
        "Failed polls of the collector for the group, by reason.",
        "counter",
    ),
    _f(
        "windsurf_exporter_collector_api_requests_total",
        "Requests of the collector for the group by outcome, retries included.",
        "counter",
    ),
)


@dataclass(frozen=True)
class ReloadStatus:
    """How the last config load went (the one at startup counts), and when one last worked."""

    successful: bool
    last_success: float


class ReloadCollector:
    """Prometheus' own reload pair, for the exporter, so an alert can see a failed reload:

    windsurf_exporter_config_last_reload_successful 1
    windsurf_exporter_config_last_reload_success_timestamp_seconds 1.7e9
    """

    def __init__(self, status: Callable[[], ReloadStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield GaugeMetricFamily(
            "windsurf_exporter_config_last_reload_successful",
            "1 if the last load of the config (at startup, SIGHUP or POST /-/reload) worked,"
            " else 0 (the running config is kept).",
            value=float(status.successful),
        )
        yield GaugeMetricFamily(
            "windsurf_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that worked.",
            value=status.last_success,
        )


@functools.cache
def health_families(health: Health) -> tuple[Family, ...]:
    """A source's health families, always exported, even for a target whose data is stale:
    up, last success, last poll, its duration, polls, overruns, errors by reason, requests by
    outcome, skipped rows."""
    x, p = health.subject, health.prefix
    return (
        _f(
            f"windsurf_{p}up",
            f"1 if the last poll of the {x}'s UserPageAnalytics succeeded, else 0.",
        ),
        _f(
            f"windsurf_exporter_{p}last_success_timestamp_seconds",
            f"Unix time of the {x}'s last successful poll.",
        ),
        _f(
            f"windsurf_exporter_{p}last_poll_timestamp_seconds",
            f"Unix time the {x}'s last poll started, successful or not.",
        ),
        _f(
            f"windsurf_exporter_{p}last_poll_duration_seconds",
            f"Seconds the {x}'s last poll took, retries included.",
        ),
        _f(f"windsurf_exporter_{p}polls_total", f"Polls of the {x}, successful or not.", "counter"),
        _f(
            f"windsurf_exporter_{p}poll_overruns_total",
            f"Polls of the {x} that took longer than poll.interval, queueing for the request"
            " budget included.",
            "counter",
        ),
        _f(
            f"windsurf_exporter_{p}poll_errors_total",
            f"Failed polls of the {x} by reason.",
            "counter",
        ),
        _f(
            f"windsurf_exporter_{p}api_requests_total",
            "UserPageAnalytics requests by outcome, retries included.",
            "counter",
        ),
        _f(
            f"windsurf_exporter_{p}skipped_rows",
            f"Rows of the {x}'s last reply left out: no email, or an email seen twice." + _CACHED,
        ),
    )


def _health(state: SourceState) -> list[str]:
    """A target's health lines, one per health family of its source (maybe empty); none
    before its first poll, since unknown is not down."""
    health = _BY_NAME[state.source].health
    if health is None or not state.polls:
        return []
    up, success, last, duration, polls, overruns, errors, requests, skipped = health_families(
        health
    )
    target = [(health.label, state.name)] if health.label else []
    g = labels(target) if target else ""

    def line(family: Family, value: object) -> str:
        return f"{family.name}{g} {value}\n"

    return [
        line(up, int(state.up)),
        line(success, number(state.last_success)) if state.last_success is not None else "",
        line(last, number(state.last_attempt)) if state.last_attempt is not None else "",
        line(duration, f"{state.last_duration:.6f}") if state.last_duration is not None else "",
        line(polls, state.polls),
        line(overruns, state.overruns),
        _counter(errors, target, "reason", REASONS, state.errors),
        _counter(requests, target, "outcome", OUTCOMES, state.requests),
        line(skipped, state.report.skipped) if state.report is not None else "",
    ]


def _collector_health(state: SourceState) -> list[str]:
    """A target's windsurf_collector_* lines, one per COLLECTOR_HEALTH family; none before its
    first poll."""
    if not state.polls:
        return []
    up, success, duration, errors, requests = COLLECTOR_HEALTH
    target = [("collector", _BY_NAME[state.source].collector), ("group", state.name)]
    g = labels(target)
    return [
        f"{up.name}{g} {int(state.up)}\n",
        f"{success.name}{g} {number(state.last_success)}\n"
        if state.last_success is not None
        else "",
        f"{duration.name}{g} {state.last_duration:.6f}\n"
        if state.last_duration is not None
        else "",
        _counter(errors, target, "reason", REASONS, state.errors),
        _counter(requests, target, "outcome", OUTCOMES, state.requests),
    ]


def _counter(
    family: Family,
    target: list[tuple[str, str]],
    label: str,
    keys: Sequence[str],
    counts: Mapping[str, int],
) -> str:
    """One series per key, zero included, so rate() sees a counter from its first poll."""
    return "".join(
        f"{family.name}{labels([*target, (label, key)])} {counts.get(key, 0)}\n" for key in keys
    )


def _rate_limited(snapshot: Snapshot, now: float, openmetrics: bool) -> str:
    until = snapshot.rate_limited_until
    value = number(until) if until > now else "0"
    return f"{RATE_LIMITED_UNTIL.header(openmetrics)}{RATE_LIMITED_UNTIL.name} {value}\n"


def poll_requests(config: Config) -> int:
    """What one poll of every target costs in requests (retries aside)."""
    return sum(len(s.plan(config, t, 0.0)) for s in SOURCES for t in s.targets(config))


@dataclass
class _Static:
    """The static part of the exposition for one snapshot, format and liveness of its
    targets, compressed."""

    snapshot: Snapshot
    live: tuple[bool, ...]
    body: StaticBody


@dataclass(frozen=True)
class _Cached:
    """A source's lines and what they were rendered from: the config and the live reports."""

    config: Config
    reports: tuple[tuple[tuple[str, str], Report], ...]
    rendered: Rendered

    def holds(self, config: Config, reports: tuple[tuple[tuple[str, str], Report], ...]) -> bool:
        return (
            self.config is config
            and len(self.reports) == len(reports)
            and all(
                a[0] == b[0] and a[1] is b[1] for a, b in zip(self.reports, reports, strict=True)
            )
        )


class Collector:
    """Renders Snapshots; owns the per-poll caches so repeated scrapes cost only the ages."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        self._rendered: dict[str, _Cached] = {}
        self._parts: dict[str, Mapping[Hashable, Any]] = {}
        self._static: dict[bool, _Static] = {}
        self._lock = threading.Lock()
        self._build = (
            f"{BUILD.name}"
            f"{labels([('version', __version__), ('python_version', platform.python_version())])}"
            " 1\n"
        )

    def prepare(self, snapshot: Snapshot, now: float) -> None:
        """Render what `snapshot` shows at `now` that only a new poll changes, in both formats
        and gzip-compressed, so the poll's thread pays for it rather than the next scrape
        (the poller calls it on each published Snapshot)."""
        for openmetrics in (False, True):
            self._static_now(snapshot, now, openmetrics)

    def _static_now(
        self, snapshot: Snapshot, now: float, openmetrics: bool
    ) -> tuple[list[Rendered], _Static]:
        config = snapshot.config
        live = tuple(is_live(s, now, config.poll.max_staleness) for s in snapshot.states)
        reports = tuple(
            (s.key, s.report)
            for s, ok in zip(snapshot.states, live, strict=True)
            if ok and s.report is not None
        )
        rendered = [self._render_source(source, config, reports) for source in SOURCES]
        return rendered, self._static_part(snapshot, live, rendered, openmetrics)

    def render(
        self, snapshot: Snapshot, now: float, openmetrics: bool = False, gzip: bool = False
    ) -> bytes:
        """The whole exposition at time `now`, gzip-compressed when asked."""
        rendered, static = self._static_now(snapshot, now, openmetrics)
        return static.body.body(self._dynamic_part(snapshot, rendered, now, openmetrics), gzip)

    def _render_source(
        self, source: Source, config: Config, reports: tuple[tuple[tuple[str, str], Report], ...]
    ) -> Rendered:
        reports = tuple(r for r in reports if r[0][0] in source.reads)
        with self._lock:
            cached = self._rendered.get(source.name)
        if cached is not None and cached.holds(config, reports):
            return cached.rendered
        live: Live = dict(reports)
        parts = Parts(self._parts.get(source.name, {}))
        rendered = source.render(config, live, parts)
        with self._lock:
            self._rendered[source.name] = _Cached(config, reports, rendered)
            self._parts[source.name] = parts.kept
        return rendered

    def _static_part(
        self,
        snapshot: Snapshot,
        live: tuple[bool, ...],
        rendered: list[Rendered],
        openmetrics: bool,
    ) -> _Static:
        with self._lock:
            cached = self._static.get(openmetrics)
            if cached is not None and cached.snapshot is snapshot and cached.live == live:
                return cached
        health = {s.key: _health(s) for s in snapshot.states}
        out: list[str] = []
        for source in SOURCES:
            if source.health is None:
                continue
            mine = [h for k, h in health.items() if k[0] == source.name]
            for index, family in enumerate(health_families(source.health)):
                chunks = [h[index] for h in mine if h]
                out.extend(family_lines(family.header(openmetrics), chunks))
        every = [_collector_health(s) for s in snapshot.states]
        for index, family in enumerate(COLLECTOR_HEALTH):
            chunks = [h[index] for h in every if h]
            out.extend(family_lines(family.header(openmetrics), chunks))
        out.append(BUILD.header(openmetrics) + self._build)
        out.append(
            f"{POLL_REQUESTS.header(openmetrics)}{POLL_REQUESTS.name} "
            f"{poll_requests(snapshot.config)}\n"
        )
        pieces = [piece("".join(out))]
        for source, lines in zip(SOURCES, rendered, strict=True):
            for family in source.families:
                ours = _pieces(lines.static.get(family, ()))
                pieces.extend(family_lines(header_piece(family, openmetrics), ours))
        static = _Static(snapshot, live, StaticBody(pieces))
        with self._lock:
            self._static[openmetrics] = static
        return static

    def _dynamic_part(
        self, snapshot: Snapshot, rendered: list[Rendered], now: float, openmetrics: bool
    ) -> Iterator[bytes]:
        """The lines computed at scrape time, in chunks as the sources make them."""
        yield utf8(_rate_limited(snapshot, now, openmetrics))
        for source, lines in zip(SOURCES, rendered, strict=True):
            for family in source.families:
                if family in lines.dynamic:
                    header = utf8(family.header(openmetrics))
                    for chunk in lines.dynamic[family](now):
                        if chunk and header:  # a family's header only when it has a line
                            yield header
                            header = b""
                        yield chunk
        if self._registry is not None:
            if openmetrics:
                extra = om_exposition.generate_latest(self._registry)  # type: ignore[no-untyped-call]
                yield extra.removesuffix(b"# EOF\n")
            else:
                yield text_exposition.generate_latest(self._registry)
        if openmetrics:
            yield b"# EOF\n"


def _pieces(lines: Piece | tuple[Piece, ...]) -> list[Piece]:
    """A family's static lines as the compressed pieces its source made them."""
    return [lines] if isinstance(lines, Piece) else list(lines)
