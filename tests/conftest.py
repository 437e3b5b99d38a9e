"""Shared fixtures: the project's own fake Windsurf API over loopback, the exporter running
in-process or as a real process, and helpers that wait for conditions with a deadline."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from exporter.cli import Exporter, build_parser
from exporter.config import CollectorConfig, Config, Window
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, Member, synthetic_team
from exporter.sources import Request
from exporter.sources.user_page import USER_PAGE

ROOT = Path(__file__).resolve().parent.parent
WINDOW = Window("30d", 30 * 86400.0)
REQUEST_TIME = 1728640000.0  # 2024-10-11T09:46:40Z
# The collectors of a config that asks UserPageAnalytics only, as the tests written before the
# other sources specify.
USER_PAGE_ONLY = (
    CollectorConfig("user_page", True),
    CollectorConfig("cascade", False),
    CollectorConfig("credits", False),
)


def page_request(group: str, now: float = REQUEST_TIME) -> Request:
    """The UserPageAnalytics request a poll of `group` makes for the 30-day window."""
    (request,) = USER_PAGE.plan(Config(windows=(WINDOW,)), group, now)
    return request


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def samples(text: str) -> dict[str, float]:
    """Exposition text -> {'name{labels}': value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def series(metric: str, /, **labels: str) -> str:
    """A series as `samples` keys it: `metric{k="v",...}`, labels in the order given."""
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@pytest.fixture
def team() -> list[Member]:
    return synthetic_team(size=60)


@pytest.fixture
def fake_api(team: list[Member]) -> Iterator[FakeWindsurf]:
    with FakeWindsurf(team=team) as fake:
        yield fake


def write_config_in(directory: Path, raw: dict[str, Any], key: str = DEMO_SERVICE_KEY) -> Path:
    """Write a config (a dict, as YAML) and a service key file into `directory`. A config
    that names no `collectors` asks UserPageAnalytics only (what the tests written before the
    other sources specify); tests of the other sources switch them on."""
    key_file = directory / "service-key"
    key_file.write_text(key + "\n")
    raw = {"collectors": {"cascade": False}, **raw}
    raw = {**raw, "api": {"service_key_file": str(key_file), **raw.get("api", {})}}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (a dict, as YAML) and a service key file; returns the config path."""

    def write(raw: dict[str, Any], key: str = DEMO_SERVICE_KEY) -> Path:
        return write_config_in(tmp_path, raw, key)

    return write


@dataclass
class Running:
    exporter: Exporter

    @property
    def url(self) -> str:
        assert self.exporter.server is not None
        return self.exporter.server.url

    def scrape(self, path: str = "/metrics", **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=10)

    def metrics(self) -> dict[str, float]:
        response = self.scrape()
        assert response.status_code == 200, response.text
        return samples(response.text)


def launch(
    *flags: str,
    clock: Callable[[], float] = time.time,
    environ: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Running:
    """Start the real exporter in-process on 127.0.0.1:0; the caller stops it."""
    args: argparse.Namespace = build_parser().parse_args(
        ["--web.listen-address", "127.0.0.1:0", *flags]
    )
    exporter = Exporter(args, clock=clock, environ=environ or {})
    exporter.start()
    running = Running(exporter)
    if wait_ready:
        try:
            wait_for(exporter.poller.ready.is_set, what="first poll")
        except BaseException:
            exporter.stop()
            raise
    return running


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., Running]]:
    """Run the real exporter in-process on 127.0.0.1:0; stopped when the test ends."""
    started: list[Exporter] = []

    def start(*flags: str, **options: Any) -> Running:
        running = launch(*flags, **options)
        started.append(running.exporter)
        return running

    yield start
    for exporter in started:
        exporter.stop()


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str]  # everything it printed so far, kept up to date by a reader thread


_LISTEN = re.compile(r'listen"?[=:] ?"?(https?://[^ ",]+)')


def _drain(stream: IO[str], lines: list[str]) -> None:
    """Keep reading a process's output so a chatty process never blocks on a full pipe."""
    try:
        for line in stream:
            lines.append(line)
    except (OSError, ValueError):
        pass  # closed by the fixture's teardown


@pytest.fixture
def exporter_process() -> Iterator[Callable[..., Process]]:
    """Run `python -m exporter` as a real process; its URL is read from its startup log line."""
    procs: list[subprocess.Popen[str]] = []

    def start(
        *flags: str, env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> Process:
        """`command` replaces `python -m exporter`, e.g. with an installed console script."""
        proc = subprocess.Popen(
            [
                *(command or [sys.executable, "-m", "exporter"]),
                "--web.listen-address",
                "127.0.0.1:0",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if k != "WINDSURF_SERVICE_KEY"},
                **(env or {}),
            },
        )
        procs.append(proc)
        lines: list[str] = []
        assert proc.stdout is not None
        threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()

        def listening() -> str | None:
            for line in list(lines):
                match = _LISTEN.search(line)
                if match:
                    return match.group(1)
            if proc.poll() is not None:
                raise AssertionError("exporter exited early:\n" + "".join(lines))
            return None

        url = wait_for(listening, timeout=20, what="the exporter's startup line")
        return Process(proc, url, lines)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def inflated(pieces: Iterable[bytes]) -> bytes:
    """The text of consecutive pieces (`exposition.Piece`: raw deflate blocks)."""
    decompressor = zlib.decompressobj(-15)
    return b"".join([decompressor.decompress(p) for p in pieces])
