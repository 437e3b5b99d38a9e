"""When to ask the API: one schedule per group, bounded concurrency, last-good data, and the
immutable Snapshot that scrapes read while polls replace it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from exporter.api import ApiError, Client, Clocks, Reason, Stopped
from exporter.config import Config, Window, format_duration
from exporter.model import GroupReport, build_report

log = logging.getLogger("exporter.poller")

ClientFactory = Callable[[Config, Clocks], Client]
_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GroupState:
    """What is known about one group: its last good report and how its polls have gone."""

    name: str
    report: GroupReport | None = None
    up: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    last_duration: float | None = None
    last_error: Reason | None = None
    last_error_message: str | None = None  # the failure's one redacted line, for the landing page
    polls: int = 0
    errors: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    requests: Mapping[str, int] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All groups at one instant; replaced whole, so a scrape never sees half a poll."""

    groups: tuple[GroupState, ...] = ()
    config: Config = field(default_factory=Config)


def _bump(counts: Mapping[str, int], key: str) -> Mapping[str, int]:
    return MappingProxyType({**counts, key: counts.get(key, 0) + 1})


class Poller:
    """Polls every configured group on its own schedule and publishes Snapshots."""

    def __init__(
        self,
        config: Config,
        client_factory: ClientFactory = lambda config, clocks: Client(
            config.api, clocks=clocks, max_connections=config.poll.concurrency
        ),
        clocks: Clocks | None = None,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        base = clocks or Clocks()
        self._clocks = replace(base, wait=self._stop.wait)
        self._client_factory = client_factory
        # Spread polls a little so groups do not hit the API in lockstep forever.
        self._jitter = jitter or (lambda interval: min(interval * 0.05, 10.0) * base.random())
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self._client: Client | None = None
        self._generation = -1
        self._snapshot = Snapshot()
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._unpolled: set[str] = set()
        self._retired: list[Client] = []  # replaced by a reload; closed once no poll uses them
        self._slots: threading.Semaphore
        self._apply(config)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def start(self) -> None:
        self._thread = threading.Thread(target=self._schedule, name="poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling and interrupt waits; in-flight requests are abandoned (daemon threads)"""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            for client in [*self._retired, self._client]:
                if client is not None:
                    client.close()

    def reconfigure(self, config: Config) -> None:
        """Apply a new config: kept groups keep their data; new or changed ones poll at once."""
        self._apply(config)
        self._wake.set()

    def _apply(self, config: Config) -> None:
        with self._lock:
            self._generation += 1
            if self._client is not None:
                self._retired.append(self._client)
            self._client = self._client_factory(config, self._clocks)
            self._slots = threading.Semaphore(config.poll.concurrency)
            now = self._clocks.monotonic()
            previous = {g.name: g for g in self._snapshot.groups}
            # Same windows: kept groups keep their schedule (before the first apply, none is due).
            keep_due = self._snapshot.config.windows == config.windows
            self._due = {
                g: self._due[g] if keep_due and g in self._due else now for g in config.groups
            }
            self._snapshot = Snapshot(
                groups=tuple(previous.get(g, GroupState(name=g)) for g in config.groups),
                config=config,
            )
            self._unpolled = {g for g in config.groups if g not in previous}
            if not self._unpolled:
                self.ready.set()

    def _schedule(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                now = self._clocks.monotonic()
                for group, due in self._due.items():
                    if due <= now and group not in self._running:
                        self._running.add(group)
                        threading.Thread(
                            target=self._poll_group,
                            args=(
                                group,
                                self._generation,
                                self._client,
                                self._slots,
                                self._snapshot.config.windows,
                            ),
                            name=f"poll-{group or 'team'}",
                            daemon=True,
                        ).start()
                waiting = [d for g, d in self._due.items() if g not in self._running]
                timeout = max(0.0, min(waiting) - now) if waiting else None
            self._wake.wait(timeout)

    def _poll_group(
        self,
        group: str,
        generation: int,
        client: Client,
        slots: threading.Semaphore,
        windows: tuple[Window, ...],
    ) -> None:
        with slots:
            if self._stop.is_set():
                return
            started = self._clocks.monotonic()
            attempted_at = self._clocks.wall()
            outcomes: list[str] = []
            report: GroupReport | None = None
            failure: ApiError | None = None
            try:
                pages = [(w.label, client.fetch(group, w, outcomes.append)) for w in windows]
                report = build_report(pages)
            except ApiError as err:
                failure = err
            except Stopped:
                return
            except Exception as err:  # a bug must not kill the group's schedule forever
                if self._stop.is_set():
                    return
                log.exception("unexpected error polling group", extra={"group": group})
                failure = ApiError(Reason.INVALID_RESPONSE, type(err).__name__)
            duration = self._clocks.monotonic() - started
        self._commit(group, generation, attempted_at, started, duration, outcomes, report, failure)

    def _commit(
        self,
        group: str,
        generation: int,
        attempted_at: float,
        started: float,
        duration: float,
        outcomes: list[str],
        report: GroupReport | None,
        failure: ApiError | None,
    ) -> None:
        with self._lock:
            self._running.discard(group)
            if not self._running:
                for retired in self._retired:
                    retired.close()
                self._retired.clear()
            if self._stop.is_set():
                return  # a shutdown cut the call short; that is no failure of the group
            if generation != self._generation or group not in self._due:
                self._wake.set()
                return  # the config changed under this poll; its result belongs to no one
            config = self._snapshot.config
            interval = config.poll.interval
            now = self._clocks.monotonic()
            due = started + interval + self._jitter(interval)
            if failure is not None and failure.retry_after is not None:
                # Counted from now, not from the poll's start: the wait began with the reply.
                due = max(due, now + failure.retry_after)
            self._due[group] = due
            next_in = max(due - now, 0.0)
            index = config.groups.index(group)
            old = self._snapshot.groups[index]
            requests = old.requests
            for outcome in outcomes:
                requests = _bump(requests, outcome)
            state = replace(
                old,
                polls=old.polls + 1,
                requests=requests,
                last_attempt=attempted_at,
                last_duration=duration,
            )
            if failure is None:
                state = replace(
                    state,
                    report=report,
                    up=True,
                    last_success=attempted_at,
                    last_error=None,
                    last_error_message=None,
                )
            else:
                state = replace(
                    state,
                    up=False,
                    last_error=failure.reason,
                    last_error_message=str(failure),
                    errors=_bump(old.errors, failure.reason.value),
                )
            groups = list(self._snapshot.groups)
            groups[index] = state
            self._snapshot = Snapshot(groups=tuple(groups), config=config)
            self._unpolled.discard(group)
            if not self._unpolled:
                self.ready.set()
            self._wake.set()
            expired = (
                state.last_success is not None
                and attempted_at - state.last_success > config.poll.max_staleness
            )
        _log_outcome(old, state, failure, next_in, expired)


def _log_outcome(
    old: GroupState, new: GroupState, failure: ApiError | None, next_in: float, expired: bool
) -> None:
    fields = {"group": new.name or "(whole team)"}
    if failure is not None:
        if new.report is None:
            kept = "no data yet"
        elif expired:
            kept = "its data is older than poll.max_staleness and no longer exported"
        else:
            kept = "keeping its last good data"
        log.warning(
            "poll failed: %s; group down, %s, next attempt in %s",
            failure,
            kept,
            format_duration(next_in),
            extra={**fields, "reason": failure.reason.value},
        )
    elif not old.up and old.polls:
        log.info("poll recovered", extra=fields)
    else:
        report = new.report
        log.debug(
            "poll succeeded",
            extra={
                **fields,
                "users": len(report.users) if report else 0,
                "duration": f"{new.last_duration or 0:.3f}s",
            },
        )
