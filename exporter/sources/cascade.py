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
from exporter.sources.user_rows import bounded, label_value
from exporter.sources.values import (
    MEMO,
    count_field,
    fresh,
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


# The runs of one (day, model, mode) summed: [messages, prompts (hundredths of a credit), the
# whole messages (what models are ranked by), runs].
Usage = list[float]


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
    texts: dict[str, str] = {}
    numbers: dict[str, str] = {}  # counts apart: their many values leave room for the labels'

    def hook(found: dict[str, Any]) -> Any:
        if not found or not found.keys() <= _RUN_KEYS:
            return found
        get = found.get
        day, model, mode = get("day"), get("model"), get("mode")
        messages, prompts = get("messagesSent"), get("promptsUsed")
        # Inline, not a call per value: a reply has hundreds of thousands of rows.
        if type(day) is str:
            day = texts.get(day) or kept_once(texts, day)
        if type(model) is str:
            model = texts.get(model) or kept_once(texts, model)
        if type(mode) is str:
            mode = texts.get(mode) or kept_once(texts, mode)
        if type(messages) is str:
            messages = numbers.get(messages) or kept_once(numbers, messages)
        if type(prompts) is str:
            prompts = numbers.get(prompts) or kept_once(numbers, prompts)
        return _tuple(RunRow, (day, model, mode, messages, prompts, get("cascadeId")))

    return hook


_tuple = tuple.__new__  # makes a RunRow without NamedTuple's keyword-argument __new__


@dataclass(frozen=True, slots=True)
class Reply:
    """One decoded CascadeAnalytics reply: lines per day as (day, suggested, accepted), runs
    summed per (day, model, mode) and their distinct conversations per day (so the windows
    are summed over a few sums, not over every run), tool uses over the whole range, and what
    reading it left out."""

    lines: tuple[tuple[int, float, float], ...] = ()
    usage: Mapping[tuple[int, str, str], Usage] = field(default_factory=dict)
    conversations: Mapping[int, set[str]] = field(default_factory=dict)  # non-empty cascadeId
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
        # The few distinct days, models, modes and counts of a reply's many rows, each read
        # once: a string -> what it reads as, kept when reading it again would count nothing.
        self._days: dict[str, int | None] = {}
        self._counts: dict[str, float] = {}
        self._words: dict[str, str] = {}
        self._modes: dict[str, str] = {}
        self.usage: dict[tuple[int, str, str], Usage] = {}
        self.conversations: dict[int, set[str]] = {}

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

    def count(self, value: Any, key: str) -> float:
        known = self._counts.get(value) if type(value) is str else None
        if known is not None:
            return known
        number, bad = count_field(value, _MAX_COUNT)
        if bad or number is None:
            self.unparsable[key] += 1
            return 0.0
        number = number or 0.0  # -0 as 0
        if type(value) is str and len(self._counts) < MEMO:
            self._counts[value] = number
        return number

    def text(self, value: Any, key: str) -> str:
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

    def mode(self, value: Any) -> str:
        known = self._modes.get(value) if type(value) is str else None
        if known is not None:
            return known
        text = self.text(value, "mode")
        label = mode_label(text)
        if text == value and len(self._modes) < MEMO:  # kept as it is: nothing to count
            self._modes[text] = label
        return label

    def day(self, value: Any) -> int | None:
        """Days since the epoch; None (the row skipped) when left out, malformed or after
        the request."""
        if type(value) is str and value in self._days:
            day, bad = self._days[value], False
        else:
            seconds, bad = time_field(value, self.latest)
            day = None if seconds is None else int(seconds // _DAY)
            if type(value) is str and not bad and len(self._days) < MEMO:
                self._days[value] = day
        if day is None:
            self.unparsable["day"] += bad
            self.skipped += 1
        return day

    def runs(self, rows: list[Row]) -> None:
        """Run rows summed into `usage` and their conversations into `conversations`, in one
        pass that keeps nothing per row."""
        usage, conversations, counts = self.usage, self.conversations, self._counts
        keys: dict[tuple[str, str, str], tuple[int, str, str]] = {}
        for row in rows:
            if type(row) is RunRow:
                day_text, model, mode, messages, prompts, cascade_id = row
            else:
                get = row.get
                day_text, model, mode = get("day"), get("model"), get("mode")
                messages, prompts = get("messagesSent"), get("promptsUsed")
                cascade_id = get("cascadeId")
            try:
                key = keys.get((day_text, model, mode))
            except TypeError:  # a list or an object for a value: read (and counted) below
                key = None
            if key is None:
                key = self._usage_key(day_text, model, mode, keys)
                if key is None:
                    continue
            day = key[0]
            if type(cascade_id) is str:
                if cascade_id:  # only counted, never shown
                    conversations.setdefault(day, set()).add(cascade_id)
            elif cascade_id is not None:
                self.unparsable["cascadeId"] += 1
            sent = counts.get(messages) if type(messages) is str else None
            if sent is None:
                sent = self.count(messages, "messagesSent")
            used = counts.get(prompts) if type(prompts) is str else None
            if used is None:
                used = self.count(prompts, "promptsUsed")
            total = usage.get(key)
            if total is None:
                usage[key] = [sent, used, int(sent), 1]
            else:
                total[0] += sent
                total[1] += used
                total[2] += int(sent)
                total[3] += 1

    def _usage_key(
        self,
        day_text: Any,
        model: Any,
        mode: Any,
        keys: dict[tuple[str, str, str], tuple[int, str, str]],
    ) -> tuple[int, str, str] | None:
        """A run's (day, model, mode) as it is summed; None when its day is unusable. Kept in
        `keys` by the row's strings when reading them counted nothing."""
        day = self.day(day_text)
        if day is None:
            return None
        key = (day, self.text(model, "model"), self.mode(mode))
        if (
            type(day_text) is str
            and day_text in self._days
            and type(mode) is str
            and mode in self._modes
            and type(model) is str
            and model in self._words
            and len(keys) < MEMO
        ):
            keys[day_text, model, mode] = key
        return key


def decode(document: Any, request: Request | None = None) -> Reply:
    """Top-level reply -> Reply. Each entry of queryResults is read by the one key it holds,
    whatever its place; an entry with none of the three is ignored, as are unknown fields."""
    # A top-level object of run fields only (RunRow) has no queryResults, like such a dict.
    results = (
        [] if isinstance(document, RunRow) else json_list(json_object(document), "queryResults")
    )
    reader = _Reader(request or Request(METHOD, {}, ""))
    lines: list[tuple[int, float, float]] = []
    tools: Counter[str] = Counter()
    for entry in results:
        if not isinstance(entry, dict):
            continue
        for row in reader.rows_of(entry, "cascadeLines"):
            day = reader.day(row.get("day"))
            if day is not None:
                suggested = reader.count(row.get("linesSuggested"), "linesSuggested")
                accepted = reader.count(row.get("linesAccepted"), "linesAccepted")
                lines.append((day, suggested, accepted))
        reader.runs(reader.rows_of(entry, "cascadeRuns"))
        for row in reader.rows_of(entry, "cascadeToolUsage"):
            tool = reader.text(row.get("tool"), "tool")
            tools[tool] += int(reader.count(row.get("count"), "count"))
    return Reply(
        lines=tuple(lines),
        usage=reader.usage,
        conversations=reader.conversations,
        tools=tuple(tools.items()),
        rows=reader.rows,
        skipped=reader.skipped,
        unparsable=dict(reader.unparsable),
        limited={"max_rows": reader.dropped, "max_label_length": reader.cut},
    )


def summarize(
    reply: Reply, windows: Sequence[tuple[str, int]], today: int, limits: Limits
) -> CascadeReport:
    """A reply summed per window (label, days); distinct models, modes and tools beyond
    limits.max_label_values (ranked by messages and calls) are `other`, and counted."""
    most = limits.max_label_values
    by_messages: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for (_, model, mode), (_, _, whole, runs) in reply.usage.items():
        by_messages[model] += int(whole)
        modes[mode] += int(runs)
    models, folded = _renamed(by_messages, most)
    mode_names, folded_modes = _renamed(modes, most)
    kept_tools, folded_tools = bounded(Counter(dict(reply.tools)), most)
    tools = tuple((fresh(tool), calls) for tool, calls in kept_tools)
    lines = []
    usage: list[tuple[str, str, str, float, float]] = []
    conversations = []
    for label, days in windows:
        first = today - days + 1
        sums = [(s, a) for d, s, a in reply.lines if first <= d <= today]
        lines.append((label, sum(s for s, _ in sums), sum(a for _, a in sums)))
        per: dict[tuple[str, str], list[float]] = {}
        for (day, model, mode), (messages, prompts, _, _) in reply.usage.items():
            if first <= day <= today:
                total = per.setdefault((models[model], mode_names[mode]), [0.0, 0.0])
                total[0] += messages
                total[1] += prompts
        usage.extend((label, m, o, n, c / 100) for (m, o), (n, c) in sorted(per.items()))
        ids = [i for d, i in reply.conversations.items() if first <= d <= today]
        conversations.append((label, len(set[str]().union(*ids))))
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
    """Each value -> its label: itself (a copy of its own, see `fresh`) among the `most`
    commonest, else `other`."""
    kept, folded = bounded(counts, most)
    names = {name for name, _ in kept}
    return {value: fresh(value) if value in names else "other" for value in counts}, folded


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
