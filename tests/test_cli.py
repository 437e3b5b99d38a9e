"""The command line: flags, config checking, exit codes, and what a person sees on error."""

from __future__ import annotations

import gc
import html
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from exporter import __version__, cli
from exporter.cli import parse_listen_address
from exporter.config import load_config, parse_config
from exporter.demo import FakeWindsurf, Fault
from exporter.web import accepts_gzip, wants_openmetrics
from tests.conftest import ROOT, Process, Running, wait_for


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` in `cwd`, with only PATH (or `env`) in its environment."""
    return subprocess.run(
        [sys.executable, *python, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
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


def test_the_memory_of_each_sent_body_is_given_back_and_a_head_renders_none(
    sales: Running,
) -> None:
    sent: list[int] = []
    sales.exporter.app.scraped = lambda: sent.append(1)
    assert sales.scrape(**{"Accept-Encoding": "gzip"}).status_code == 200
    assert sales.scrape(**{"Accept-Encoding": "identity"}).status_code == 200
    assert httpx.head(sales.url + "/metrics", timeout=10).status_code == 200
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("environment", "calls"),
    [
        ({}, [(-8, 2), (-3, 1 << 20)]),
        ({"MALLOC_ARENA_MAX": "4"}, [(-3, 1 << 20)]),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, [(-8, 2)]),
    ],
)
def test_malloc_has_two_arenas_and_maps_large_blocks_apart_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], calls: list[tuple[int, int]]
) -> None:
    if platform.libc_ver()[0] == "glibc":
        assert cli._MALLOPT is not None  # the real function is found where it exists
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(cli, "_MALLOPT", lambda *args: seen.append(args))
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    cli._tune_malloc()
    assert seen == calls


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


def test_abbreviated_flags_are_refused_not_guessed() -> None:
    result = run("--config=x")
    assert result.returncode == 2
    assert "unrecognized arguments: --config=x" in result.stderr


def test_demo_config_check_needs_no_config_file(tmp_path: Path) -> None:
    result = run("--demo", "--config.check", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (
        0,
        "OK: no config file, --demo runs its built-in config (5 group(s), 2 window(s))\n",
    )


def test_config_check_says_the_web_config_is_valid_too(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: DENY\n")
    config = write_config({"groups": ["eng"]})
    result = run("--config.check", "--config.file", str(config), "--web.config.file", str(web))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"OK: {config} is valid (1 group(s), 1 window(s))",
        f"OK: {web} is valid (plain HTTP, 0 basic auth user(s))",
    ]


def test_config_check_reports_a_bad_config_and_a_bad_web_config_together(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: [a]\n")
    config = write_config({"poll": {"interval": "often"}})
    result = run("--config.check", "--config.file", str(config), "--web.config.file", str(web))
    assert result.returncode == 1
    assert "poll.interval: 'often' is not a duration" in result.stdout
    assert "basic_auth_users: must be a mapping of user name to bcrypt hash" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def imported_modules(importtime: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if "|" in line}


def test_the_fake_api_is_imported_only_for_demo(
    write_config: Callable[..., Path],
    fake_api: FakeWindsurf,
    exporter_process: Callable[..., Process],
) -> None:
    config = write_config({"api": {"url": fake_api.url}, "groups": ["sales"]})
    checked = run("--config.check", "--config.file", str(config), python=("-X", "importtime"))
    assert "exporter.cli" in imported_modules(checked.stderr)
    assert "exporter.demo" not in imported_modules(checked.stderr)
    demo = run("--demo", "--config.check", python=("-X", "importtime"))
    assert "exporter.demo" in imported_modules(demo.stderr)

    proc = exporter_process(
        "--config.file", str(config), command=[sys.executable, "-X", "importtime", "-m", "exporter"]
    )
    wait_for(lambda: httpx.get(proc.url + "/-/ready").status_code == 200, what="readiness")
    modules = imported_modules("".join(proc.lines))
    assert "exporter.poller" in modules
    assert "exporter.demo" not in modules


def test_startup_log_shows_the_config_as_one_line_of_yaml_that_parses_back(
    sales_config: Path, exporter_process: Callable[..., Process]
) -> None:
    proc = exporter_process("--config.file", str(sales_config), "--log.format", "json")
    startup = json.loads(next(line for line in proc.lines if "starting windsurf-exporter" in line))
    assert "max_response_size: 64MiB" in startup["config"]
    assert "\n" not in startup["config"]
    pasted = parse_config(yaml.safe_load(startup["config"]), environ={})
    assert pasted == load_config(str(sales_config), environ={})


WHEN = 1795632000.0  # the injected wall clock: 2026-11-25 18:40:00 UTC


def test_landing_page_shows_when_each_group_was_polled_and_why_one_failed(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.set_fault(
        "research",
        Fault(401, body=json.dumps({"error": f"key {fake_api.service_key} refused"}).encode()),
    )
    config = write_config({"api": {"url": fake_api.url}, "groups": ["sales", "research"]})
    page = start_exporter("--config.file", str(config), clock=lambda: WHEN).scrape("/").text
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(<td>.*?)</tr>", page)
        )
    }
    when = "2026-11-25 18:40:00 UTC (0s ago)"
    sales_users = str(len([m for m in fake_api.team if "sales" in m.groups]))
    assert rows["sales"] == ["up", when, when, sales_users, "-"]
    down, polled, succeeded, users, error = rows["research"]
    assert (down, polled, succeeded, users) == ("down", when, "never", "-")
    assert error.startswith(f"{when}: auth: HTTP 401, the service key was refused")
    assert error.endswith("<redacted> refused")
    assert fake_api.service_key not in page


def test_landing_page_config_pastes_back_as_the_same_config(sales: Running) -> None:
    page = sales.scrape("/").text
    (block,) = re.findall(r"<pre>(.*?)</pre>", page, re.DOTALL)
    text = html.unescape(block)
    assert "max_response_size: 64MiB" in text
    assert parse_config(yaml.safe_load(text), environ={}) == sales.exporter.config


def readme_block(heading: str) -> str:
    """The first ```sh block under a README heading."""
    section = (ROOT / "README.md").read_text().split(f"\n{heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_running_it_for_real_works_as_written_with_only_the_key(tmp_path: Path) -> None:
    """The README's commands run by bash in an empty directory with the repository's example
    file; `uv run windsurf-exporter` is this checkout's exporter, and since this machine cannot
    reach the real API, the final start is checked with --config.check instead."""
    block = readme_block("## Running it for real")
    assert "cp config.example.yaml config.yaml" in block
    shim = tmp_path / "bin" / "uv"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "run windsurf-exporter" ] || exit 99\n'
        "shift 2\n"
        'case " $* " in *" --config.check "*) ;; *) set -- --config.check "$@";; esac\n'
        f'exec {sys.executable} -m exporter "$@"\n'
    )
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config.example.yaml", work)
    result = subprocess.run(
        ["bash", "-euc", block],
        cwd=work,
        env={"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        input="sk-typed-at-the-prompt\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK: config.yaml is valid") == 2


def test_copied_example_passes_config_check_with_only_the_key_in_the_environment(
    tmp_path: Path,
) -> None:
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    result = run("--config.check", cwd=tmp_path, env={"WINDSURF_SERVICE_KEY": "sk-from-env"})
    assert (result.returncode, result.stdout) == (
        0,
        "OK: config.yaml is valid (2 group(s), 1 window(s))\n",
    )


def test_the_garbage_collector_walks_the_heap_less_often_once_started() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # Python's defaults
        cli._tune_gc()
        assert gc.get_threshold() == cli.GC_THRESHOLDS
        assert cli.GC_THRESHOLDS[0] > 700
    finally:
        gc.set_threshold(*before)
