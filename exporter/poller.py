"""When to ask the API: one schedule per target of each source, bounded concurrency, last-good
data, reloads, and one rate-limit state per service key shared by all of them (polls queue
behind its budget; a poll that overruns its interval says so). The state change is one pure
function, `next_state`; the threads only drive it."""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from exporter.api import ApiError, Client, Clocks, KeyLimit, Stopped
from exporter.config import ApiConfig, Config, Secret, format_duration
from exporter.sources import SOURCES, Source
from exporter.state import Reason, Report, Snapshot, SourceState, is_live

log = logging.getLogger("exporter.poller")

# A client for the config's API settings, sending through the key's shared rate-limit state.
ClientFactory = Callable[[Config, Clocks, KeyLimit], Client]
Key = tuple[str, str]  # (source, target)
# What a poll of a target asks: the API settings and what its source's requests depend on.
Ask = tuple[ApiConfig, Hashable]
ClientKey = tuple[ApiConfig, int]  # the API settings and poll.concurrency a client is made for
_BY_NAME: Mapping[str, Source] = {s.name: s for s in SOURCES}
# Sources whose reports another source renders with (the team's rows, which every group's
# series show): started first when due together, so the others render once, with them.
_READ_BY_OTHERS = frozenset(r for s in SOURCES for r in s.reads if r != s.name)


@dataclass(frozen=True)
class PollState:
    """What the poller knows: the published Snapshot, when each target is due (monotonic
    time), and what a poll of each target asks under the running config."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    due: Mapping[Key, float] = field(default_factory=dict)
    asks: Mapping[Key, Ask] = field(default_factory=dict)


@dataclass(frozen=True)
class Reloaded:
    """A config came into force at monotonic time `now`."""

    now: float


@dataclass(frozen=True)
class RateLimited:
    """The service key began a rate-limit wait that ends at wall time `until`."""

    until: float


@dataclass(frozen=True)
class PollResult:
    """One finished poll of one target: one value, whatever its outcome."""

    key: Key
    ask: Ask  # what it asked; it counts only while the config still asks the same
    started: float  # monotonic, when it was due (queueing for a slot or the budget included)
    finished: float  # monotonic
    attempted_at: float  # wall time the poll started
    outcomes: tuple[str, ...] = ()  # one per request attempt
    report: Report | None = None
    failure: ApiError | None = None
    jitter: float = 0.0  # added to the interval, so targets do not poll in lockstep forever


def _later(item: tuple[Key, float]) -> bool:
    """Whether a due target starts after those others render with."""
    return item[0][0] not in _READ_BY_OTHERS


def asks(config: Config) -> dict[Key, Ask]:
    """What a poll of each target asks under `config`, in exposition order."""
    return {
        (s.name, t): (config.api, s.depends_on(config)) for s in SOURCES for t in s.targets(config)
    }


def overran(result: PollResult, interval: float) -> bool:
    """Whether the poll took longer than its interval: the next one was due before it ended."""
    return result.finished - result.started > interval


def next_state(
    old: PollState, result: PollResult | Reloaded | RateLimited, config: Config
) -> PollState:
    """The state after a poll result, a reload to `config` or a rate-limit wait; returns `old`
    itself when a result no longer answers what the config asks (a reload changed it under
    the poll)."""
    if isinstance(result, Reloaded):
        return _reloaded(old, result.now, config)
    if isinstance(result, RateLimited):
        until = max(old.snapshot.rate_limited_until, result.until)
        return replace(old, snapshot=replace(old.snapshot, rate_limited_until=until))
    if old.asks.get(result.key) != result.ask:
        return old
    interval = config.interval(_BY_NAME[result.key[0]].collector)
    due = result.started + interval + result.jitter
    failure = result.failure
    if failure is not None and failure.retry_after is not None:
        # Counted from the reply, not from the poll's start: the wait began with the reply.
        due = max(due, result.finished + failure.retry_after)
    states = tuple(
        _polled(s, result, interval) if s.key == result.key else s for s in old.snapshot.states
    )
    return replace(
        old,
        snapshot=replace(old.snapshot, states=states, config=config),
        due={**old.due, result.key: due},
    )


def _reloaded(old: PollState, now: float, config: Config) -> PollState:
    """Kept targets keep their data; each keeps its schedule while its poll asks the same, and
    is due at once when it asks something else (a new key, URL, timeout, windows) or is new."""
    previous = {s.key: s for s in old.snapshot.states}
    new = asks(config)
    # Another key has waited for nothing yet.
    same_key = old.snapshot.config.api.service_key == config.api.service_key
    return PollState(
        snapshot=Snapshot(
            states=tuple(previous.get(k, SourceState(*k)) for k in new),
            config=config,
            rate_limited_until=old.snapshot.rate_limited_until if same_key else 0.0,
        ),
        due={k: old.due[k] if old.asks.get(k) == ask else now for k, ask in new.items()},
        asks=new,
    )


def _polled(old: SourceState, result: PollResult, interval: float) -> SourceState:
    requests = old.requests
    for outcome in result.outcomes:
        requests = _bump(requests, outcome)
    state = replace(
        old,
        polls=old.polls + 1,
        overruns=old.overruns + overran(result, interval),
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
            last_error_message=None,
        )
    reason = result.failure.reason
    return replace(
        state,
        up=False,
        last_error=reason,
        last_error_message=str(result.failure),
        errors=_bump(old.errors, reason.value),
    )


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
    # Its failure is the key's rate-limit wait that another poll's line already reported.
    quiet: bool = False


def log_published(published: Published) -> None:
    """One log line per poll: a warning with what is kept when it failed, info on recovery;
    one more when it overran its interval. A rate-limit wait is reported once, not per group."""
    old, new, failure = published.before, published.after, published.result.failure
    source = _BY_NAME[published.result.key[0]]
    fields = {"group": new.name or "(whole team)", "collector": source.collector}
    _log_overrun(published, fields)
    if failure is not None and published.quiet:
        log.debug("poll failed: %s", failure, extra={**fields, "reason": failure.reason.value})
    elif failure is not None:
        if new.report is None:
            kept = "no data yet"
        elif not is_live(new, published.result.attempted_at, published.config.poll.max_staleness):
            kept = "its data is older than poll.max_staleness and no longer exported"
        else:
            kept = "keeping its last good data"
        log.warning(
            "poll failed: %s; %s down, %s, next attempt in %s",
            failure,
            source.health.subject if source.health else f"{source.name} of the {_whom(new.name)}",
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


def _whom(target: str) -> str:
    return f"group {target}" if target else "team"


def _log_overrun(published: Published, fields: Mapping[str, str]) -> None:
    result, config = published.result, published.config
    interval = config.interval(_BY_NAME[result.key[0]].collector)
    if not overran(result, interval):
        return
    budget = config.api.max_requests_per_minute
    advice = (
        f"at api.max_requests_per_minute: {budget} the key cannot send its requests in time;"
        " lengthen poll.interval or raise the budget"
        if budget
        else "the API answers too slowly for it; lengthen poll.interval"
    )
    log.warning(
        "poll took %s, longer than poll.interval %s: %s",
        f"{result.finished - result.started:.2f}s",
        format_duration(interval),
        advice,
        extra=fields,
    )


class Poller:
    """Polls every target of every source on its own schedule and publishes Snapshots.

    `on_published` hears of every poll result that came into force (by default, it logs it).
    """

    def __init__(
        self,
        config: Config,
        client_factory: ClientFactory = lambda config, clocks, limit: Client(
            config.api, clocks=clocks, max_connections=config.poll.concurrency, limit=limit
        ),
        clocks: Clocks | None = None,
        jitter: Callable[[float], float] | None = None,
        on_published: Callable[[Published], None] = log_published,
    ) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        base = clocks or Clocks()
        self._clocks = replace(base, wait=lambda seconds: self._stop.wait(seconds / base.rate))
        self._client_factory = client_factory
        self._jitter = jitter or (lambda interval: min(interval * 0.05, 10.0) * base.random())
        self._on_published = on_published
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self._state = PollState()
        self._running: set[tuple[Key, Ask]] = set()
        # One client per API settings: a reload that changes them retires the running one,
        # closed as soon as the last poll using it ends.
        self._clients: dict[ClientKey, Client] = {}
        self._users: Counter[ClientKey] = Counter()
        self._current: ClientKey | None = None
        self._slots = threading.Semaphore(config.poll.concurrency)
        # One rate-limit state per service key, whichever client (API settings) sends with it.
        self._limits: dict[Secret, KeyLimit] = {}
        # Monotonic end of the last rate-limit wait a log line reported.
        self._reported_until = -1.0
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
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def reconfigure(self, config: Config) -> None:
        """Apply a new config: kept targets keep their data and, when their polls ask the
        same, their schedule and polls in flight; new or changed ones poll at once."""
        self._apply(config)
        self._wake.set()

    def _apply(self, config: Config) -> None:
        with self._lock:
            key = (config.api, config.poll.concurrency)
            if key not in self._clients:
                self._clients[key] = self._client_factory(
                    config, self._clocks, self._limit(config.api.service_key)
                )
            if self._current is not None and config.poll.concurrency != self._current[1]:
                self._slots = threading.Semaphore(config.poll.concurrency)
            retired, self._current = self._current, key
            if retired is not None:
                self._release(retired)
            now = self._clocks.monotonic()
            self._publish(next_state(self._state, Reloaded(now), config))

    def _limit(self, key: Secret) -> KeyLimit:
        """The key's shared rate-limit state (under the lock)."""
        if key not in self._limits:
            self._limits[key] = KeyLimit(self._clocks, on_pause=self._rate_limited)
        return self._limits[key]

    def _rate_limited(self, until: float) -> None:
        with self._lock:
            state = self._state
            self._publish(next_state(state, RateLimited(until), state.snapshot.config))

    def _release(self, key: ClientKey) -> None:
        """Close a client no longer current once no poll uses it."""
        if key != self._current and not self._users[key]:
            del self._users[key]
            client = self._clients.pop(key, None)  # None: stop() closed them all
            if client is not None:
                client.close()

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
                for key, due in sorted(state.due.items(), key=_later):
                    if due <= now and (key, state.asks[key]) not in self._running:
                        self._start(key, state)
                running = {k for k, _ in self._running}
                waiting = [d for k, d in state.due.items() if k not in running]
                timeout = max(0.0, min(waiting) - now) / self._clocks.rate if waiting else None
            self._wake.wait(timeout)

    def _start(self, key: Key, state: PollState) -> None:
        """A poll of `key` in a thread of its own, with the current client (under the lock)."""
        assert self._current is not None
        client = self._current
        self._running.add((key, state.asks[key]))
        self._users[client] += 1
        threading.Thread(
            target=self._poll,
            args=(key, state, client, self._clients[client], self._slots),
            name=f"poll-{key[1] or 'team'}",
            daemon=True,
        ).start()

    def _poll(
        self,
        key: Key,
        state: PollState,
        client_key: ClientKey,
        client: Client,
        slots: threading.Semaphore,
    ) -> None:
        result = None
        started = self._clocks.monotonic()
        try:
            with slots:
                if not self._stop.is_set():
                    result = self._ask(key, state, client, started)
        finally:
            self._commit(key, state.asks[key], client_key, result)

    def _ask(self, key: Key, state: PollState, client: Client, started: float) -> PollResult | None:
        """One poll of a target, as one value; None when a shutdown cut it short."""
        source, target = _BY_NAME[key[0]], key[1]
        config = state.snapshot.config
        clocks = self._clocks
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
        interval = config.interval(source.collector)
        return PollResult(
            key=key,
            ask=state.asks[key],
            started=started,
            finished=clocks.monotonic(),
            attempted_at=attempted_at,
            outcomes=tuple(outcomes),
            report=report,
            failure=failure,
            jitter=self._jitter(interval),
        )

    def _commit(self, key: Key, ask: Ask, client_key: ClientKey, result: PollResult | None) -> None:
        with self._lock:
            self._running.discard((key, ask))
            self._users[client_key] -= 1
            self._release(client_key)
            self._wake.set()
            if result is None or self._stop.is_set():
                return  # a shutdown cut the call short; that is no failure of the target
            old = self._state
            new = next_state(old, result, old.snapshot.config)
            if new is old:
                return  # a reload changed what this poll asked; its result answers no one
            self._publish(new)
            quiet = self._reported(result)
        before = next(s for s in old.snapshot.states if s.key == key)
        after = next(s for s in new.snapshot.states if s.key == key)
        next_in = max(new.due[key] - result.finished, 0.0)
        self._on_published(
            Published(result, before, after, next_in, new.snapshot.config, quiet=quiet)
        )

    def _reported(self, result: PollResult) -> bool:
        """Whether the result's failure is a rate-limit wait some line already reported (under
        the lock); if it is a new one, it is now. A request the wait held back is never the one
        to report it: the reply that started the wait is, whichever commits first."""
        failure = result.failure
        if failure is None or not failure.key_wait or failure.retry_after is None:
            return False
        if failure.held:
            return True
        if result.finished < self._reported_until:
            return True
        self._reported_until = result.finished + failure.retry_after
        return False
