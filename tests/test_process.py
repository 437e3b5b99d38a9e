"""Process behaviour: signals stop or reload the real process, reload keeps a good config over a
bad one, health and readiness answer, and scrapes always see one whole snapshot."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter.demo import FakeWindsurf, Fault
from exporter.state import Snapshot
from tests.conftest import Process, Running, samples, wait_for

FAST = {"poll": {"interval": "1s"}}


def config_for(fake: FakeWindsurf, groups: list[str], **extra: Any) -> dict[str, Any]:
    # team: false: these tests follow each group's own polls and rows.
    return {
        "api": {"url": fake.url, "timeout": "5s"},
        **FAST,
        "groups": groups,
        "team": False,
        **extra,
    }


def has_group(url: str, group: str) -> bool:
    text = httpx.get(url + "/metrics", timeout=5).text
    return f'windsurf_up{{group="{group}"}} 1' in text


def output(process: Process) -> str:
    return "".join(process.lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_2s_even_mid_poll_with_keepalive_clients(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
    signum: signal.Signals,
) -> None:
    config = write_config(config_for(fake_api, ["engineering", "research"]))
    fake_api.set_fault("research", Fault(delay=30.0))  # a poll hangs while we stop
    process = exporter_process("--config.file", str(config))
    wait_for(lambda: has_group(process.url, "engineering"), what="first poll")
    wait_for(lambda: fake_api.requests_for("research"), what="the hanging poll")
    with httpx.Client() as keepalive:  # Prometheus keeps its connection open between scrapes
        assert keepalive.get(process.url + "/metrics").status_code == 200
        started = time.monotonic()
        process.proc.send_signal(signum)
        assert process.proc.wait(timeout=2) == 0
        assert time.monotonic() - started < 2.0
    wait_for(lambda: "shutting down" in output(process), what="the shutdown line")
    assert "Traceback" not in output(process)


def test_stop_signal_right_after_the_startup_line_still_exits_0(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
) -> None:
    config = write_config(config_for(fake_api, ["engineering"]))
    process = exporter_process("--config.file", str(config))
    process.proc.send_signal(signal.SIGTERM)  # the handlers are in place before that line
    assert process.proc.wait(timeout=2) == 0


# Runs the real CLI in a child's main thread; a thread of its own takes the signal, once the
# main thread waits: the kernel hands a process's signal to any of its threads.
_SIGNAL_TO_ANOTHER_THREAD = """
import signal, sys, threading
from exporter import cli

def started():  # the web server runs and the main thread is out of start(): it waits
    frame = sys._current_frames()[threading.main_thread().ident]
    names = set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return "start" not in names and any(t.name == "web" for t in threading.enumerate())

def kill_from_a_thread():
    while not started():
        threading.Event().wait(0.01)
    signal.pthread_kill(threading.get_ident(), signal.SIGNUM)

threading.Thread(target=kill_from_a_thread, daemon=True).start()
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_another_thread_takes_is_acted_on(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
    signum: signal.Signals,
) -> None:
    config = write_config(config_for(fake_api, ["engineering"]))
    script = _SIGNAL_TO_ANOTHER_THREAD.replace("SIGNUM", signum.name)
    process = exporter_process("--config.file", str(config), command=[sys.executable, "-c", script])
    if signum == signal.SIGTERM:
        assert process.proc.wait(timeout=10) == 0
        wait_for(lambda: "shutting down" in output(process), what="the shutdown line")
    else:
        wait_for(lambda: "config reloaded" in output(process), what="the reload")
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=10) == 0


@pytest.fixture
def polling(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
) -> tuple[Process, Path]:
    """The real process, its first poll of the engineering group done, and its config file."""
    config = write_config(config_for(fake_api, ["engineering"]))
    process = exporter_process("--config.file", str(config))
    wait_for(lambda: has_group(process.url, "engineering"), what="first poll")
    return process, config


@pytest.fixture
def polling_web(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
    tmp_path: Path,
) -> tuple[Process, Path]:
    """The real process behind basic auth ("old password"), and its web config file."""
    web = tmp_path / "web.yaml"
    web_config(web, "old password")
    config = write_config(config_for(fake_api, ["engineering"]))
    process = exporter_process("--config.file", str(config), "--web.config.file", str(web))
    wait_for(lambda: status_with(process.url, "old password") == 200, what="the first scrape")
    return process, web


def test_sighup_reloads_a_good_config(
    fake_api: FakeWindsurf, write_config: Callable[..., Path], polling: tuple[Process, Path]
) -> None:
    process, _ = polling
    write_config(config_for(fake_api, ["engineering", "research"]))
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: has_group(process.url, "research"), what="the new group")
    assert "config reloaded" in output(process)
    assert process.proc.poll() is None


def test_sighup_with_a_bad_config_keeps_the_running_one(polling: tuple[Process, Path]) -> None:
    process, config = polling
    config.write_text("poll:\n  interval: often\ngroups: [engineering, research]\n")
    process.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "config reload failed, keeping the running config" in output(process),
        what="the reload failure line",
    )
    line = next(x for x in process.lines if "config reload failed" in x)
    assert "poll.interval" in line, "the log says why"
    polls = 'windsurf_exporter_polls_total{group="engineering"}'
    before = samples(httpx.get(process.url + "/metrics").text)[polls]
    wait_for(
        lambda: samples(httpx.get(process.url + "/metrics").text)[polls] > before,
        what="polling to go on with the old config",
    )
    assert not has_group(process.url, "research")
    assert process.proc.poll() is None


def test_post_reload_answers_and_keeps_the_old_config_on_error(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = write_config(config_for(fake_api, ["engineering"]))
    running = start_exporter("--config.file", str(config), "--web.enable-lifecycle")

    config.write_text("groups: engineering\nunknown_key: 1\n")
    bad = httpx.post(running.url + "/-/reload")
    assert bad.status_code == 500
    assert "reload failed, running config kept" in bad.text
    assert "groups: must be a list" in bad.text
    assert "unknown_key: unknown key" in bad.text
    assert running.exporter.poller.snapshot.config.groups == ("engineering",)

    write_config(config_for(fake_api, ["engineering", "research"]))
    good = httpx.post(running.url + "/-/reload")
    assert (good.status_code, good.text) == (200, "config reloaded\n")
    wait_for(lambda: has_group(running.url, "research"), what="the new group")
    assert httpx.get(running.url + "/-/reload").status_code == 405


def test_reload_over_http_is_off_unless_the_lifecycle_flag_is_given(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = write_config(config_for(fake_api, ["engineering"]))
    running = start_exporter("--config.file", str(config))
    write_config(config_for(fake_api, ["engineering", "research"]))
    refused = httpx.post(running.url + "/-/reload")
    assert refused.status_code == 403
    assert "--web.enable-lifecycle" in refused.text
    assert running.exporter.poller.snapshot.config.groups == ("engineering",)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_on_reload_are_405_and_do_not_reload(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    method: str,
) -> None:
    config = write_config(config_for(fake_api, ["engineering"]))
    running = start_exporter("--config.file", str(config), "--web.enable-lifecycle")
    write_config(config_for(fake_api, ["engineering", "research"]))
    response = httpx.request(method, running.url + "/-/reload")
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert running.exporter.poller.snapshot.config.groups == ("engineering",)


def web_config(path: Path, password: str) -> None:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))


def status_with(url: str, password: str) -> int:
    return httpx.get(url + "/metrics", auth=("prometheus", password), timeout=5).status_code


def test_sighup_rereads_the_web_config_and_keeps_it_over_a_bad_one(
    polling_web: tuple[Process, Path],
) -> None:
    process, web = polling_web
    web_config(web, "new password")
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status_with(process.url, "new password") == 200, what="the new password")
    assert status_with(process.url, "old password") == 401
    web.write_text("basic_auth_users:\n  prometheus: plain-text\n")
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reload failed" in output(process), what="the refused web config")
    line = next(x for x in process.lines if "config reload failed" in x)
    assert "basic_auth_users.prometheus: must be a bcrypt hash" in line
    assert status_with(process.url, "new password") == 200, "the running web config is kept"
    assert process.proc.poll() is None


def test_post_reload_rereads_the_web_config(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    tmp_path: Path,
) -> None:
    web = tmp_path / "web.yaml"
    web_config(web, "old password")
    config = write_config(config_for(fake_api, ["engineering"]))
    running = start_exporter(
        "--config.file", str(config), "--web.config.file", str(web), "--web.enable-lifecycle"
    )
    web_config(web, "new password")
    reload = httpx.post(running.url + "/-/reload", auth=("prometheus", "old password"))
    assert reload.status_code == 200
    assert status_with(running.url, "old password") == 401
    assert status_with(running.url, "new password") == 200


def test_healthy_at_once_ready_only_after_the_first_poll(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    fake_api.set_fault("engineering", Fault(delay=30.0, times=1))
    config = write_config(
        {**config_for(fake_api, ["engineering"]), "api": {"url": fake_api.url, "timeout": "1s"}}
    )
    running = start_exporter("--config.file", str(config), wait_ready=False)
    assert running.scrape("/-/healthy").status_code == 200
    not_ready = running.scrape("/-/ready")
    assert not_ready.status_code == 503
    # The first poll completes by timing out: ready, though that poll failed.
    wait_for(lambda: running.scrape("/-/ready").status_code == 200, what="ready")
    errors = 'windsurf_exporter_poll_errors_total{group="engineering",reason="timeout"}'
    assert samples(running.scrape().text)[errors] == 1


def test_stop_lets_an_in_flight_scrape_finish(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    running = start_exporter("--config.file", str(write_config(config_for(fake_api, []))))
    app = running.exporter.app
    real_render = app.collector.render
    rendering, release = threading.Event(), threading.Event()

    def slow_render(*args: Any, **kwargs: Any) -> bytes:
        rendering.set()
        release.wait(5)
        return real_render(*args, **kwargs)

    app.collector.render = slow_render  # type: ignore[method-assign]
    responses: list[httpx.Response] = []
    scrape = threading.Thread(target=lambda: responses.append(running.scrape()))
    scrape.start()
    assert rendering.wait(5)
    stopper = threading.Thread(target=running.exporter.stop)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive(), "stop waits for the scrape in flight"
    release.set()
    scrape.join(5)
    stopper.join(5)
    assert not stopper.is_alive()
    assert responses[0].status_code == 200
    assert "windsurf_up" in responses[0].text


class CountingFake(FakeWindsurf):
    """Every user's promptCreditsUsed is the number of requests for their group so far, so a
    scrape that mixed two polls would show users (or groups) disagreeing with polls_total."""

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, document = super().respond(body)
        count = len(self.requests_for(str(body.get("group_name") or "")))
        for row in document.get("userTableStats", []):
            row["promptCreditsUsed"] = count
        return status, document


def test_concurrent_scrapes_during_polls_see_one_whole_snapshot(
    write_config: Callable[..., Path], start_exporter: Callable[..., Running]
) -> None:
    groups = ["engineering", "research", "design"]
    with CountingFake() as fake:
        config = write_config(
            {**config_for(fake, groups), "poll": {"interval": "100ms", "concurrency": 3}}
        )
        running = start_exporter("--config.file", str(config))
        problems: list[str] = []
        checked = [0]
        done = threading.Event()

        def scrape_and_check() -> None:
            with httpx.Client() as client:
                while not done.is_set():
                    metrics = samples(client.get(running.url + "/metrics").text)
                    problems.extend(inconsistencies(metrics, groups))
                    checked[0] += 1

        scrapers = [threading.Thread(target=scrape_and_check) for _ in range(4)]
        for thread in scrapers:
            thread.start()
        first: Snapshot = running.exporter.poller.snapshot
        wait_for(
            lambda: all(
                new.polls >= old.polls + 10
                for old, new in zip(
                    first.states, running.exporter.poller.snapshot.states, strict=True
                )
            ),
            timeout=30,
            what="ten more polls of every group",
        )
        done.set()
        for thread in scrapers:
            thread.join(10)
    assert checked[0] >= 20
    assert problems == []


def inconsistencies(metrics: dict[str, float], groups: list[str]) -> list[str]:
    found = []
    for group in groups:
        polls = metrics[f'windsurf_exporter_polls_total{{group="{group}"}}']
        users = [
            v
            for k, v in metrics.items()
            if k.startswith("windsurf_user_prompt_credits_used{") and f'group="{group}"' in k
        ]
        total = metrics[f'windsurf_group_prompt_credits_used{{group="{group}"}}']
        if set(users) != {polls} or total != polls * len(users):
            found.append(f"{group}: polls={polls} users={sorted(set(users))} total={total}")
    return found


def test_an_idle_keepalive_connection_does_not_hold_up_stop(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    running = start_exporter("--config.file", str(write_config(config_for(fake_api, []))))
    with httpx.Client() as keepalive:
        assert keepalive.get(running.url + "/metrics").status_code == 200
        started = time.monotonic()
        running.exporter.stop()
        assert time.monotonic() - started < 0.8, "only requests in flight are waited for"
