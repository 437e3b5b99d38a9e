"""When to ask the API: one schedule per target of each source, bounded concurrency, last-good
data, reloads. The state change is one pure function, `next_state`; the threads only drive it."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from exporter.api import ApiError, Client, Clocks, Stopped
from exporter.config import Config, format_duration
from exporter.sources import SOURCES, Source
from exporter.state import Reason, Report, Snapshot, SourceState, is_live

log = logging.getLogger("exporter.poller")

ClientFactory = Callable[[Config, Clocks], Client]
Key = tuple[str, str]  # (source, target)
_BY_NAME: Mapping[str, Source] = {s.name: s for s in SOURCES}


@dataclass(frozen=True)
class PollState:
    """What the poller knows: the published Snapshot, when each target is due (monotonic
    time), and the generation of the config that polls started under must match."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    due: Mapping[Key, float] = field(default_factory=dict)
    generation: int = -1


@dataclass(frozen=True)
class Reloaded:
    """A config came into force at monotonic time `now`."""

    now: float


@dataclass(frozen=True)
class PollResult:
    """One finished poll of one target: one value, whatever its outcome."""

    key: Key
    generation: int
    started: float  # monotonic
    finished: float  # monotonic
    attempted_at: float  # wall time the poll started
    outcomes: tuple[str, ...] = ()  # one per request attempt
    report: Report | None = None
    failure: ApiError | None = None
    jitter: float = 0.0  # added to the interval, so targets do not poll in lockstep forever


def targets(config: Config) -> tuple[Key, ...]:
    return tuple((s.name, t) for s in SOURCES for t in s.targets(config))


def next_state(old: PollState, result: PollResult | Reloaded, config: Config) -> PollState:
    """The state after a poll result or a reload to `config`; returns `old` itself when a
    result belongs to no current poll (the config changed under it)."""
    if isinstance(result, Reloaded):
        return _reloaded(old, result.now, config)
    if result.generation != old.generation or result.key not in old.due:
        return old
    interval = config.poll.interval
    due = result.started + interval + result.jitter
    failure = result.failure
    if failure is not None and failure.retry_after is not None:
        # Counted from the reply, not from the poll's start: the wait began with the reply.
        due = max(due, result.finished + failure.retry_after)
    states = tuple(_polled(s, result) if s.key == result.key else s for s in old.snapshot.states)
    return replace(
        old,
        snapshot=Snapshot(states=states, config=config),
        due={**old.due, result.key: due},
    )


def _reloaded(old: PollState, now: float, config: Config) -> PollState:
    """Kept targets keep their data; their schedule too while the windows stay the same (before
    the first reload, none is due); new ones are due at once."""
    previous = {s.key: s for s in old.snapshot.states}
    keep_due = old.snapshot.config.windows == config.windows
    keys = targets(config)
    return PollState(
        snapshot=Snapshot(
            states=tuple(previous.get(k, SourceState(*k)) for k in keys), config=config
        ),
        due={k: old.due[k] if keep_due and k in old.due else now for k in keys},
        generation=old.generation + 1,
    )


def _polled(old: SourceState, result: PollResult) -> SourceState:
    requests = old.requests
    for outcome in result.outcomes:
        requests = _bump(requests, outcome)
    state = replace(
        old,
        polls=old.polls + 1,
        requests=requests,
        last_attempt=result.attempted_at,
        last_duration=result.finished - result.started,
    )
    if result.failure is None:
        return replace(
            state,
            report=result.report,
            up=True,
            last_success=result.attempted_at,
            last_error=None,
        )
    reason = result.failure.reason
    return replace(state, up=False, last_error=reason, errors=_bump(old.errors, reason.value))


def _bump(counts: Mapping[str, int], key: str) -> Mapping[str, int]:
    return MappingProxyType({**counts, key: counts.get(key, 0) + 1})


@dataclass(frozen=True)
class Published:
    """A poll result that came into force: the target's state before and after it."""

    result: PollResult
    before: SourceState
    after: SourceState
    next_in: float  # seconds until the target's next poll
    config: Config


def log_published(published: Published) -> None:
    """One log line per poll: a warning with what is kept when it failed, info on recovery."""
    old, new, failure = published.before, published.after, published.result.failure
    fields = {"group": new.name or "(whole team)"}
    if failure is not None:
        if new.report is None:
            kept = "no data yet"
        elif not is_live(new, published.result.attempted_at, published.config.poll.max_staleness):
            kept = "its data is older than poll.max_staleness and no longer exported"
        else:
            kept = "keeping its last good data"
        log.warning(
            "poll failed: %s; group down, %s, next attempt in %s",
            failure,
            kept,
            format_duration(published.next_in),
            extra={**fields, "reason": failure.reason.value},
        )
    elif not old.up and old.polls:
        log.info("poll recovered", extra=fields)
    else:
        log.debug(
            "poll succeeded",
            extra={
                **fields,
                "rows": new.report.rows if new.report else 0,
                "duration": f"{new.last_duration or 0:.3f}s",
            },
        )


class Poller:
    """Polls every target of every source on its own schedule and publishes Snapshots.

    `on_published` hears of every poll result that came into force (by default, it logs it).
    """

    def __init__(
        self,
        config: Config,
        client_factory: ClientFactory = lambda config, clocks: Client(
            config.api, clocks=clocks, max_connections=config.poll.concurrency
        ),
        clocks: Clocks | None = None,
        jitter: Callable[[float], float] | None = None,
        on_published: Callable[[Published], None] = log_published,
    ) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        base = clocks or Clocks()
        self._clocks = replace(base, wait=self._stop.wait)
        self._client_factory = client_factory
        self._jitter = jitter or (lambda interval: min(interval * 0.05, 10.0) * base.random())
        self._on_published = on_published
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self._client: Client | None = None
        self._state = PollState()
        self._running: set[Key] = set()
        self._retired: list[Client] = []  # replaced by a reload; closed once no poll uses them
        self._slots: threading.Semaphore
        self._apply(config)

    @property
    def snapshot(self) -> Snapshot:
        return self._state.snapshot

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
        """Apply a new config: kept targets keep their data; new or changed ones poll at once."""
        self._apply(config)
        self._wake.set()

    def _apply(self, config: Config) -> None:
        with self._lock:
            if self._client is not None:
                self._retired.append(self._client)
            self._client = self._client_factory(config, self._clocks)
            self._slots = threading.Semaphore(config.poll.concurrency)
            now = self._clocks.monotonic()
            self._publish(next_state(self._state, Reloaded(now), config))

    def _publish(self, state: PollState) -> None:
        self._state = state
        if all(s.polls for s in state.snapshot.states):
            self.ready.set()

    def _schedule(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                now = self._clocks.monotonic()
                state = self._state
                for key, due in state.due.items():
                    if due <= now and key not in self._running:
                        self._running.add(key)
                        assert self._client is not None
                        threading.Thread(
                            target=self._poll,
                            args=(key, state, self._client, self._slots),
                            name=f"poll-{key[1] or 'team'}",
                            daemon=True,
                        ).start()
                waiting = [d for k, d in state.due.items() if k not in self._running]
                timeout = max(0.0, min(waiting) - now) if waiting else None
            self._wake.wait(timeout)

    def _poll(self, key: Key, state: PollState, client: Client, slots: threading.Semaphore) -> None:
        with slots:
            if self._stop.is_set():
                return
            result = self._ask(key, state, client)
        if result is not None:
            self._commit(result)

    def _ask(self, key: Key, state: PollState, client: Client) -> PollResult | None:
        """One poll of a target, as one value; None when a shutdown cut it short."""
        source, target = _BY_NAME[key[0]], key[1]
        config = state.snapshot.config
        clocks = self._clocks
        started = clocks.monotonic()
        attempted_at = clocks.wall()
        outcomes: list[str] = []
        report: Report | None = None
        failure: ApiError | None = None
        try:
            replies = [
                (r, client.call(r, functools.partial(source.parse, r), outcomes.append))
                for r in source.plan(config, target, attempted_at)
            ]
            report = source.report(config, target, replies)
        except ApiError as err:
            failure = err
        except Stopped:
            return None
        except Exception as err:  # a bug must not kill the target's schedule forever
            if self._stop.is_set():
                return None
            log.exception("unexpected error polling group", extra={"group": target})
            failure = ApiError(Reason.INVALID_RESPONSE, type(err).__name__)
        interval = config.poll.interval
        return PollResult(
            key=key,
            generation=state.generation,
            started=started,
            finished=clocks.monotonic(),
            attempted_at=attempted_at,
            outcomes=tuple(outcomes),
            report=report,
            failure=failure,
            jitter=self._jitter(interval),
        )

    def _commit(self, result: PollResult) -> None:
        with self._lock:
            self._running.discard(result.key)
            if not self._running:
                for retired in self._retired:
                    retired.close()
                self._retired.clear()
            self._wake.set()
            if self._stop.is_set():
                return  # a shutdown cut the call short; that is no failure of the target
            old = self._state
            new = next_state(old, result, old.snapshot.config)
            if new is old:
                return  # the config changed under this poll; its result belongs to no one
            self._publish(new)
        before = next(s for s in old.snapshot.states if s.key == result.key)
        after = next(s for s in new.snapshot.states if s.key == result.key)
        next_in = max(new.due[result.key] - result.finished, 0.0)
        self._on_published(Published(result, before, after, next_in, new.snapshot.config))
