"""The command line: flags, config checking, exit codes, and what a person sees on error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporter import __version__
from exporter.cli import parse_listen_address
from exporter.demo import FakeWindsurf
from exporter.web import accepts_gzip, wants_openmetrics
from tests.conftest import ROOT, Process, Running, wait_for


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or {"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"windsurf-exporter {__version__}"


def test_config_check_accepts_a_valid_file(write_config: Callable[..., Path]) -> None:
    result = run("--config.check", "--config.file", str(write_config({"groups": ["eng"]})))
    assert result.returncode == 0
    assert result.stdout.startswith("OK: ")


def test_config_check_reports_every_problem_and_exits_1(write_config: Callable[..., Path]) -> None:
    path = write_config({"poll": {"interval": "often"}, "groups": "eng"})
    result = run("--config.check", "--config.file", str(path))
    assert result.returncode == 1
    assert "poll.interval: 'often' is not a duration" in result.stdout
    assert "groups: must be a list of group names" in result.stdout


def test_a_bad_config_stops_startup_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  url: nowhere\n  timeout: 3\n")
    result = run("--config.file", str(path), env={"WINDSURF_SERVICE_KEY": "sk-test-secret"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "api.url: 'nowhere' must be an http:// or https:// URL" in result.stderr
    assert "api.timeout: 3 is not a duration" in result.stderr
    assert "sk-test-secret" not in result.stderr + result.stdout


def test_a_missing_key_stops_startup(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("groups: [eng]\n")
    result = run("--config.file", str(path))
    assert result.returncode == 2
    assert "api.service_key_file: not set and $WINDSURF_SERVICE_KEY is empty" in result.stderr


def test_a_bad_listen_address_is_refused() -> None:
    result = run("--demo", "--web.listen-address", "localhost")
    assert result.returncode == 2
    assert "--web.listen-address: 'localhost' must look like host:port" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9929", ("0.0.0.0", 9929)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.fixture
def sales_config(fake_api: FakeWindsurf, write_config: Callable[..., Path]) -> Path:
    """A config polling the fake API's sales group every second."""
    return write_config(
        {"api": {"url": fake_api.url}, "poll": {"interval": "1s"}, "groups": ["sales"]}
    )


@pytest.fixture
def sales(sales_config: Path, start_exporter: Callable[..., Running]) -> Running:
    return start_exporter("--config.file", str(sales_config))


def test_telemetry_path_and_json_logs(
    sales_config: Path, exporter_process: Callable[..., Process]
) -> None:
    proc = exporter_process(
        "--config.file",
        str(sales_config),
        "--web.telemetry-path",
        "/probe",
        "--log.format",
        "json",
    )
    startup = json.loads(proc.lines[-1])
    assert startup["msg"] == "starting windsurf-exporter"
    assert startup["level"] == "info"
    wait_for(lambda: httpx.get(proc.url + "/-/ready").status_code == 200, what="readiness")
    assert 'windsurf_up{group="sales"} 1' in httpx.get(proc.url + "/probe").text
    assert httpx.get(proc.url + "/metrics").status_code == 404


def test_startup_warns_about_short_intervals_and_logs_the_config_without_secrets(
    sales_config: Path, fake_api: FakeWindsurf, exporter_process: Callable[..., Process]
) -> None:
    proc = exporter_process("--config.file", str(sales_config))
    text = "".join(proc.lines)
    assert "level=warn" in text
    assert "may trip the API's rate limit" in text
    assert "service_key_file" in text
    assert fake_api.service_key not in text


def test_landing_page_links_metrics_and_shows_no_secret(
    sales: Running, fake_api: FakeWindsurf
) -> None:
    running = sales
    page = running.scrape("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'href="/metrics"' in page.text
    assert "sales" in page.text
    assert fake_api.service_key not in page.text


def test_health_and_readiness(sales: Running, fake_api: FakeWindsurf) -> None:
    running = sales
    assert running.scrape("/-/healthy").status_code == 200
    assert running.scrape("/-/ready").status_code == 200
    assert running.scrape("/nope").status_code == 404
    assert running.scrape("/-/reload").status_code == 405


def test_content_negotiation(sales: Running, fake_api: FakeWindsurf) -> None:
    running = sales
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    om = running.scrape(Accept=prometheus_accept)
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    text = running.scrape(Accept="text/plain")
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in text.text
    packed = running.scrape(**{"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert "windsurf_up" in packed.text  # httpx decompresses
    plain = running.scrape(**{"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers


@pytest.mark.parametrize(
    ("accept_encoding", "gzip"),
    [
        ("gzip;q=0.000", False),
        ("deflate, gzip; q=0.000", False),
        ("*;q=0, gzip", True),
        ("gzip;q=0, *", False),
        ("*", True),
        ("GZIP;q=0.5", True),
        ("gzip;q=nan", False),
        ("gzip;q=2", False),
        ("gzip;q=-1", False),
        ("", False),
    ],
)
def test_gzip_follows_every_spelling_of_q(accept_encoding: str, gzip: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzip


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("application/openmetrics-text;version=1.0.0;q=0.1,text/plain;q=1", False),
        ("text/plain;q=0.5,application/openmetrics-text", True),
        ("Application/OpenMetrics-Text", True),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=nan", False),
        ("application/openmetrics-text;version=2.0.0", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_the_format_follows_the_clients_preference(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics
