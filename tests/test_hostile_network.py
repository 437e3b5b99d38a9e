"""A hostile network, no credentials needed: many or slow scrapers, slowloris under a low
descriptor limit, malformed requests and HTTP corner cases. Memory is the real process's peak
RSS (VmHWM) with a 20,000-user team from the fake API."""

from __future__ import annotations

import logging
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bench.hostile import concurrent, cpu_seconds, peak_rss
from exporter.demo import FakeWindsurf, synthetic_team
from exporter.web import Scrapes
from tests.conftest import Process, Running, samples, wait_for
from tests.test_process import config_for, output, web_config

BIG_TEAM = 20_000


# --- Reading the real process ---


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.port is not None
    return str(parts.hostname), parts.port


def exchange(running: Running, data: bytes) -> bytes:
    """Send raw bytes to the exporter and read its answer until it closes the connection."""
    with socket.create_connection(address(running.url), timeout=10) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


# --- Many scrapers share one render ---


def test_scrapes_arriving_during_a_render_share_its_bytes() -> None:
    release = threading.Event()
    calls: list[tuple[bool, bool]] = []

    def render(openmetrics: bool, gzip: bool) -> bytes:
        calls.append((openmetrics, gzip))
        release.wait(10)
        return b"exposition %d" % len(calls)

    scrapes = Scrapes(render, limit=1)
    bodies: list[bytes | None] = []

    def scrape() -> None:
        with scrapes.body(False, True) as body:
            bodies.append(body)

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    threads[0].start()
    wait_for(lambda: calls, what="the first render")
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: scrapes.users(False, True) == 20, what="every scrape joined the render")
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == [(False, True)]
    assert len(bodies) == 20
    assert all(body is bodies[0] for body in bodies), "one shared object, not copies"


def test_a_render_beyond_the_limit_is_refused_while_the_bodies_are_in_use() -> None:
    scrapes = Scrapes(lambda openmetrics, gzip: b"%d" % openmetrics, limit=1)
    with scrapes.body(False, False) as text:
        assert text == b"0"
        with scrapes.body(True, False) as other:
            assert other is None, "a second body in memory would pass the limit"
    with scrapes.body(True, False) as other:
        assert other == b"1", "the slot is free again once the first body was sent"


# --- Malformed requests: a status line, a 4xx, no traceback, a rate-limited debug line ---


@pytest.fixture
def running(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> Running:
    config = write_config(config_for(fake_api, ["engineering"]))
    return start_exporter("--config.file", str(config), "--web.enable-lifecycle")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics\r\n\r\n", b"400"),  # HTTP/0.9: would be a bare body
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1 extra\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET / HTTP/1.x\r\n\r\n", b"400"),
        (b"POST /-/reload HTTP/1.1\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n", b"400"),
        (b"POST /-/reload HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b"400"),
        (b"POST /-/reload HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST /-/reload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", b"413"),
        (b"PUT /-/reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    ],
    ids=[
        "http-0.9",
        "garbage",
        "four-words",
        "http-2",
        "bad-version",
        "4301-digit-length",
        "two-lengths",
        "two-lengths-on-get",
        "negative-length",
        "large-body",
        "put-reload",
    ],
)
def test_a_malformed_request_gets_a_status_line_and_a_4xx_without_a_traceback(
    running: Running,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    request_bytes: bytes,
    status: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = exchange(running, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"Connection: close" in answer
    assert b"<html" not in answer.lower()
    assert running.scrape("/-/healthy").status_code == 200
    assert "config reloaded" not in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def test_a_flood_of_malformed_requests_logs_a_few_debug_lines(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    for _ in range(100):
        assert exchange(running, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    lines = [r for r in caplog.records if "GARBAGE" in r.getMessage()]
    assert 1 <= len(lines) <= 10, "a flood is a few lines, not two per request"
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "exporter.web")


def test_a_password_longer_than_bcrypt_takes_is_a_401(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    web = tmp_path / "web.yaml"
    web_config(web, "old password")
    config = write_config(config_for(fake_api, ["engineering"]))
    running = start_exporter("--config.file", str(config), "--web.config.file", str(web))
    response = httpx.get(running.url + "/metrics", auth=("prometheus", "x" * 100))
    assert response.status_code == 401
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


# --- HTTP details ---


def test_the_server_header_names_no_python_version(running: Running) -> None:
    assert running.scrape("/-/healthy").headers["server"] == "windsurf-exporter"
    assert b"Python" not in exchange(running, b"GARBAGE\r\n\r\n")


def test_head_metrics_answers_the_headers_without_rendering(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = running.exporter.app.collector
    renders: list[bool] = []
    real = collector.render

    def spy(*args: Any) -> bytes:
        renders.append(True)
        return real(*args)

    monkeypatch.setattr(collector, "render", spy)
    head = httpx.head(running.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert head.status_code == 200
    assert head.headers["content-encoding"] == "gzip"
    assert head.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert renders == []
    assert running.scrape().status_code == 200
    assert renders == [True]


def test_headers_sent_a_byte_at_a_time_meet_a_deadline_and_never_run(running: Running) -> None:
    running.exporter.app.header_timeout = 0.5
    config = running.exporter.config
    with socket.create_connection(address(running.url), timeout=10) as conn:
        conn.sendall(b"POST /-/reload HTTP/1.1\r\nContent-Length: 0\r\n")

        def trickled_until_closed() -> bool:
            try:
                if conn.recv(1, socket.MSG_DONTWAIT) == b"":
                    return True
            except BlockingIOError:
                conn.send(b"X")  # one more byte of a header line that never ends
                return False
            except ConnectionResetError:
                return True
            raise AssertionError("the server answered a request it never received whole")

        wait_for(trickled_until_closed, timeout=10, what="the server to hang up")
    assert running.exporter.config is config, "no reload ran"


# --- Slowloris under the systemd-like descriptor limit, scaled down ---


@pytest.fixture
def small(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
) -> Callable[..., Process]:
    """The real process polling the small team every second, with debug logs, under an
    optional RLIMIT_NOFILE set in the child (by prlimit, before Python starts)."""

    def start(*flags: str, nofile: int | None = None) -> Process:
        config = write_config(config_for(fake_api, ["engineering"]))
        limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        return exporter_process(
            *("--config.file", str(config), "--log.level", "debug", *flags),
            command=[*limit, sys.executable, "-m", "exporter"],
        )

    return start


NOFILE = 128  # the child's descriptor limit; the default cap of 64 clients fits under it
HELD = 180  # more half-sent requests than the child has descriptors


def half_sent(to: tuple[str, int], index: int) -> socket.socket:
    """A client that sends a request without the blank line that ends its headers, and waits."""
    conn = socket.create_connection(to, timeout=10)
    if index % 2:
        conn.sendall(b"POST /-/reload?held HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n")
    else:
        conn.sendall(b"GET /metrics?held HTTP/1.1\r\nHost: x\r\n")
    return conn


def closed_by_peer(conn: socket.socket, within: float) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_slowloris_starves_neither_polls_nor_the_cpu_and_half_requests_never_run(
    fake_api: FakeWindsurf, small: Callable[..., Process]
) -> None:
    process = small("--web.enable-lifecycle", nofile=NOFILE)
    pid = process.proc.pid
    wait_for(lambda: httpx.get(process.url + "/-/ready").status_code == 200, what="first poll")
    fds = open_fds(pid)
    polls = len(fake_api.requests_for("engineering"))
    started, cpu = time.monotonic(), cpu_seconds(pid)
    held = [half_sent(address(process.url), i) for i in range(HELD)]
    try:
        wait_for(
            lambda: len(fake_api.requests_for("engineering")) >= polls + 3,
            timeout=20,
            what="polls going on during the attack",
        )
        busy = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
        assert busy < 0.5, f"the exporter used {busy:.0%} of a core while held"
        during = httpx.get(process.url + "/metrics", timeout=10)  # idle clients make way
        assert 'windsurf_up{group="engineering"} 1' in during.text
        assert closed_by_peer(held[0], within=15), "headers have a deadline"
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: open_fds(pid) <= fds + 2, timeout=30, what="every held client handled")
    metrics = samples(httpx.get(process.url + "/metrics", timeout=10).text)
    assert metrics['windsurf_up{group="engineering"}'] == 1
    log = output(process)
    assert "Too many open files" not in log
    assert "?held" not in log, "a half-sent request was served"
    assert "config reloaded" not in log
    assert "Traceback" not in log


# --- Memory with a 20,000-user team ---


@pytest.fixture(scope="module")
def big_api() -> Iterator[FakeWindsurf]:
    with FakeWindsurf(team=synthetic_team(BIG_TEAM, groups=("engineering",))) as fake:
        yield fake


@pytest.fixture
def big(
    big_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
) -> tuple[Process, int]:
    """The real process polling the big team once (no poll during the test), and the size of
    its plain-text exposition after a first scrape of each kind."""
    config = write_config(
        {"api": {"url": big_api.url, "timeout": "60s"}, "groups": ["engineering"]}
    )
    process = exporter_process("--config.file", str(config), "--web.max-requests", "2")
    wait_for(
        lambda: httpx.get(process.url + "/-/ready").status_code == 200,
        timeout=60,
        what="first poll",
    )
    plain = httpx.get(process.url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=60)
    assert httpx.get(process.url + "/metrics", timeout=60).status_code == 200  # gzip
    return process, len(plain.content)


def test_fifty_gzip_scrapes_right_after_a_reload_share_one_render(big: tuple[Process, int]) -> None:
    process, plain = big
    before = peak_rss(process.proc.pid)
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in output(process), what="the reload")
    codes = concurrent(process.url, 50, **{"Accept-Encoding": "gzip"})
    assert codes == [200] * 50
    grown = peak_rss(process.proc.pid) - before
    assert grown < 2 * plain, f"peak RSS grew {grown >> 20} MiB ({plain >> 20} MiB exposition)"


def test_slow_readers_hold_at_most_the_limit_of_bodies(big: tuple[Process, int]) -> None:
    process, plain = big
    before = peak_rss(process.proc.pid)
    readers = []
    for _ in range(40):
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(60)
        conn.connect(address(process.url))
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        readers.append(conn)
    try:
        answers = [conn.recv(12) for conn in readers]  # then they stop reading
        assert all(a in (b"HTTP/1.1 200", b"HTTP/1.1 503") for a in answers), answers
        assert b"HTTP/1.1 200" in answers
        grown = peak_rss(process.proc.pid) - before
    finally:
        for conn in readers:
            conn.close()
    # --web.max-requests 2: two bodies at most, plus what rendering one needs.
    assert grown < 3 * plain, f"peak RSS grew {grown >> 20} MiB ({plain >> 20} MiB exposition)"
    assert httpx.get(process.url + "/metrics", timeout=60).status_code == 200


def test_the_connection_cap_leaves_descriptors_for_polls_under_a_low_limit(
    small: Callable[..., Process],
) -> None:
    process = small(nofile=100)
    line = next(x for x in process.lines if "--web.max-connections lowered" in x)
    assert "cap=36" in line
    assert "wanted=64" in line


def polls_tried(process: Process, fake: FakeWindsurf) -> int:
    """Polls that reached the fake API plus polls that failed before (one log line each)."""
    return len(fake.requests_for("engineering")) + output(process).count("next attempt in")


def test_out_of_descriptors_the_accept_loop_pauses_instead_of_spinning(
    fake_api: FakeWindsurf, small: Callable[..., Process]
) -> None:
    process = small()
    pid = process.proc.pid
    wait_for(lambda: httpx.get(process.url + "/-/ready").status_code == 200, what="first poll")
    room = open_fds(pid) + 5
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (room, room))  # lower than the cap allows
    held = [half_sent(address(process.url), 0) for _ in range(20)]
    try:
        wait_for(lambda: "out of file descriptors" in output(process), what="EMFILE")
        started, cpu = time.monotonic(), cpu_seconds(pid)
        polls = polls_tried(process, fake_api)
        wait_for(lambda: polls_tried(process, fake_api) >= polls + 2, timeout=20, what="polls")
        busy = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
        assert busy < 0.5, f"the exporter used {busy:.0%} of a core out of descriptors"
    finally:
        for conn in held:
            conn.close()
