"""The exporter written the obvious ways, as the benchmark's yardsticks, both served by
`prometheus_client`'s own HTTP server (which gzips when asked):

- `--style gauges`: labelled Gauges set at every poll, ages as `set_function` callbacks so they
  are exact at scrape time;
- `--style collector`: client_python's idiom for exporters, a custom collector whose `collect()`
  yields `GaugeMetricFamily`s built fresh from the last reports at every scrape, rendered by
  `generate_latest`.

Both export the same families and labels as windsurf-exporter for the users and groups, read the
same config file, and take the reports from the exporter's own source (requests, parsing and
aggregates), so all do the same job. Run by bench/run.py:

    python bench/baseline.py --config.file config.yaml [--style collector]

It prints one JSON line `{"listen": url}` once serving, then `{"group": g, "seconds": s}` per
polled group (s: from the upstream response to the gauges all set), and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import collector as c
from exporter.api import API_PATH
from exporter.config import Config, load_config
from exporter.exposition import Family
from exporter.sources import user_page as u
from exporter.sources.user_rows import FEATURES, GroupReport

G = ("group",)
U = ("group", "user")
UP, LAST_SUCCESS, _, _, POLLS, *_unused = c.health_families(u.USER_PAGE.health)
# Every family the baselines export, with its label names.
LABELS: dict[Family, tuple[str, ...]] = {
    UP: G,
    LAST_SUCCESS: G,
    u.GROUP_USERS: G,
    u.BILLING_START: G,
    u.BILLING_END: G,
    u.GROUP_ACTIVE: (*G, "window"),
    u.GROUP_BILLABLE: G,
    u.GROUP_CREDITS: G,
    u.GROUP_STATUS: (*G, "team_status"),
    u.GROUP_ROLE: (*G, "role"),
    u.GROUP_IDLE: (*G, "idle_for"),
    u.USER_ACTIVE: (*U, "window"),
    u.USER_CREDITS: U,
    u.USER_LAST: (*U, "feature"),
    u.USER_AGE: (*U, "feature"),
    u.USER_IDLE: U,
    u.USER_SIGNUP: U,
    u.USER_DISABLED: U,
    u.USER_INFO: (*U, "name", "email", "role", "team_status"),
}
Sample = tuple[Family, tuple[str, ...], float | Callable[[], float]]


def samples(config: Config, group: str, report: GroupReport, at: float) -> Iterator[Sample]:
    """Every sample of a group's poll, ages as callbacks evaluated at scrape time."""
    yield UP, (group,), 1
    yield LAST_SUCCESS, (group,), at
    yield u.GROUP_USERS, (group,), report.rows
    if report.billing_start is not None:
        yield u.BILLING_START, (group,), report.billing_start
    if report.billing_end is not None:
        yield u.BILLING_END, (group,), report.billing_end
    for window, count in report.totals.active:
        yield u.GROUP_ACTIVE, (group, window), count
    yield u.GROUP_BILLABLE, (group,), report.totals.billable
    yield u.GROUP_CREDITS, (group,), report.totals.prompt_credits
    for status, count in report.totals.by_team_status:
        yield u.GROUP_STATUS, (group, status), count
    for role, count in report.totals.by_role:
        yield u.GROUP_ROLE, (group, role), count
    for t in config.idle_thresholds:
        yield u.GROUP_IDLE, (group, t.label), idle_count(report.totals.idle_since, t.seconds)
    for user in report.users:
        who = (group, user.email)
        for label, days in user.active_days.items():
            yield u.USER_ACTIVE, (*who, label), days
        if user.prompt_credits is not None:
            yield u.USER_CREDITS, who, user.prompt_credits
        for feature, last in zip(FEATURES, user.last_usage, strict=True):
            if last is not None:
                yield u.USER_LAST, (*who, feature), last
                yield u.USER_AGE, (*who, feature), age(last)
        if user.signup is not None:
            yield u.USER_SIGNUP, who, user.signup
        yield u.USER_DISABLED, who, float(user.disabled)
        yield u.USER_INFO, (*who, user.name, user.email, user.role, user.team_status), 1
        if user.idle_since is not None:
            yield u.USER_IDLE, who, age(user.idle_since)


class Metrics:
    """The Gauges, and which label sets each group set last, so a poll can drop users who left."""

    def __init__(self, registry: CollectorRegistry, config: Config) -> None:
        self.config = config
        self.gauges = {
            f: Gauge(f.name, f.help, names, registry=registry) for f, names in LABELS.items()
        }
        self.polls = PromCounter(POLLS.name, POLLS.help, G, registry=registry)
        self._set: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    def update(self, group: str, report: GroupReport, at: float) -> None:
        """Set every series of the group, then remove the ones this poll did not set."""
        seen: set[tuple[Gauge, tuple[str, ...]]] = set()
        self.polls.labels(group).inc()
        for family, labels, value in samples(self.config, group, report, at):
            gauge = self.gauges[family]
            child = gauge.labels(*labels)
            if callable(value):
                child.set_function(value)
            else:
                child.set(value)
            seen.add((gauge, labels))
        for gauge, labels in self._set.get(group, set()) - seen:
            gauge.remove(*labels)
        self._set[group] = seen


def age(since: float) -> Callable[[], float]:
    """Seconds since `since`, computed on every scrape (`set_function`), 0 if in the future."""
    return lambda: max(time.time() - since, 0.0)


def idle_count(idle_since: Sequence[float], seconds: float) -> Callable[[], float]:
    """Seats idle longer than `seconds`, counted on every scrape."""
    return lambda: bisect_left(idle_since, time.time() - seconds)


class ReportCollector(Collector):
    """client_python's custom-collector idiom: the last reports, turned into fresh
    GaugeMetricFamilies at every scrape."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reports: dict[str, tuple[GroupReport, float]] = {}

    def update(self, group: str, report: GroupReport, at: float) -> None:
        self.reports[group] = (report, at)

    def collect(self) -> Iterator[Metric]:
        families = {
            f: GaugeMetricFamily(f.name, f.help, labels=names) for f, names in LABELS.items()
        }
        for group, (report, at) in list(self.reports.items()):
            for family, labels, value in samples(self.config, group, report, at):
                families[family].add_metric(labels, value() if callable(value) else value)
        yield from families.values()


def poll(config: Config, update: Callable[[str, GroupReport, float], None]) -> None:
    """Poll every group once, one after the other, reporting each group's processing time."""
    key = config.api.service_key.reveal()
    with httpx.Client(timeout=config.api.timeout) as http:
        for group in config.groups:
            replies = []
            spent = 0.0
            for request in u.USER_PAGE.plan(config, group, time.time()):
                body = {"service_key": key, **request.body}
                response = http.post(config.api.url + API_PATH + request.method, json=body)
                response.raise_for_status()
                document = response.json()
                started = time.perf_counter()  # from JSON to records, as windsurf-exporter's probe
                replies.append((request, u.USER_PAGE.parse(request, document)))
                spent += time.perf_counter() - started
            started = time.perf_counter()
            update(group, u.USER_PAGE.report(config, group, replies), time.time())
            spent += time.perf_counter() - started
            print(json.dumps({"group": group, "seconds": spent}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config.file", dest="config_file", required=True)
    parser.add_argument("--style", choices=("gauges", "collector"), default="gauges")
    args = parser.parse_args()
    config = load_config(args.config_file)
    registry = CollectorRegistry()
    if args.style == "gauges":
        update = Metrics(registry, config).update
    else:
        collector = ReportCollector(config)
        registry.register(collector)
        update = collector.update
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(json.dumps({"listen": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    poll(config, update)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
