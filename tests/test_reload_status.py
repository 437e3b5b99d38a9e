"""windsurf_exporter_config_last_reload_successful and _success_timestamp_seconds, Prometheus'
own pair: the load at startup counts, a failed reload sets 0 and keeps the time of the last good
one, the next good reload sets both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter.demo import FakeWindsurf
from tests.conftest import Running

OK = "windsurf_exporter_config_last_reload_successful"
AT = "windsurf_exporter_config_last_reload_success_timestamp_seconds"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reload_status_follows_startup_a_failed_and_a_good_reload(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    clock = Clock(1_800_000_000.0)
    raw = {"api": {"url": fake_api.url}, "groups": ["engineering"]}
    config = write_config(raw)
    running = start_exporter("--config.file", str(config), clock=clock)
    metrics = running.metrics()
    assert (metrics[OK], metrics[AT]) == (1, 1_800_000_000.0)

    clock.now += 60
    config.write_text("groups: [engineering\n")
    assert running.exporter.reload()[0] is False
    metrics = running.metrics()
    assert (metrics[OK], metrics[AT]) == (0, 1_800_000_000.0)

    clock.now += 60
    write_config(raw)
    assert running.exporter.reload()[0] is True
    metrics = running.metrics()
    assert (metrics[OK], metrics[AT]) == (1, 1_800_000_120.0)
