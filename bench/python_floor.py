"""How close a poll is to what Python itself allows: the exporter's parse and render of one poll
beside a floor that does only the work no Python exporter can skip, on the same decoded replies,
in one process, alternating, the best of three each.

    uv run python bench/python_floor.py                    # 50,000 users, every variant
    uv run python bench/python_floor.py --users 20000 --variants ours,ours+all

The floor reads each value the exporter reads once, unchecked (a dict lookup; a time one float()
of a slice; and again with its times read by the exporter's RFC 3339 reader, `parse_time`), sums
Cascade's run rows by (day, model, mode), and writes each per-user line the exporter writes
once at a poll with one f-string from ready label strings, never escaping, naming nobody across
groups, counting nothing and compressing nothing. Where the floor alone is near the goal, no
pure-Python exporter meets it. The replies are those of `bench/run.py`'s
config for the variant, fetched from the demo's fake API and decoded as the exporter decodes
them (the decoding is timed by neither, as run.py's poll -> data leaves it out).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from run import GROUPS, VARIANTS, config_file

from exporter import api
from exporter.collector import Collector
from exporter.config import Config, load_config
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, synthetic_team
from exporter.sources import SOURCES, Request, Source
from exporter.sources.cascade import RunRow
from exporter.sources.user_page import (
    USER_ACTIVE,
    USER_CREDITS,
    USER_DISABLED,
    USER_INFO,
    USER_LAST,
    USER_SIGNUP,
)
from exporter.sources.user_rows import FEATURES
from exporter.sources.values import parse_time
from exporter.state import Snapshot, SourceState

Replies = list[tuple[Source, str, list[tuple[Request, Any]]]]
_FULL = ("email", "name", "role", "teamStatus", "activeDays", "promptCreditsUsed")
_TIMES = ("signupTime", "lastAutocompleteUsageTime", "lastChatUsageTime", "lastCommandUsageTime")


def _unchecked(text: str) -> float:
    """A time as the floor reads it: one float() of its seconds, a C call and nothing else."""
    return float(text[17:19])


def fetched(url: str, config: Config, now: float) -> Replies:
    """Every reply one poll of `config` reads, decoded as the exporter decodes it."""
    out: Replies = []
    with httpx.Client(timeout=600) as http:
        for source in SOURCES:
            for target in source.targets(config):
                docs = []
                for request in source.plan(config, target, now):
                    body = {**request.body, "service_key": DEMO_SERVICE_KEY}
                    reply = http.post(f"{url}/api/v1/{request.method}", json=body)
                    docs.append((request, api._json(bytearray(reply.content), request.json_hook)))
                out.append((source, target, docs))
    return out


def ours(replies: Replies, config: Config, now: float) -> float:
    """The exporter's own work: each target's replies parsed into its report, then rendered
    as the poll publishes it (the render reusing what the targets before it did not change)."""
    collector = Collector()
    states: dict[tuple[str, str], SourceState] = {}
    began = time.perf_counter()
    for source, target, docs in replies:
        parsed = [(request, source.parse(request, doc)) for request, doc in docs]
        report = source.report(config, target, parsed)
        states[source.name, target] = SourceState(
            source=source.name, name=target, report=report, up=True, last_success=now, polls=1
        )
        collector.prepare(Snapshot(states=tuple(states.values()), config=config), now)
    return time.perf_counter() - began


def floor(
    replies: Replies, windows: Sequence[str], read_time: Callable[[str], Any] = _unchecked
) -> tuple[float, int]:
    """The least work of the same poll (see the module's docstring), its times read by
    `read_time`; seconds and lines."""
    began = time.perf_counter()
    members: list[tuple[str | None, list[Any]]] = []
    usage: dict[tuple[Any, Any, Any], list[float]] = {}
    for source, target, docs in replies:
        for request, doc in docs:
            if source.name == "cascade":
                _runs(doc, usage, request.limits.max_rows)
            elif request.full:
                rows = [_row(r, read_time) for r in doc.get("userTableStats", ())]
                members.append((target if source.name == "user_page" else None, rows))
            else:
                [(r.get("email"), r.get("activeDays")) for r in doc.get("userTableStats", ())]
    # The team's people in no group are shown under group="".
    grouped = {row[0] for group, rows in members if group is not None for row in rows}
    shown = [
        (group, rows) if group is not None else ("", [r for r in rows if r[0] not in grouped])
        for group, rows in members
    ]
    lines = _lines(shown, windows)
    return time.perf_counter() - began, len(lines)


def _row(row: dict[str, Any], read_time: Callable[[str], Any]) -> list[Any]:
    get = row.get
    values = [get(key) for key in _FULL]
    values.extend(read_time(t) if (t := get(key)) else None for key in _TIMES)
    values.append(get("disableCodeium", False))
    return values


def _runs(doc: dict[str, Any], usage: dict[tuple[Any, Any, Any], list[float]], most: int) -> None:
    """The run rows summed, those the exporter keeps: limits.max_rows rows of the reply, of
    every kind, in order."""
    for entry in doc.get("queryResults", ()):
        for key, inner in entry.items():
            rows = inner.get(key, ())[:most]
            most -= len(rows)
            if key == "cascadeRuns":
                _summed(rows, usage)


def _summed(rows: list[Any], usage: dict[tuple[Any, Any, Any], list[float]]) -> None:
    for row in rows:
        if type(row) is RunRow:  # the exporter's JSON hook makes every run row one
            day, model, mode, messages, prompts, _ = row
            total = usage.get((day, model, mode))
            if total is None:
                usage[day, model, mode] = [float(messages or 0), float(prompts or 0)]
            else:
                total[0] += float(messages or 0)
                total[1] += float(prompts or 0)


def _lines(members: list[tuple[str, list[Any]]], windows: Sequence[str]) -> list[str]:
    """Each member's per-user lines of a poll, from ready labels: as many as the exporter
    writes when it renders the poll (counted against its exposition by hand)."""
    out: list[str] = []
    add = out.append
    active, credit, last = USER_ACTIVE.name, USER_CREDITS.name, USER_LAST.name
    signed, disabled_, info = USER_SIGNUP.name, USER_DISABLED.name, USER_INFO.name
    for group, rows in members:
        for email, name, role, status, days, credits, signup, *used, disabled in rows:
            w = f'{{group="{group}",user="{email}"'
            for window in windows:
                add(f'{active}{w},window="{window}"}} {days}\n')
            add(f"{credit}{w}}} {credits or 0}\n")  # absent: 0
            for feature, t in zip(FEATURES, used, strict=True):
                if t is not None:
                    add(f'{last}{w},feature="{feature}"}} {t!r}\n')
            if signup is not None:
                add(f"{signed}{w}}} {signup!r}\n")
            add(f"{disabled_}{w}}} {int(bool(disabled))}\n")
            add(
                f'{info}{w},name="{name}",email="{email}",role="{role}",'
                f'team_status="{status}",groups="{group}"}} 1\n'
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.users:,} users in {len(GROUPS)} groups; seconds, the best of {args.runs}")
    print(
        "| variant | ours: parse + render | floor | ours / floor | floor, RFC 3339 times | lines |"
    )
    print("|---|---|---|---|---|---|")
    with FakeWindsurf(team=synthetic_team(args.users, groups=GROUPS)) as fake:
        for name in args.variants.split(","):
            team, cascade = VARIANTS[name]
            with tempfile.TemporaryDirectory() as tmp:
                config = load_config(str(config_file(Path(tmp), fake.url, team, cascade)))
            now = time.time()
            replies = fetched(fake.url, config, now)
            windows = [w.label for w in config.windows]
            gc.collect()
            gc.disable()  # for both: the exporter renders without it, and parses with it rare
            mine = least = timed = float("inf")
            for _ in range(args.runs):  # alternating: the machine's noise hits all alike
                mine = min(mine, ours(replies, config, now))
                seconds, count = floor(replies, windows)
                least = min(least, seconds)
                timed = min(timed, floor(replies, windows, parse_time)[0])
            print(
                f"| {name} | {mine:.2f} | {least:.2f} | {mine / least:.1f}x | {timed:.2f}"
                f" | {count:,} |"
            )
            gc.enable()
            del replies


if __name__ == "__main__":
    main()
