"""Snapshot + now -> Prometheus exposition (text 0.0.4 or OpenMetrics), with no I/O.

The health families of every polled target are here; each source renders its own data
(exporter/sources). Everything that does not depend on the scrape time is rendered once per
poll result and cached (also gzip-compressed); only ages and idle counts are formatted per
scrape. The health of a group "eng" looks like:

    windsurf_up{group="eng"} 1
    windsurf_exporter_last_success_timestamp_seconds{group="eng"} 1.7e9
    windsurf_exporter_api_requests_total{group="eng",outcome="success"} 2
    ...
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as om_exposition

from exporter import __version__
from exporter.config import Config
from exporter.exposition import Family, StaticBody, family_lines, labels, number, utf8
from exporter.sources import SOURCES, Rendered, Source
from exporter.state import OUTCOMES, REASONS, Snapshot, SourceState, is_live

_CACHED = " Cached from the last successful poll."


def _f(name: str, help_: str, type_: str = "gauge") -> Family:
    return Family(name, help_, type_)


# Health: always exported, even for a target whose data has gone stale.
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
OVERRUNS = _f(
    "windsurf_exporter_poll_overruns_total",
    "Polls of the group that took longer than poll.interval, queueing for the request budget"
    " included.",
    "counter",
)
BUILD = _f(
    "windsurf_exporter_build_info", "Version of windsurf-exporter; value is always 1.", "info"
)
# The key's, not a target's: computed at scrape time, since a wait ends without a new poll.
RATE_LIMITED_UNTIL = _f(
    "windsurf_exporter_rate_limited_until_timestamp_seconds",
    "Unix time the service key's rate-limit wait (Retry-After of a 429 or 503) ends; every"
    " request waits until then. 0 when not limited.",
)
_HEALTH = (
    UP,
    LAST_SUCCESS,
    LAST_POLL,
    POLL_DURATION,
    POLLS,
    OVERRUNS,
    POLL_ERRORS,
    REQUESTS,
    SKIPPED,
)
_BY_NAME: Mapping[str, Source] = {s.name: s for s in SOURCES}


def _health(state: SourceState) -> dict[Family, str]:
    """A target's health series; none before its first poll, since unknown is not down."""
    if not state.polls:
        return {}
    label = _BY_NAME[state.source].target_label
    g = labels([(label, state.name)])
    out = {
        UP: f"{UP.name}{g} {int(state.up)}\n",
        POLLS: f"{POLLS.name}{g} {state.polls}\n",
        OVERRUNS: f"{OVERRUNS.name}{g} {state.overruns}\n",
    }
    if state.last_success is not None:
        out[LAST_SUCCESS] = f"{LAST_SUCCESS.name}{g} {number(state.last_success)}\n"
    if state.last_attempt is not None:
        out[LAST_POLL] = f"{LAST_POLL.name}{g} {number(state.last_attempt)}\n"
    if state.last_duration is not None:
        out[POLL_DURATION] = f"{POLL_DURATION.name}{g} {state.last_duration:.6f}\n"
    out[POLL_ERRORS] = _counter(POLL_ERRORS, (label, state.name), "reason", REASONS, state.errors)
    out[REQUESTS] = _counter(REQUESTS, (label, state.name), "outcome", OUTCOMES, state.requests)
    if state.report is not None:
        out[SKIPPED] = f"{SKIPPED.name}{g} {state.report.skipped}\n"
    return out


def _counter(
    family: Family,
    target: tuple[str, str],
    label: str,
    keys: Sequence[str],
    counts: Mapping[str, int],
) -> str:
    """One series per key, zero included, so rate() sees a counter from its first poll."""
    return "".join(
        f"{family.name}{labels([target, (label, key)])} {counts.get(key, 0)}\n" for key in keys
    )


def _rate_limited(snapshot: Snapshot, now: float, openmetrics: bool) -> str:
    until = snapshot.rate_limited_until
    value = number(until) if until > now else "0"
    return f"{RATE_LIMITED_UNTIL.header(openmetrics)}{RATE_LIMITED_UNTIL.name} {value}\n"


@dataclass
class _Static:
    """The static part of the exposition for one snapshot, format and liveness of its targets."""

    snapshot: Snapshot
    live: tuple[bool, ...]
    body: StaticBody


class Collector:
    """Renders Snapshots; owns the per-poll caches so repeated scrapes cost only the ages."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        self._rendered: dict[tuple[str, str], tuple[object, Config, Rendered]] = {}
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
        live = tuple(is_live(s, now, config.poll.max_staleness) for s in snapshot.states)
        rendered = [
            self._render_source(s, config) if ok else None
            for s, ok in zip(snapshot.states, live, strict=True)
        ]
        static = self._static_part(snapshot, live, rendered, openmetrics)
        dynamic = utf8(
            _rate_limited(snapshot, now, openmetrics)
            + self._dynamic_part(rendered, now, openmetrics)
        )
        return static.body.body(dynamic, gzip)

    def _render_source(self, state: SourceState, config: Config) -> Rendered:
        with self._lock:
            cached = self._rendered.get(state.key)
        if cached is not None and cached[0] is state.report and cached[1] is config:
            return cached[2]
        rendered = _BY_NAME[state.source].render(config, state.name, state.report)
        with self._lock:
            self._rendered[state.key] = (state.report, config, rendered)
        return rendered

    def _static_part(
        self,
        snapshot: Snapshot,
        live: tuple[bool, ...],
        rendered: list[Rendered | None],
        openmetrics: bool,
    ) -> _Static:
        with self._lock:
            cached = self._static.get(openmetrics)
            if cached is not None and cached.snapshot is snapshot and cached.live == live:
                return cached
            known = {s.key for s in snapshot.states}
            for key in [k for k in self._rendered if k not in known]:
                del self._rendered[key]
        health = [_health(s) for s in snapshot.states]
        out: list[str] = []
        for family in _HEALTH:
            out.extend(
                family_lines(family.header(openmetrics), [h.get(family, "") for h in health])
            )
        out.append(BUILD.header(openmetrics) + self._build)
        pieces = [utf8("".join(out))]
        for source in SOURCES:
            for family in source.families:
                chunks = [r.static.get(family, b"") for r in rendered if r]
                pieces.extend(family_lines(family.header(openmetrics).encode(), chunks))
        static = _Static(snapshot=snapshot, live=live, body=StaticBody(pieces))
        with self._lock:
            self._static[openmetrics] = static
        return static

    def _dynamic_part(self, rendered: list[Rendered | None], now: float, openmetrics: bool) -> str:
        out = []
        for source in SOURCES:
            for family in source.families:
                chunks = [r.dynamic[family](now) for r in rendered if r and family in r.dynamic]
                out.extend(family_lines(family.header(openmetrics), chunks))
        if self._registry is not None:
            if openmetrics:
                extra = om_exposition.generate_latest(self._registry).decode()  # type: ignore[no-untyped-call]
                out.append(extra.removesuffix("# EOF\n"))
            else:
                out.append(text_exposition.generate_latest(self._registry).decode())
        if openmetrics:
            out.append("# EOF\n")
        return "".join(out)
