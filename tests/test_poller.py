"""The poller's state change, `next_state`, as a pure function: what a reload keeps, when a
target is due, and which finished polls still count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from exporter.api import ApiError, Client, Clocks, KeyLimit
from exporter.config import ApiConfig, Config, LabelConfig, PollConfig, Secret, Window
from exporter.demo import FakeWindsurf, Fault
from exporter.poller import Poller, PollResult, PollState, Reloaded, next_state
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE
from exporter.sources.user_rows import build_report, decode_page
from exporter.state import Reason
from tests import rows
from tests.conftest import USER_PAGE_ONLY, wait_for

WEEK, MONTH = Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)
CONFIG = Config(
    groups=("eng", "ops"),
    windows=(MONTH,),
    poll=PollConfig(interval=900.0),
    team=False,
    collectors=USER_PAGE_ONLY,
)
ENG, OPS, NEW = (USER_PAGE.name, "eng"), (USER_PAGE.name, "ops"), (USER_PAGE.name, "new")
REPORT = build_report([("30d", decode_page({"userTableStats": [rows.ALICE]}))])


def started(config: Config = CONFIG, now: float = 100.0) -> PollState:
    """The state right after start-up: every target due at once."""
    return next_state(PollState(), Reloaded(now), config)


def result(state: PollState, key: tuple[str, str] = ENG, **fields: Any) -> PollResult:
    """A successful poll of `key` that started at 100 and took 2 s, under `state`'s config."""
    values: dict[str, Any] = {
        "key": key,
        "ask": state.asks[key],
        "started": 100.0,
        "finished": 102.0,
        "attempted_at": 1_700_000_000.0,
        "outcomes": ("success",),
        "report": REPORT,
        **fields,
    }
    return PollResult(**values)


def polled(config: Config = CONFIG) -> PollState:
    """Both groups polled once, successfully."""
    state = started(config)
    for key in (ENG, OPS):
        state = next_state(state, result(state, key), config)
    return state


def state_of(state: PollState, key: tuple[str, str]) -> Any:
    return next(s for s in state.snapshot.states if s.key == key)


def test_start_up_makes_every_group_due_at_once_with_no_data() -> None:
    state = started(now=100.0)
    assert state.due == {ENG: 100.0, OPS: 100.0}
    assert [(s.name, s.polls, s.report) for s in state.snapshot.states] == [
        ("eng", 0, None),
        ("ops", 0, None),
    ]


def test_a_success_publishes_the_report_and_schedules_the_next_poll_from_its_start() -> None:
    state = started()
    after = next_state(state, result(state, jitter=3.0), CONFIG)
    eng = state_of(after, ENG)
    assert (eng.up, eng.report, eng.polls, eng.last_success) == (True, REPORT, 1, 1_700_000_000.0)
    assert eng.last_duration == 2.0
    assert dict(eng.requests) == {"success": 1}
    assert after.due[ENG] == 100.0 + 900.0 + 3.0
    assert after.due[OPS] == state.due[OPS]


def test_a_failure_keeps_the_last_good_report_and_counts_the_reason() -> None:
    state = polled()
    failure = ApiError(Reason.SERVER_ERROR, "HTTP 503")
    after = next_state(
        state, result(state, report=None, failure=failure, outcomes=("server_error",)), CONFIG
    )
    eng = state_of(after, ENG)
    assert (eng.up, eng.report, eng.last_error) == (False, REPORT, Reason.SERVER_ERROR)
    assert dict(eng.errors) == {"server_error": 1}
    assert dict(eng.requests) == {"success": 1, "server_error": 1}


def test_retry_after_is_counted_from_the_reply_when_it_is_longer_than_the_interval() -> None:
    state = started()
    failure = ApiError(Reason.RATE_LIMITED, "HTTP 429", retry_after=3600.0)
    after = next_state(state, result(state, failure=failure, report=None), CONFIG)
    assert after.due[ENG] == 102.0 + 3600.0


def test_a_reload_keeps_each_kept_groups_data_and_counters() -> None:
    state = polled()
    reloaded = next_state(state, Reloaded(500.0), replace(CONFIG, groups=("eng", "new")))
    assert state_of(reloaded, ENG) is state_of(state, ENG)
    assert [s.name for s in reloaded.snapshot.states] == ["eng", "new"]
    assert state_of(reloaded, NEW).polls == 0


def test_turning_the_team_poll_on_polls_the_team_and_every_group_at_once() -> None:
    # With the team poll each group is asked for one window only: another request.
    state = polled()
    reloaded = next_state(state, Reloaded(500.0), replace(CONFIG, team=True))
    assert reloaded.due == {ENG: 500.0, OPS: 500.0, (TEAM.name, ""): 500.0}


def test_a_reload_polls_a_new_group_at_once() -> None:
    state = polled()
    reloaded = next_state(state, Reloaded(500.0), replace(CONFIG, groups=("eng", "ops", "new")))
    assert reloaded.due[NEW] == 500.0


@pytest.mark.parametrize(
    "change",
    [
        {"api": ApiConfig(service_key=Secret("another key"))},
        {"api": ApiConfig(url="https://other.example.com")},
        {"api": ApiConfig(timeout=5.0)},
        {"windows": (WEEK, MONTH)},
    ],
    ids=["key", "url", "timeout", "windows"],
)
def test_a_reload_that_changes_what_a_poll_asks_polls_at_once_and_discards_polls_in_flight(
    change: dict[str, Any],
) -> None:
    state = polled()
    in_flight = result(state, started=1000.0, finished=1002.0)
    changed = replace(CONFIG, **change)
    reloaded = next_state(state, Reloaded(500.0), changed)
    assert reloaded.due == {ENG: 500.0, OPS: 500.0}
    assert next_state(reloaded, in_flight, changed) is reloaded


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"poll": PollConfig(interval=60.0, max_staleness=7200.0, concurrency=1)},
        {"labels": LabelConfig(user="hash")},
        {"per_user": False},
        {"idle_thresholds": (WEEK,)},
        {"groups": ("eng", "ops", "new")},
    ],
    ids=["nothing", "poll", "labels", "per_user", "idle_thresholds", "a new group"],
)
def test_a_reload_that_asks_the_same_keeps_the_schedule_and_the_polls_in_flight(
    change: dict[str, Any],
) -> None:
    state = polled()
    in_flight = result(state, started=1000.0, finished=1002.0)
    changed = replace(CONFIG, **change)
    reloaded = next_state(state, Reloaded(500.0), changed)
    assert {k: reloaded.due[k] for k in (ENG, OPS)} == {ENG: state.due[ENG], OPS: state.due[OPS]}
    after = next_state(reloaded, in_flight, changed)
    assert state_of(after, ENG).polls == 2
    assert after.due[ENG] == 1000.0 + changed.poll.interval


def test_a_poll_of_a_group_no_longer_configured_is_discarded() -> None:
    state = started(replace(CONFIG, groups=("eng", "ops", "new")))
    in_flight = result(state, key=NEW)
    reloaded = next_state(state, Reloaded(101.0), CONFIG)
    assert next_state(reloaded, in_flight, CONFIG) is reloaded


# The threads that drive next_state, against the fake API over loopback: its request log shows
# what was asked, and when.


@pytest.fixture
def poller_for(fake_api: FakeWindsurf) -> Iterator[Callable[..., tuple[Poller, list[Client]]]]:
    """A Poller of the fake API, and every client it made (open ones have `closed` False)."""
    made: list[tuple[Poller, list[Client]]] = []

    def start(config: Config) -> tuple[Poller, list[Client]]:
        clients: list[Client] = []

        def factory(config: Config, clocks: Clocks, limit: KeyLimit) -> Client:
            clients.append(TrackedClient(config.api, clocks=clocks, limit=limit))
            return clients[-1]

        poller = Poller(config, client_factory=factory, jitter=lambda interval: 0.0)
        poller.start()
        made.append((poller, clients))
        return poller, clients

    yield start
    for poller, _ in made:
        poller.stop()


class TrackedClient(Client):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def fake_config(fake: FakeWindsurf, **api: Any) -> Config:
    return Config(
        api=ApiConfig(url=fake.url, service_key=Secret(fake.service_key), retries=0, **api),
        groups=("engineering", "research"),
        poll=PollConfig(interval=3600.0),
        team=False,
        collectors=USER_PAGE_ONLY,
    )


def polls(poller: Poller, group: str) -> int:
    return int(next(s.polls for s in poller.snapshot.states if s.name == group))


def test_a_reload_that_changes_the_timeout_polls_at_once(
    fake_api: FakeWindsurf, poller_for: Callable[..., tuple[Poller, list[Client]]]
) -> None:
    config = fake_config(fake_api, timeout=10.0)
    poller, _ = poller_for(config)
    wait_for(poller.ready.is_set, what="the first polls")
    poller.reconfigure(replace(config, api=replace(config.api, timeout=9.0)))
    wait_for(lambda: polls(poller, "engineering") == 2, what="a poll right after the reload")
    assert len(fake_api.requests_for("engineering")) == 2


def test_a_reload_that_asks_the_same_keeps_a_poll_in_flight(
    fake_api: FakeWindsurf, poller_for: Callable[..., tuple[Poller, list[Client]]]
) -> None:
    fake_api.set_fault("engineering", Fault(delay=0.5, times=1))
    config = fake_config(fake_api)
    poller, _ = poller_for(config)
    wait_for(lambda: fake_api.requests_for("engineering"), what="the poll to be in flight")
    poller.reconfigure(config)
    poller.reconfigure(replace(config, groups=(*config.groups, "design")))
    wait_for(lambda: polls(poller, "engineering") == 1, what="the poll in flight to count")
    wait_for(poller.ready.is_set, what="the new group's poll")
    assert len(fake_api.requests_for("engineering")) == 1


def test_each_retired_client_is_closed_when_its_last_poll_ends(
    fake_api: FakeWindsurf, poller_for: Callable[..., tuple[Poller, list[Client]]]
) -> None:
    # Every request hangs; each reload gives a new client and polls at once, while the polls
    # of the clients before it run into their (short) timeouts.
    fake_api.set_fault("*", Fault(delay=30.0))
    config = fake_config(fake_api, timeout=0.2)
    poller, clients = poller_for(config)
    timeouts = [0.2 + step / 1000 for step in range(1, 11)]
    # The last polls hang for a minute: the retired clients must not wait for them.
    for step, timeout in enumerate([*timeouts, 60.0], start=1):
        wait_for(lambda n=step: len(fake_api.requests) == 2 * n, what=f"client {step}'s polls")
        poller.reconfigure(replace(config, api=replace(config.api, timeout=timeout)))
    wait_for(lambda: len(fake_api.requests) == 24, what="the polls of the last client")
    assert len(clients) == 12
    wait_for(
        lambda: [c.closed for c in clients] == [True] * 11 + [False],
        what="every retired client to be closed",
    )


def test_the_team_is_asked_first_so_the_groups_render_once_with_its_rows(
    fake_api: FakeWindsurf, poller_for: Callable[..., tuple[Poller, list[Client]]]
) -> None:
    config = replace(
        fake_config(fake_api), team=True, poll=PollConfig(interval=3600.0, concurrency=1)
    )
    poller, _ = poller_for(config)
    wait_for(poller.ready.is_set, what="the first polls")
    asked = [r.group for r in sorted(fake_api.requests, key=lambda r: r.at)]
    assert asked[0] == ""  # the team's request names no group
    assert sorted(asked[1:]) == ["engineering", "research"]
