"""The poller's state change, `next_state`, as a pure function: what a reload keeps, when a
target is due, and which finished polls still count."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exporter.api import ApiError
from exporter.config import Config, PollConfig, Window
from exporter.poller import PollResult, PollState, Reloaded, next_state
from exporter.sources.user_page import USER_PAGE, build_report, decode_page
from exporter.state import Reason
from tests import rows

WEEK, MONTH = Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)
CONFIG = Config(groups=("eng", "ops"), windows=(MONTH,), poll=PollConfig(interval=900.0))
ENG, OPS, NEW = (USER_PAGE.name, "eng"), (USER_PAGE.name, "ops"), (USER_PAGE.name, "new")
REPORT = build_report([("30d", decode_page({"userTableStats": [rows.ALICE]}))])


def started(config: Config = CONFIG, now: float = 100.0) -> PollState:
    """The state right after start-up: every target due at once."""
    return next_state(PollState(), Reloaded(now), config)


def result(state: PollState, key: tuple[str, str] = ENG, **fields: Any) -> PollResult:
    """A successful poll of `key` that started at 100 and took 2 s, under `state`'s config."""
    values: dict[str, Any] = {
        "key": key,
        "generation": state.generation,
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


def test_a_reload_with_the_same_windows_keeps_the_schedule_and_polls_new_groups_at_once() -> None:
    state = polled()
    reloaded = next_state(state, Reloaded(500.0), replace(CONFIG, groups=("eng", "ops", "new")))
    assert reloaded.due == {ENG: state.due[ENG], OPS: state.due[OPS], NEW: 500.0}


def test_a_reload_with_other_windows_polls_every_group_at_once() -> None:
    state = polled()
    reloaded = next_state(state, Reloaded(500.0), replace(CONFIG, windows=(WEEK, MONTH)))
    assert reloaded.due == {ENG: 500.0, OPS: 500.0}


def test_a_poll_that_started_before_a_reload_is_discarded() -> None:
    state = started()
    in_flight = result(state)
    reloaded = next_state(state, Reloaded(101.0), CONFIG)
    assert next_state(reloaded, in_flight, CONFIG) is reloaded


def test_a_poll_of_a_group_no_longer_configured_is_discarded() -> None:
    state = started()
    assert next_state(state, result(state, key=NEW), CONFIG) is state
