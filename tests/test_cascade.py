"""CascadeAnalytics as a source: reply shapes, windows summed by UTC date, label bounds, what a
poll asks of the fake API, the collectors config, per-source health, and the golden exposition
of the two new sources (regenerate with `UPDATE_GOLDEN=1 uv run pytest tests/test_cascade.py`)."""

from __future__ import annotations

import calendar
import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from exporter.collector import Collector
from exporter.config import CollectorConfig, Config, ConfigError, Limits, Window, parse_config
from exporter.demo import CASCADE as CASCADE_METHOD
from exporter.demo import CREDIT_BALANCE, USAGE_CONFIG, FakeWindsurf, Fault
from exporter.poller import PollResult, PollState, Reloaded, next_state
from exporter.sources.base import Request
from exporter.sources.cascade import CASCADE, CascadeReport, decode, mode_label
from exporter.sources.credits import CREDITS, decode_balance, decode_usage_config
from exporter.state import MalformedResponse, Reason, Snapshot, SourceState
from tests.conftest import Running, samples, series
from tests.test_collector import _check_golden

WEEK, MONTH = Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)
CONFIG = Config(groups=("eng", "ops"), windows=(WEEK, MONTH))
ALL_ON = tuple(CollectorConfig(n, True) for n in ("user_page", "cascade", "credits"))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)))


NOW = utc(2024, 10, 11, 9, 46, 40)
EXAMPLE = {
    "queryResults": [
        {
            "cascadeLines": {
                "cascadeLines": [
                    {
                        "day": "2024-10-10T00:00:00Z",
                        "linesSuggested": "412",
                        "linesAccepted": "230",
                    },
                    {"day": "2024-10-11T00:00:00Z", "linesSuggested": "17"},
                ]
            }
        },
        {
            "cascadeRuns": {
                "cascadeRuns": [
                    {
                        "day": "2024-10-11T00:00:00Z",
                        "model": "claude-sonnet-4.5",
                        "mode": "CONVERSATIONAL_PLANNER_MODE_DEFAULT",
                        "messagesSent": "6",
                        "cascadeId": "3f0c",
                        "promptsUsed": "250",
                    }
                ]
            }
        },
        {"cascadeToolUsage": {"cascadeToolUsage": [{"tool": "CODE_ACTION", "count": "51"}]}},
    ]
}


def request(now: float = NOW, config: Config = CONFIG, target: str = "eng") -> Request:
    (found,) = CASCADE.plan(config, target, now)
    return found


def report(document: Any, now: float = NOW, config: Config = CONFIG) -> CascadeReport:
    asked = request(now, config)
    return CASCADE.report(config, "eng", [(asked, CASCADE.parse(asked, document))])


def run(day: str, model: str = "m", mode: str = "", cascade_id: str = "c", **more: Any) -> Any:
    return {"day": day, "model": model, "mode": mode, "cascadeId": cascade_id, **more}


def runs(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"queryResults": [{"cascadeRuns": {"cascadeRuns": list(rows)}}]}


# Reply shapes


def test_the_documented_example_reads_with_numbers_given_as_strings() -> None:
    reply = decode(EXAMPLE, request())
    oct10, oct11 = int(utc(2024, 10, 10) // 86400), int(utc(2024, 10, 11) // 86400)
    assert reply.lines == ((oct10, 412, 230), (oct11, 17, 0))
    assert reply.usage == {(oct11, "claude-sonnet-4.5", "default"): [6, 250, 6, 1]}
    assert reply.conversations == {oct11: {"3f0c"}}
    assert reply.tools == (("CODE_ACTION", 51),)
    assert reply.rows == 4
    assert reply.skipped == 0


def test_fields_left_out_are_zero_and_json_numbers_read_like_strings() -> None:
    reply = decode(runs({"day": "2024-10-11T00:00:00Z", "messagesSent": 3}), request())
    oct11 = int(utc(2024, 10, 11) // 86400)
    assert reply.usage == {(oct11, "", "unknown"): [3, 0, 3, 1]}
    assert reply.conversations == {}  # no cascadeId: no conversation to count


def test_unknown_fields_anywhere_are_harmless() -> None:
    document = {
        "queryResults": [
            {"cascadeLines": {"cascadeLines": [{"day": "2024-10-11T00:00:00Z", "x": [1]}]}},
            {"cascadeFuture": {"cascadeFuture": [{"day": "2024-10-11T00:00:00Z"}]}, "y": 1},
        ],
        "nextPageToken": "abc",
    }
    reply = decode(document, request())
    assert reply.lines == ((int(utc(2024, 10, 11) // 86400), 0, 0),)


@pytest.mark.parametrize(
    "document",
    [
        {"queryResults": []},
        {},
        {"queryResults": [{}, {"cascadeLines": {}}, {"cascadeRuns": None}]},
        {"queryResults": [{"somethingElse": {"rows": [1]}}]},
    ],
    ids=["empty queryResults", "no queryResults", "empty results", "none of the three keys"],
)
def test_a_reply_without_rows_is_zero_lines_and_no_model_series(document: Any) -> None:
    found = report(document)
    assert found.lines == (("7d", 0, 0), ("30d", 0, 0))
    assert found.usage == ()
    assert found.conversations == (("7d", 0), ("30d", 0))
    assert found.tools == ()


@pytest.mark.parametrize(
    "document",
    [[], {"queryResults": {}}, {"queryResults": [{"cascadeRuns": {"cascadeRuns": {}}}]}],
    ids=["a list", "queryResults an object", "rows an object"],
)
def test_a_wrong_shape_is_malformed(document: Any) -> None:
    with pytest.raises(MalformedResponse):
        decode(document, request())


def test_rows_without_a_usable_day_or_count_are_counted_not_summed() -> None:
    reply = decode(
        runs(
            run("yesterday"),
            run("2024-10-11T00:00:00Z", messagesSent="lots"),
            {"model": "m"},  # no day
            run("2099-01-01T00:00:00Z"),  # after the request
            "not an object",  # type: ignore[arg-type]
        ),
        request(),
    )
    assert [total[0] for total in reply.usage.values()] == [0]
    assert reply.skipped == 4
    assert reply.unparsable == {"day": 2, "messagesSent": 1}
    found = CASCADE.report(CONFIG, "", [(request(), reply)])
    text = samples(render_live({(CASCADE.name, ""): found}))
    assert text[series("windsurf_exporter_cascade_unparsable_values", group="", field="day")] == 2


def test_a_value_repeated_across_rows_is_counted_in_every_row_it_spoils() -> None:
    """Days, models, modes and counts are read once per distinct string: what one cuts or
    cannot use is still counted once per row, read as plain dicts or as the client reads."""
    long_model, day, future = "m" * 300, "2024-10-11T00:00:00Z", "2099-01-01T00:00:00Z"
    document = runs(
        *[run(day, long_model, "X", cascade_id=f"c{i}", messagesSent="2") for i in range(3)],
        *[run(day, "m", "X", messagesSent=bad) for bad in ("lots", "lots", True, [1])],
        run(day, ["not", "text"], {"mode": 1}, messagesSent=1, promptsUsed="-0"),  # type: ignore[arg-type]
        run(day, "m", "X", cascade_id=7, messagesSent="1"),  # type: ignore[arg-type]
        run(future),
        run(future),
        run(""),
    )
    asked = request()
    assert asked.json_hook is not None
    for read in (decode(document, asked), decode(compact(document, asked), asked)):
        assert read.rows == 12
        assert read.skipped == 3
        assert read.unparsable == {
            "messagesSent": 4,
            "model": 1,
            "mode": 1,
            "cascadeId": 1,
            "day": 2,
        }
        assert read.limited == {"max_rows": 0, "max_label_length": 3}
        oct11 = int(utc(2024, 10, 11) // 86400)
        cut = next(model for _, model, _ in read.usage if model.startswith("mmm"))
        assert read.usage == {
            (oct11, cut, "x"): [6, 0, 6, 3],
            (oct11, "m", "x"): [1, 0, 1, 5],
            (oct11, "", "unknown"): [1, 0, 1, 1],
        }
        assert read.conversations == {oct11: {"c0", "c1", "c2", "c"}}


def test_prompt_credits_are_the_hundredths_summed_then_divided_once() -> None:
    """Summed per run as credits, 0.1 + 0.1 + 0.1 would show as 0.30000000000000004."""
    found = report(runs(*[run("2024-10-11T00:00:00Z", promptsUsed="10") for _ in range(3)]))
    assert [credits for *_, credits in found.usage] == [0.3, 0.3]
    text = render_live({(CASCADE.name, "eng"): found})
    assert 'prompt_credits_used{group="eng",window="7d",model="m",mode="unknown"} 0.3\n' in text


def compact(document: Any, asked: Request) -> Any:
    """A document as the API client reads it: its JSON text through the request's hook."""
    assert asked.json_hook is not None
    return json.loads(json.dumps(document), object_hook=asked.json_hook())


_RUN = '{"day": "2024-10-11T00:00:00Z", "model": "m", "mode": "X", "messagesSent": "2"'


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(EXAMPLE),
        json.dumps(runs(run("2024-10-11T00:00:00Z", messagesSent=3), run("2024-10-10T00:00:00Z"))),
        '{"queryResults": [{"cascadeRuns": {"cascadeRuns": [' + _RUN + ', "day": "bad"}]}}]}',
        '{"queryResults": [{"cascadeLines": {"cascadeLines": [' + _RUN + "}]}}]}",
        '{"queryResults": [{"cascadeToolUsage": {"cascadeToolUsage": [{"model": "m"}]}}]}',
        '{"queryResults": [' + _RUN + "}, {}, []]}",
        '{"queryResults": [{"cascadeRuns": ' + _RUN + "}}]}",
        _RUN + "}",
        "{}",
        '{"queryResults": [{"cascadeRuns": {"cascadeRuns": [{}, 1, null, [' + _RUN + "}]]}}]}",
    ],
    ids=[
        "example",
        "runs",
        "repeated key",
        "run fields in lines",
        "run fields in tools",
        "run fields as an entry",
        "run fields as the inner object",
        "run fields at the top",
        "empty",
        "odd rows",
    ],
)
def test_rows_read_compact_as_the_api_client_reads_them_give_the_same_reply(text: str) -> None:
    """The client reads a reply's JSON with the request's object hook, which keeps run rows as
    tuples, not dicts: whatever the shape, they read exactly as the plain dicts would."""
    asked = request()
    assert asked.json_hook is not None
    compact = json.loads(text, object_hook=asked.json_hook())
    assert decode(compact, asked) == decode(json.loads(text), asked)


def test_run_rows_are_not_kept_as_dicts() -> None:
    asked = request()
    assert asked.json_hook is not None
    document = json.loads(json.dumps(EXAMPLE), object_hook=asked.json_hook())
    (row,) = document["queryResults"][1]["cascadeRuns"]["cascadeRuns"]
    assert not isinstance(row, dict)
    assert row.get("cascadeId") == "3f0c"
    assert row.get("linesSuggested") is None


def test_mode_loses_its_prefix_and_is_lower_cased() -> None:
    assert [
        mode_label(m)
        for m in (
            "CONVERSATIONAL_PLANNER_MODE_DEFAULT",
            "CONVERSATIONAL_PLANNER_MODE_READ_ONLY",
            "CONVERSATIONAL_PLANNER_MODE_NO_TOOL",
            "UNKNOWN",
            "",
        )
    ] == ["default", "read_only", "no_tool", "unknown", "unknown"]


# Windows


LINE_DAYS = {
    "queryResults": [
        {
            "cascadeLines": {
                "cascadeLines": [
                    {"day": f"2024-10-{d:02d}T00:00:00Z", "linesSuggested": str(10**i)}
                    for i, d in enumerate((4, 5, 10, 11))
                ]
            }
        },
        {
            "cascadeRuns": {
                "cascadeRuns": [
                    # One conversation spanning the midnight, one of the day before only.
                    run("2024-10-10T00:00:00Z", cascade_id="long", messagesSent="1"),
                    run("2024-10-11T00:00:00Z", cascade_id="long", messagesSent="2"),
                    run("2024-10-04T00:00:00Z", cascade_id="old", messagesSent="4"),
                ]
            }
        },
    ]
}
DAY_WINDOWS = Config(windows=(Window("1d", 86400.0), Window("2d", 2 * 86400.0), WEEK))


@pytest.mark.parametrize(
    ("now", "suggested", "conversations", "messages"),
    [
        # Just before midnight: today is the 10th (a row of the 11th, within clock skew, is
        # in no window yet); 7d covers the 4th to the 10th.
        (utc(2024, 10, 10, 23, 59, 30), [100, 100, 111], [1, 1, 2], [1, 1, 5]),
        # Just after it: today is the 11th (its row already there); 7d covers the 5th to the
        # 11th, so the 4th falls out.
        (utc(2024, 10, 11, 0, 0, 30), [1000, 1100, 1110], [1, 1, 1], [2, 3, 3]),
    ],
    ids=["before midnight", "after midnight"],
)
def test_a_day_counts_in_window_nd_when_it_is_one_of_the_last_n_utc_dates(
    now: float, suggested: list[int], conversations: list[int], messages: list[int]
) -> None:
    found = report(LINE_DAYS, now, DAY_WINDOWS)
    assert [s for _, s, _ in found.lines] == suggested
    assert [n for _, n in found.conversations] == conversations
    per_window = {w: 0.0 for w in ("1d", "2d", "7d")}
    for window, _, _, count, _ in found.usage:
        per_window[window] += count
    assert list(per_window.values()) == messages


def test_one_request_covers_the_longest_window_from_its_first_utc_midnight() -> None:
    asked = request(utc(2024, 10, 11, 0, 0, 30))
    assert asked.method == "CascadeAnalytics"
    assert asked.window == MONTH
    assert asked.body["start_timestamp"] == "2024-09-12T00:00:00Z"  # 30 dates, the 11th last
    assert asked.body["end_timestamp"] == "2024-10-11T00:00:30Z"
    assert asked.body["group_name"] == "eng"
    assert asked.body["query_requests"] == [
        {"cascade_lines": {}},
        {"cascade_runs": {}},
        {"cascade_tool_usage": {}},
    ]
    assert "group_name" not in request(target="").body


# Labels


def test_prompt_credits_are_hundredths_and_models_keep_their_quotes() -> None:
    model = 'Claude Sonnet 4.5 "Thinking"'
    found = report(
        runs(
            run(
                "2024-10-11T00:00:00Z",
                model,
                "CONVERSATIONAL_PLANNER_MODE_READ_ONLY",
                messagesSent="6",
                promptsUsed="250",
            ),
        )
    )
    assert ("7d", model, "read_only", 6, 2.5) in found.usage
    text = render_live({(CASCADE.name, "eng"): found})
    line = 'windsurf_group_cascade_prompt_credits_used{group="eng",window="7d",'
    assert line + 'model="Claude Sonnet 4.5 \\"Thinking\\"",mode="read_only"} 2.5' in text


def test_models_and_tools_beyond_the_limit_are_other_and_ids_and_days_never_labels() -> None:
    config = replace(CONFIG, limits=Limits(max_label_values=2))
    rows = [
        run("2024-10-11T00:00:00Z", f"model-{i}", cascade_id=f"id-{i}", messagesSent=str(10 - i))
        for i in range(5)
    ]
    tools = [{"tool": f"T{i}", "count": str(10 - i)} for i in range(4)]
    document = {
        "queryResults": [
            {"cascadeRuns": {"cascadeRuns": rows}},
            {"cascadeToolUsage": {"cascadeToolUsage": tools}},
        ]
    }
    found = report(document, config=config)
    models = {(w, m): n for w, m, _, n, _ in found.usage}
    assert models == {
        ("7d", "model-0"): 10,
        ("7d", "model-1"): 9,
        ("7d", "other"): 21,
        ("30d", "model-0"): 10,
        ("30d", "model-1"): 9,
        ("30d", "other"): 21,
    }
    assert found.tools == (("T0", 10), ("T1", 9), ("other", 15))
    text = render_live({(CASCADE.name, "eng"): found}, config)
    # 3 models and 2 tools went to other: counted, as the user table counts roles.
    limited = series(
        "windsurf_exporter_cascade_limited_values", group="eng", limit="max_label_values"
    )
    assert samples(text)[limited] == 5
    assert "id-" not in text
    assert "2024-10" not in text


def render_live(live: dict[tuple[str, str], Any], config: Config = CONFIG) -> str:
    states = tuple(
        SourceState(source, target, rep, up=True, last_success=NOW, polls=1)
        for (source, target), rep in live.items()
    )
    return Collector().render(Snapshot(states, config), NOW).decode()


# Config and schedule


def test_collectors_default_to_user_page_and_cascade_and_take_bools_or_mappings() -> None:
    default = parse_config({}, require_key=False)
    assert [(c.name, c.enabled, c.interval) for c in default.collectors] == [
        ("user_page", True, None),
        ("cascade", True, None),
        ("credits", False, None),
    ]
    config = parse_config(
        {
            "poll": {"interval": "5m"},
            "collectors": {"user_page": False, "credits": {"interval": "1h"}},
        },
        require_key=False,
    )
    assert not config.collector("user_page").enabled
    assert config.collector("credits").enabled
    assert config.interval("credits") == 3600
    assert config.interval("cascade") == 300
    assert CASCADE.targets(config) == ("",)
    assert CREDITS.targets(config) == ("",)


def test_unknown_collectors_and_bad_values_are_config_errors_by_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "collectors": {
                    "billing": True,
                    "cascade": "yes",
                    "credits": {"enabled": "no", "every": "1h", "interval": "soon"},
                }
            },
            require_key=False,
        )
    problems = caught.value.problems
    assert problems[0].startswith("collectors.billing: unknown key (expected one of: cascade,")
    assert any(p.startswith("collectors.cascade: 'yes' must be true, false or") for p in problems)
    assert any(p.startswith("collectors.credits.every: unknown key") for p in problems)
    assert "collectors.credits.enabled: 'no' must be true or false" in problems
    assert any(
        p.startswith("collectors.credits.interval: 'soon' is not a duration") for p in problems
    )


def test_each_collector_is_due_again_after_its_own_interval() -> None:
    config = Config(
        groups=("eng",),
        collectors=(
            CollectorConfig("user_page", True),
            CollectorConfig("cascade", True, 3600.0),
            CollectorConfig("credits", False),
        ),
    )
    state = next_state(PollState(), Reloaded(0.0), config)
    for key in ((CASCADE.name, "eng"), ("user_page", "eng")):
        result = PollResult(key, state.asks[key], 10.0, 11.0, 1000.0, report=None)
        state = next_state(state, replace(result, report=report({})), config)
    assert state.due[(CASCADE.name, "eng")] == 3610.0
    assert state.due[("user_page", "eng")] == 910.0


def test_targets_follow_groups_and_the_team_poll() -> None:
    assert CASCADE.targets(CONFIG) == ("eng", "ops", "")
    assert CASCADE.targets(replace(CONFIG, team=False)) == ("eng", "ops")
    solo = Config(team=False)
    assert CASCADE.targets(solo) == ("",)
    found = report(EXAMPLE)
    text = render_live({(CASCADE.name, ""): found}, solo)
    assert 'windsurf_group_cascade_lines_suggested{group="",window="30d"} 429' in text
    assert "windsurf_team_cascade" not in text


# Over HTTP, against the fake


def test_a_poll_asks_cascade_once_per_group_and_once_for_the_team(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Any],
    start_exporter: Callable[..., Running],
) -> None:
    groups = fake_api.groups[:2]
    config = {
        "api": {"url": fake_api.url},
        "groups": groups,
        "active_days_windows": ["7d", "30d"],
        "collectors": {"credits": True},
    }
    running = start_exporter("--config.file", str(write_config(config)))
    metrics = running.metrics()
    by_method: dict[str, list[str]] = {}
    for recorded in fake_api.requests:
        by_method.setdefault(recorded.method, []).append(recorded.group)
    assert sorted(by_method[CASCADE_METHOD]) == sorted([*groups, ""])
    assert by_method[CREDIT_BALANCE] == [""]
    assert by_method[USAGE_CONFIG] == [""]
    assert len(fake_api.requests) == metrics["windsurf_exporter_poll_requests"] == 2 + 2 + 3 + 2
    for group in [*groups, ""]:
        up = series("windsurf_collector_up", collector="cascade", group=group)
        assert metrics[up] == 1
    team = fake_api.requests_for("", CASCADE_METHOD)[0].body
    assert len(team["query_requests"]) == 3
    # The team's numbers are the fake's for everyone over the 30 dates.
    assert metrics[series("windsurf_team_cascade_lines_suggested", window="30d")] > 0
    assert metrics[series("windsurf_team_cascade_conversations", window="7d")] > 0
    assert metrics["windsurf_team_seats"] > 0


def test_a_failing_cascade_hides_nothing_else(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Any],
    start_exporter: Callable[..., Running],
) -> None:

    fake_api.set_fault("*", Fault(500), method=CASCADE_METHOD)
    group = fake_api.groups[0]
    config = {
        "api": {"url": fake_api.url, "retries": 0},
        "groups": [group],
        "collectors": {"cascade": True},
    }
    running = start_exporter("--config.file", str(write_config(config)))
    metrics = running.metrics()
    assert metrics[series("windsurf_up", group=group)] == 1
    assert metrics["windsurf_team_up"] == 1
    assert metrics[series("windsurf_collector_up", collector="user_page", group=group)] == 1
    down = series("windsurf_collector_up", collector="cascade", group=group)
    assert metrics[down] == 0
    errors = series(
        "windsurf_exporter_collector_poll_errors_total",
        collector="cascade",
        group="",
        reason=Reason.SERVER_ERROR.value,
    )
    assert metrics[errors] == 1
    assert not any(k.startswith("windsurf_group_cascade") for k in metrics)


# Golden exposition of the new sources


def sources_snapshot() -> Snapshot:
    """Cascade for group eng and the team, the credit balance, and a group whose Cascade poll
    is refused."""
    config = Config(groups=("eng", "ops"), windows=(WEEK, MONTH), collectors=ALL_ON)
    credits = CREDITS.report(
        config,
        "",
        [
            (
                CREDITS.plan(config, "", NOW)[0],
                decode_balance(
                    {
                        "promptCreditsPerSeat": 500,
                        "numSeats": "50",
                        "addOnCreditsAvailable": 10000,
                        "addOnCreditsUsed": 3500,
                        "unknown": True,
                    }
                ),
            ),
            (CREDITS.plan(config, "", NOW)[1], decode_usage_config({"addOnCreditCap": 200})),
        ],
    )
    team = report(EXAMPLE, config=config)
    eng = report(
        runs(
            run(
                "2024-10-11T00:00:00Z",
                'Claude "T"',
                "CONVERSATIONAL_PLANNER_MODE_NO_TOOL",
                cascade_id="a",
                messagesSent="2",
                promptsUsed="5",
            ),
            run(
                "2024-10-01T00:00:00Z",
                "swe-1.5",
                "CONVERSATIONAL_PLANNER_MODE_READ_ONLY",
                cascade_id="b",
                messagesSent="9",
            ),
        ),
        config=config,
    )
    ok = MappingProxyType({"success": 1})
    healthy = {"up": True, "last_success": NOW - 60, "last_attempt": NOW - 60, "polls": 1}
    return Snapshot(
        config=config,
        states=(
            SourceState(CASCADE.name, "eng", eng, last_duration=0.25, requests=ok, **healthy),
            failed(SourceState(CASCADE.name, "ops", last_duration=0.5), Reason.NOT_FOUND),
            SourceState(CASCADE.name, "", team, last_duration=0.75, requests=ok, **healthy),
            SourceState(
                CREDITS.name,
                "",
                credits,
                last_duration=0.125,
                requests=MappingProxyType({"success": 2}),
                **healthy,
            ),
        ),
    )


def failed(state: SourceState, reason: Reason) -> SourceState:
    """A target whose one poll, a minute ago, failed for `reason`."""
    once = MappingProxyType({reason.value: 1})
    return replace(
        state, last_attempt=NOW - 60, polls=1, last_error=reason, errors=once, requests=once
    )


def test_golden_text_exposition_of_cascade_and_credits() -> None:
    _check_golden("sources.prom", Collector().render(sources_snapshot(), NOW).decode())


def test_golden_openmetrics_exposition_of_cascade_and_credits() -> None:
    text = Collector().render(sources_snapshot(), NOW, openmetrics=True).decode()
    _check_golden("sources.openmetrics", text)


def test_the_golden_sources_pass_promtool_and_hold_what_the_replies_said() -> None:
    text = Collector().render(sources_snapshot(), NOW).decode()
    found = samples(text)
    assert found[series("windsurf_team_cascade_lines_accepted", window="7d")] == 230
    assert found[series("windsurf_collector_up", collector="cascade", group="ops")] == 0
    assert found[series("windsurf_collector_up", collector="credits", group="")] == 1
    assert found["windsurf_team_addon_credit_cap"] == 200
    assert found["windsurf_team_seats"] == 50
    assert not any(k.startswith("windsurf_group_cascade") and 'group="ops"' in k for k in found)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.stdout + result.stderr).strip() == ""
