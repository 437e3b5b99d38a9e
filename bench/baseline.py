"""The exporter written the obvious way, as the benchmark's yardstick: labelled
`prometheus_client` Gauges set at every poll, ages as `set_function` callbacks so they are exact
at scrape time, served by `prometheus_client`'s own HTTP server (which gzips when asked).

It exports the same families and labels as windsurf-exporter for the users and groups, and
reads the same config file, so both do the same job. Run by bench/run.py:

    python bench/baseline.py --config.file config.yaml

It prints one JSON line `{"listen": url}` once serving, then `{"group": g, "seconds": s}` per
polled group (s: from the upstream response to the gauges all set), and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as PromCounter

from exporter import collector as c
from exporter.api import PATH, request_body
from exporter.config import Config, load_config
from exporter.model import FEATURES, GroupReport, build_report, decode_page

G = ("group",)
U = ("group", "user")


class Metrics:
    """The Gauges, and which label sets each group set last, so a poll can drop users who left."""

    def __init__(self, registry: CollectorRegistry, config: Config) -> None:
        self.config = config

        def gauge(family: c.Family, labels: tuple[str, ...]) -> Gauge:
            return Gauge(family.name, family.help, labels, registry=registry)

        self.up = gauge(c.UP, G)
        self.last_success = gauge(c.LAST_SUCCESS, G)
        self.polls = PromCounter(c.POLLS.name, c.POLLS.help, G, registry=registry)
        self.users = gauge(c.GROUP_USERS, G)
        self.billing_start = gauge(c.BILLING_START, G)
        self.billing_end = gauge(c.BILLING_END, G)
        self.active = gauge(c.GROUP_ACTIVE, (*G, "window"))
        self.billable = gauge(c.GROUP_BILLABLE, G)
        self.credits = gauge(c.GROUP_CREDITS, G)
        self.by_status = gauge(c.GROUP_STATUS, (*G, "team_status"))
        self.by_role = gauge(c.GROUP_ROLE, (*G, "role"))
        self.idle_users = gauge(c.GROUP_IDLE, (*G, "idle_for"))
        self.user_active = gauge(c.USER_ACTIVE, (*U, "window"))
        self.user_credits = gauge(c.USER_CREDITS, U)
        self.user_last = gauge(c.USER_LAST, (*U, "feature"))
        self.user_age = gauge(c.USER_AGE, (*U, "feature"))
        self.user_idle = gauge(c.USER_IDLE, U)
        self.user_signup = gauge(c.USER_SIGNUP, U)
        self.user_disabled = gauge(c.USER_DISABLED, U)
        self.user_info = gauge(c.USER_INFO, (*U, "name", "email", "role", "team_status"))
        self._set: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    def update(self, group: str, report: GroupReport, at: float) -> None:
        """Set every series of the group, then remove the ones this poll did not set."""
        seen: set[tuple[Gauge, tuple[str, ...]]] = set()

        def put(gauge: Gauge, labels: tuple[str, ...], value: float | Callable[[], float]) -> None:
            child = gauge.labels(*labels)
            if callable(value):
                child.set_function(value)
            else:
                child.set(value)
            seen.add((gauge, labels))

        put(self.up, (group,), 1)
        put(self.last_success, (group,), at)
        self.polls.labels(group).inc()
        put(self.users, (group,), report.rows)
        if report.billing_start is not None:
            put(self.billing_start, (group,), report.billing_start)
        if report.billing_end is not None:
            put(self.billing_end, (group,), report.billing_end)
        for window in self.config.windows:
            count = sum(1 for u in report.users if u.active_days.get(window.label, 0) > 0)
            put(self.active, (group, window.label), count)
        put(self.billable, (group,), sum(1 for u in report.users if u.billable))
        put(self.credits, (group,), sum(u.prompt_credits or 0 for u in report.users))
        for status, count in Counter(u.team_status for u in report.users).items():
            put(self.by_status, (group, status), count)
        for role, count in Counter(u.role for u in report.users).items():
            put(self.by_role, (group, role), count)
        idle_since = sorted(
            u.idle_since for u in report.users if u.billable and u.idle_since is not None
        )
        for threshold in self.config.idle_thresholds:
            put(
                self.idle_users,
                (group, threshold.label),
                idle_count(idle_since, threshold.seconds),
            )
        for user in report.users:
            who = (group, user.email)
            for label, days in user.active_days.items():
                put(self.user_active, (*who, label), days)
            if user.prompt_credits is not None:
                put(self.user_credits, who, user.prompt_credits)
            for feature, last in zip(FEATURES, user.last_usage, strict=True):
                if last is not None:
                    put(self.user_last, (*who, feature), last)
                    put(self.user_age, (*who, feature), age(last))
            if user.signup is not None:
                put(self.user_signup, who, user.signup)
            put(self.user_disabled, who, float(user.disabled))
            put(self.user_info, (*who, user.name, user.email, user.role, user.team_status), 1)
            if user.idle_since is not None:
                put(self.user_idle, who, age(user.idle_since))
        for gauge, labels in self._set.get(group, set()) - seen:
            gauge.remove(*labels)
        self._set[group] = seen


def age(since: float) -> Callable[[], float]:
    """Seconds since `since`, computed on every scrape (`set_function`), 0 if in the future."""
    return lambda: max(time.time() - since, 0.0)


def idle_count(idle_since: list[float], seconds: float) -> Callable[[], float]:
    """Seats idle longer than `seconds`, counted on every scrape."""
    return lambda: bisect_left(idle_since, time.time() - seconds)


def poll(config: Config, metrics: Metrics, http: httpx.Client) -> None:
    """Poll every group once, one after the other, reporting each group's processing time."""
    key = config.api.service_key.reveal()
    for group in config.groups:
        pages = []
        spent = 0.0
        for window in config.windows:
            body = request_body(key, group, window, time.time())
            response = http.post(config.api.url + PATH, json=body)
            response.raise_for_status()
            started = time.perf_counter()
            pages.append((window.label, decode_page(response.json())))
            spent += time.perf_counter() - started
        started = time.perf_counter()
        metrics.update(group, build_report(pages), time.time())
        spent += time.perf_counter() - started
        print(json.dumps({"group": group, "seconds": spent}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config.file", dest="config_file", required=True)
    config = load_config(parser.parse_args().config_file)
    registry = CollectorRegistry()
    metrics = Metrics(registry, config)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(json.dumps({"listen": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    with httpx.Client(timeout=config.api.timeout) as http:
        poll(config, metrics, http)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
