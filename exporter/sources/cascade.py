"""CascadeAnalytics: is the AI used and accepted? One request per configured group, and one for
the whole team unless `team: false`, for the longest active_days_windows window and all three
data sources at once; the daily rows are summed here for every window. A day counts in window
`Nd` when its date is one of the last N UTC dates, today included.

    windsurf_group_cascade_lines_suggested{group="eng",window="7d"} 412
    windsurf_group_cascade_lines_accepted{group="eng",window="7d"} 230
    windsurf_group_cascade_messages{group="eng",window="7d",model="swe-1.5",mode="default"} 6
    windsurf_group_cascade_prompt_credits_used{group="eng",window="7d",model="m",mode="default"} 2.5
    windsurf_group_cascade_conversations{group="eng",window="7d"} 1
    windsurf_group_cascade_tool_calls{group="eng",tool="CODE_ACTION"} 51
    windsurf_team_cascade_lines_suggested{window="7d"} 412
    ...

Models and tools beyond limits.max_label_values (the least used) are summed as `other`; a
conversation id or a date is never a label.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from exporter.config import Config, Limits
from exporter.exposition import Family, labels, number, piece
from exporter.sources.base import Health, Live, Parts, Rendered, Request
from exporter.sources.user_page import bounded, label_value
from exporter.sources.values import (
    MEMO,
    count_field,
    json_list,
    json_object,
    kept_once,
    text_field,
    time_field,
)

log = logging.getLogger("exporter.cascade")

METHOD = "CascadeAnalytics"
QUERIES: tuple[dict[str, dict[str, Any]], ...] = (
    {"cascade_lines": {}},
    {"cascade_runs": {}},
    {"cascade_tool_usage": {}},
)
_DAY = 86400
_MODE_PREFIX = "CONVERSATIONAL_PLANNER_MODE_"
# Far above any real day of a team, far below where sums lose precision.
_MAX_COUNT = 1e12
_CLOCK_SKEW = 3600.0
_CACHED = " Cached from the last successful poll."


class Run(NamedTuple):
    """One cascadeRuns row: a conversation's use of one model in one mode on one UTC day. A
    named tuple: a reply holds up to limits.max_rows of them, made faster than a dataclass."""

    day: int  # days since the epoch
    model: str
    mode: str
    messages: float
    prompts: float  # hundredths of a prompt credit
    cascade_id: str


# A cascadeRuns row's fields, in RunRow's order.
_RUN_INDEX = {
    key: index
    for index, key in enumerate(
        ("day", "model", "mode", "messagesSent", "promptsUsed", "cascadeId")
    )
}
_RUN_KEYS = frozenset(_RUN_INDEX)


class RunRow(NamedTuple):
    """A JSON object holding cascadeRuns fields only (every run row), as `compact_rows` reads
    it: its fields' values (None: absent), read like the dict it replaces (`get`). A reply holds
    up to hundreds of thousands of them: as dicts of strings they cost five times as much."""

    day: Any = None
    model: Any = None
    mode: Any = None
    messages: Any = None
    prompts: Any = None
    cascade_id: Any = None

    def get(self, key: str) -> Any:
        index = _RUN_INDEX.get(key)
        return None if index is None else self[index]


Row = dict[str, Any] | RunRow  # a row of the reply, read with `get`


def compact_rows() -> Callable[[dict[str, Any]], Any]:
    """The object_hook a CascadeAnalytics reply is read with: an object holding run fields only
    becomes a RunRow, its values repeated across rows (day, model, mode, counts) one string
    each; any other object stays a dict. So the reply's rows never all exist as dicts."""
    once = _once()
    number = _once()  # counts apart: their many values leave room for the labels' few

    def hook(found: dict[str, Any]) -> Any:
        if not found or not found.keys() <= _RUN_KEYS:
            return found
        get = found.get
        return _tuple(
            RunRow,
            (
                once(get("day")),
                once(get("model")),
                once(get("mode")),
                number(get("messagesSent")),
                number(get("promptsUsed")),
                get("cascadeId"),
            ),
        )

    return hook


def _once() -> Callable[[Any], Any]:
    """Strings -> the first equal one seen (of at most MEMO kept); anything else as it is."""
    seen: dict[str, str] = {}

    def once(value: Any) -> Any:
        if type(value) is not str:
            return value
        return kept_once(seen, value)

    return once


_tuple = tuple.__new__  # makes a RunRow without NamedTuple's keyword-argument __new__


@dataclass(frozen=True, slots=True)
class Reply:
    """One decoded CascadeAnalytics reply: lines per day as (day, suggested, accepted), runs,
    tool uses over the whole range, and what reading it left out."""

    lines: tuple[tuple[int, float, float], ...] = ()
    runs: tuple[Run, ...] = ()
    tools: tuple[tuple[str, int], ...] = ()
    rows: int = 0
    skipped: int = 0  # rows without a usable day, or not an object
    unparsable: Mapping[str, int] = field(default_factory=dict)
    limited: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CascadeReport:
    """One target's poll summed per window (in config order): the series it exports."""

    lines: tuple[tuple[str, float, float], ...]  # (window, suggested, accepted)
    # (window, model, mode, messages, prompt credits)
    usage: tuple[tuple[str, str, str, float, float], ...]
    conversations: tuple[tuple[str, int], ...]  # (window, distinct cascadeId)
    tools: tuple[tuple[str, int], ...]  # over the longest window
    rows: int = 0
    skipped: int = 0
    limited: Mapping[str, int] = field(default_factory=dict)  # per limits key: values cut
    unparsable: Mapping[str, int] = field(default_factory=dict)  # per field


def mode_label(mode: str) -> str:
    """`CONVERSATIONAL_PLANNER_MODE_READ_ONLY` -> `read_only`; absent (protobuf JSON leaves
    the zero enum out) -> `unknown`."""
    return mode.removeprefix(_MODE_PREFIX).lower() or "unknown"


def request_body(group: str, start: float, end: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "start_timestamp": _rfc3339(start),
        "end_timestamp": _rfc3339(end),
        "query_requests": [dict(q) for q in QUERIES],
    }
    if group:
        body["group_name"] = group
    return body


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def window_days(seconds: float) -> int:
    """The UTC dates a window covers: `7d` is today and the 6 before."""
    return max(1, math.ceil(seconds / _DAY))


class _Reader:
    """Reads one reply's rows against its request, counting what it cannot use."""

    def __init__(self, request: Request) -> None:
        asked = request.asked_at
        self.latest = math.inf if asked is None else asked + _CLOCK_SKEW
        self.limits = request.limits
        self.unparsable: Counter[str] = Counter()
        self.cut = 0
        self.rows = 0
        self.skipped = 0
        self.dropped = 0
        # The few distinct days, models and modes of a reply's many rows, each read once.
        self._days: dict[str, tuple[int | None, bool]] = {}
        self._numbers: dict[float, float] = {}
        self._words: dict[str, str] = {}
        self._modes: dict[str, str] = {}

    def rows_of(self, entry: Any, key: str) -> list[Row]:
        """`{key: {key: [rows]}}` -> its object rows, at most limits.max_rows of all."""
        inner = entry.get(key)
        rows = json_list(inner, key) if isinstance(inner, dict) else []
        room = max(self.limits.max_rows - self.rows, 0)
        self.dropped += max(len(rows) - room, 0)
        kept = rows[:room]
        self.rows += len(kept)
        objects = [r for r in kept if isinstance(r, dict | RunRow)]
        self.skipped += len(kept) - len(objects)
        return objects

    def count(self, row: Row, key: str) -> float:
        value, bad = count_field(row.get(key), _MAX_COUNT)
        if bad:
            self.unparsable[key] += 1
        if not value:
            return 0.0
        return kept_once(self._numbers, value)  # counts repeat: one float each

    def text(self, row: Row, key: str) -> str:
        value = row.get(key)
        known = self._words.get(value) if type(value) is str else None
        if known is not None:
            return known
        text, bad = text_field(value)
        if bad:
            self.unparsable[key] += 1
        label, cut = label_value(text, self.limits)
        self.cut += cut
        if label == value and len(self._words) < MEMO:  # kept as it is: nothing to count
            self._words[label] = label
        return label

    def mode(self, row: Row) -> str:
        text = self.text(row, "mode")
        label = self._modes.get(text)
        if label is None:
            label = mode_label(text)
            if len(self._modes) < MEMO:
                self._modes[text] = label
        return label

    def day(self, row: Row) -> int | None:
        value = row.get("day")
        known = self._days.get(value) if type(value) is str else None
        if known is None:
            seconds, bad = time_field(value, self.latest)
            known = (None if seconds is None else int(seconds // _DAY), bad)
            if type(value) is str and len(self._days) < MEMO:
                self._days[value] = known
        day, bad = known
        if day is None:  # a day left out, malformed, or after the request
            self.unparsable["day"] += bad
            self.skipped += 1
        return day


def decode(document: Any, request: Request | None = None) -> Reply:
    """Top-level reply -> Reply. Each entry of queryResults is read by the one key it holds,
    whatever its place; an entry with none of the three is ignored, as are unknown fields."""
    # A top-level object of run fields only (RunRow) has no queryResults, like such a dict.
    results = (
        [] if isinstance(document, RunRow) else json_list(json_object(document), "queryResults")
    )
    reader = _Reader(request or Request(METHOD, {}, ""))
    lines: list[tuple[int, float, float]] = []
    runs: list[Run] = []
    tools: Counter[str] = Counter()
    for entry in results:
        if not isinstance(entry, dict):
            continue
        for row in reader.rows_of(entry, "cascadeLines"):
            day = reader.day(row)
            if day is not None:
                suggested = reader.count(row, "linesSuggested")
                lines.append((day, suggested, reader.count(row, "linesAccepted")))
        for row in reader.rows_of(entry, "cascadeRuns"):
            day = reader.day(row)
            if day is not None:
                runs.append(_run(reader, row, day))
        for row in reader.rows_of(entry, "cascadeToolUsage"):
            tools[reader.text(row, "tool")] += int(reader.count(row, "count"))
    return Reply(
        lines=tuple(lines),
        runs=tuple(runs),
        tools=tuple(tools.items()),
        rows=reader.rows,
        skipped=reader.skipped,
        unparsable=dict(reader.unparsable),
        limited={"max_rows": reader.dropped, "max_label_length": reader.cut},
    )


def _run(reader: _Reader, row: Row, day: int) -> Run:
    # The id is only counted, never shown: no need to keep it whole.
    cascade_id, bad = text_field(row.get("cascadeId"))
    if bad:
        reader.unparsable["cascadeId"] += 1
    return Run(
        day=day,
        model=reader.text(row, "model"),
        mode=reader.mode(row),
        messages=reader.count(row, "messagesSent"),
        prompts=reader.count(row, "promptsUsed"),
        cascade_id=cascade_id,
    )


def summarize(
    reply: Reply, windows: Sequence[tuple[str, int]], today: int, limits: Limits
) -> CascadeReport:
    """A reply summed per window (label, days); distinct models, modes and tools beyond
    limits.max_label_values (ranked by messages and calls) are `other`, and counted."""
    most = limits.max_label_values
    by_messages: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for run in reply.runs:
        by_messages[run.model] += int(run.messages)
        modes[run.mode] += 1
    models, folded = _renamed(by_messages, most)
    mode_names, folded_modes = _renamed(modes, most)
    tools, folded_tools = bounded(Counter(dict(reply.tools)), most)
    lines = []
    usage: list[tuple[str, str, str, float, float]] = []
    conversations = []
    for label, days in windows:
        first = today - days + 1
        sums = [(s, a) for d, s, a in reply.lines if first <= d <= today]
        lines.append((label, sum(s for s, _ in sums), sum(a for _, a in sums)))
        runs = [r for r in reply.runs if first <= r.day <= today]
        per: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            total = per.setdefault((models[run.model], mode_names[run.mode]), [0.0, 0.0])
            total[0] += run.messages
            total[1] += run.prompts / 100
        usage.extend((label, m, o, n, c) for (m, o), (n, c) in sorted(per.items()))
        conversations.append((label, len({r.cascade_id for r in runs if r.cascade_id})))
    return CascadeReport(
        lines=tuple(lines),
        usage=tuple(usage),
        conversations=tuple(conversations),
        tools=tools,
        rows=reply.rows,
        skipped=reply.skipped,
        limited={**reply.limited, "max_label_values": folded + folded_modes + folded_tools},
        unparsable=dict(sorted(reply.unparsable.items())),
    )


def _renamed(counts: Counter[str], most: int) -> tuple[dict[str, str], int]:
    """Each value -> its label: itself among the `most` commonest, else `other`."""
    kept, folded = bounded(counts, most)
    names = {name for name, _ in kept}
    return {value: value if value in names else "other" for value in counts}, folded


def _f(name: str, help_: str) -> Family:
    return Family(name, help_ + _CACHED)


def _pair(what: str, help_: str) -> tuple[Family, Family]:
    """The group's and the team's family for one quantity."""
    return (
        _f(f"windsurf_group_cascade_{what}", f"{help_}, the group's users (CascadeAnalytics)."),
        _f(f"windsurf_team_cascade_{what}", f"{help_}, the whole team (CascadeAnalytics)."),
    )


SUGGESTED = _pair("lines_suggested", "Lines Cascade suggested in the window")
ACCEPTED = _pair("lines_accepted", "Lines of Cascade's suggestions accepted in the window")
MESSAGES = _pair("messages", "Messages sent to Cascade in the window, by model and mode")
CREDITS = _pair(
    "prompt_credits_used", "Prompt credits Cascade used in the window, by model and mode"
)
CONVERSATIONS = _pair("conversations", "Distinct Cascade conversations in the window")
TOOLS = _pair("tool_calls", "Cascade tool calls over the longest window, by tool")
_ALL = (SUGGESTED, ACCEPTED, MESSAGES, CREDITS, CONVERSATIONS, TOOLS)
LIMITED = _f(
    "windsurf_exporter_cascade_limited_values",
    "Values of the last CascadeAnalytics poll for the group (empty: the whole team) cut to fit"
    " limits.<limit>: rows left out (max_rows), strings shortened (max_label_length), models,"
    " modes and tools counted as other (max_label_values).",
)
UNPARSABLE = _f(
    "windsurf_exporter_cascade_unparsable_values",
    "Values of the last CascadeAnalytics poll for the group (empty: the whole team) read as"
    " unknown, by field: malformed, or impossible (negative, absurdly large, after the request).",
)


class Cascade:
    """The CascadeAnalytics source: one target per configured group, and "" for the team."""

    name: str = "cascade"
    collector: str = "cascade"
    reads: tuple[str, ...] = ("cascade",)
    health: Health | None = None
    families: tuple[Family, ...] = (
        *(p[0] for p in _ALL),
        *(p[1] for p in _ALL),
        LIMITED,
        UNPARSABLE,
    )

    def targets(self, config: Config) -> tuple[str, ...]:
        if not config.collector(self.collector).enabled:
            return ()
        if not config.team:
            return config.groups
        return (*(g for g in config.groups if g), "")

    def depends_on(self, config: Config) -> Hashable:
        return (config.windows, config.team)

    def plan(self, config: Config, target: str, now: float) -> tuple[Request, ...]:
        longest = max(config.windows, key=lambda w: w.seconds)
        start = (now // _DAY - window_days(longest.seconds) + 1) * _DAY
        body = request_body(target, start, now)
        return (Request(METHOD, body, target, longest, now, config.limits, json_hook=compact_rows),)

    def parse(self, request: Request, document: Any) -> Reply:
        return decode(document, request)

    def report(
        self, config: Config, target: str, replies: Sequence[tuple[Request, Any]]
    ) -> CascadeReport:
        ((request, reply),) = replies
        today = int((request.asked_at or 0.0) // _DAY)
        windows = [(w.label, window_days(w.seconds)) for w in config.windows]
        report = summarize(reply, windows, today, config.limits)
        _log_losses(target, report)
        return report

    def render(self, config: Config, live: Live, parts: Parts) -> Rendered:
        out: dict[Family, list[str]] = {}
        for (source, target), report in live.items():
            if source == self.name and isinstance(report, CascadeReport):
                team = config.team and not target
                _lines(out, report, 1 if team else 0, [] if team else [("group", target)])
                _losses(out, report, target)
        return Rendered(static={f: piece("".join(ls)) for f, ls in out.items()})


def _lines(
    out: dict[Family, list[str]],
    report: CascadeReport,
    which: int,
    target: list[tuple[str, str]],
) -> None:
    """A report's lines, into the group's families (which=0) or the team's (1)."""

    def add(pair: tuple[Family, Family], pairs: Iterable[tuple[str, str]], value: float) -> None:
        family = pair[which]
        out.setdefault(family, []).append(
            f"{family.name}{labels([*target, *pairs])} {number(value)}\n"
        )

    for window, suggested, accepted in report.lines:
        add(SUGGESTED, [("window", window)], suggested)
        add(ACCEPTED, [("window", window)], accepted)
    for window, model, mode, messages, credits in report.usage:
        pairs = [("window", window), ("model", model), ("mode", mode)]
        add(MESSAGES, pairs, messages)
        add(CREDITS, pairs, credits)
    for window, count in report.conversations:
        add(CONVERSATIONS, [("window", window)], count)
    for tool, calls in report.tools:
        add(TOOLS, [("tool", tool)], calls)


def _losses(out: dict[Family, list[str]], report: CascadeReport, target: str) -> None:
    """What reading the report's reply cut or could not use, labelled by its target."""
    for family, label, counts in (
        (LIMITED, "limit", report.limited),
        (UNPARSABLE, "field", report.unparsable),
    ):
        out.setdefault(family, []).extend(
            f"{family.name}{labels([('group', target), (label, key)])} {count}\n"
            for key, count in counts.items()
        )


def _log_losses(target: str, report: CascadeReport) -> None:
    """One warning per poll that cut or could not use values."""
    losses = [f"{n} over limits.{k}" for k, n in report.limited.items() if n]
    losses += [f"{k} {n} unusable" for k, n in report.unparsable.items()]
    if report.skipped:
        losses.append(f"{report.skipped} rows without a usable day skipped")
    if losses:
        log.warning(
            "CascadeAnalytics reply read with losses: %s",
            ", ".join(losses),
            extra={"group": target or "(whole team)"},
        )


CASCADE = Cascade()
