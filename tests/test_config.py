"""The config contract: defaults, durations, and every problem reported at once by key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import (
    ConfigError,
    Secret,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from tests.conftest import ROOT

KEY_ENV = {"WINDSURF_SERVICE_KEY": "sk-from-env"}


def problems(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ=KEY_ENV if environ is None else environ)
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("2w", 1209600),
        ("500ms", 0.5),
        ("1y", 31536000),
        ("1s", 1),
    ],
)
def test_durations_are_prometheus_style(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 minutes", "1h 30m", "-5s", "1.5h", "s", "30S"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_no_timer_can_wait_are_refused() -> None:
    found = problems({"api": {"timeout": "1000y"}, "poll": {"interval": "9" * 30 + "d"}})
    assert [p.split(":")[0] for p in found] == ["api.timeout", "poll.interval"]
    assert all("is longer than a timer can wait" in p for p in found)


def test_equal_windows_get_the_same_label() -> None:
    assert format_duration(parse_duration("720h")) == "30d"
    assert format_duration(parse_duration("90m")) == "1h30m"


def test_defaults_need_only_a_key() -> None:
    config = parse_config({}, environ=KEY_ENV)
    assert config.api.url == "https://server.codeium.com"
    assert config.api.service_key.reveal() == "sk-from-env"
    assert config.api.timeout == 30
    assert config.poll.interval == 900
    assert config.poll.max_staleness == 6 * 3600
    assert config.groups == ("",)
    assert [w.label for w in config.windows] == ["30d"]


def test_full_config_is_read() -> None:
    config = parse_config(
        {
            "api": {
                "url": "https://eu.windsurf.example/",
                "timeout": "10s",
                "retries": 1,
                "max_response_size": "2MiB",
            },
            "poll": {"interval": "5m", "max_staleness": "1h", "concurrency": 2},
            "groups": ["engineering", "research"],
            "active_days_windows": ["7d", "30d"],
        },
        environ=KEY_ENV,
    )
    assert config.api.url == "https://eu.windsurf.example"
    assert (config.api.timeout, config.api.retries) == (10, 1)
    assert config.api.max_response_bytes == 2 * 1024 * 1024
    assert (config.poll.interval, config.poll.max_staleness, config.poll.concurrency) == (
        300,
        3600,
        2,
    )
    assert config.groups == ("engineering", "research")
    assert [(w.label, w.seconds) for w in config.windows] == [("7d", 604800), ("30d", 2592000)]


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    found = problems(
        {
            "api": {"url": "ftp://nope", "timeout": 30, "retries": -1, "colour": "red"},
            "poll": {"interval": "soon"},
            "groups": ["eng", 7, "eng"],
            "active_days_windows": ["30d", "720h"],
            "labels": {"user": "phone"},
            "per_user": "yes",
            "surprise": 1,
        }
    )
    paths = [p.split(":")[0] for p in found]
    assert paths == [
        "surprise",
        "api.colour",
        "api.url",
        "api.timeout",
        "api.retries",
        "poll.interval",
        "groups[1]",
        "groups[2]",
        "active_days_windows[1]",
        "labels.user",
        "per_user",
    ]


@pytest.mark.parametrize(
    "url", ["http://api:abc", "http://api:99999", "http://[zz]", "https://[::1"]
)
def test_a_url_http_cannot_parse_is_refused_at_startup_not_at_each_poll(url: str) -> None:
    assert [p.split(":")[0] for p in problems({"api": {"url": url}})] == ["api.url"]


def test_error_message_names_the_file_and_each_problem_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("poll:\n  interval: 5 minutes\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ=KEY_ENV)
    assert str(caught.value).splitlines() == [
        f"invalid config {path}:",
        "  poll.interval: '5 minutes' is not a duration; use a number and a unit: 30s, 5m, 1h, 7d",
    ]


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("api:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_config(str(path), environ=KEY_ENV)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"), environ=KEY_ENV)


def test_top_level_must_be_a_mapping() -> None:
    assert problems(["a", "b"]) == ["(top level): must be a mapping with keys such as api, poll"]


def test_key_comes_from_the_file_before_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    config = parse_config({"api": {"service_key_file": str(key_file)}}, environ=KEY_ENV)
    assert config.api.service_key.reveal() == "sk-from-file"


def test_missing_key_is_reported_with_both_places_to_put_it() -> None:
    assert problems({}, environ={}) == [
        "api.service_key_file: not set and $WINDSURF_SERVICE_KEY is empty;"
        " give the key in one of them"
    ]


def test_unreadable_key_file_is_reported(tmp_path: Path) -> None:
    found = problems({"api": {"service_key_file": str(tmp_path / "nope")}})
    assert found == [
        f"api.service_key_file: cannot read '{tmp_path / 'nope'}': No such file or directory"
    ]


def test_secret_never_shows_itself(tmp_path: Path) -> None:
    secret = Secret("sk-very-secret")
    config = parse_config({}, environ={"WINDSURF_SERVICE_KEY": "sk-very-secret"})
    for text in (repr(secret), str(secret), repr(config), str(config.redacted())):
        assert "sk-very-secret" not in text


def test_short_intervals_are_allowed_with_a_warning() -> None:
    config = parse_config({"poll": {"interval": "1s"}, "groups": ["a", "b"]}, environ=KEY_ENV)
    assert config.poll.interval == 1
    (warning,) = config.warnings()
    assert warning.startswith("poll.interval: 1s makes 2 request(s) every 1s")
    assert "rate limit" in warning


def test_a_normal_interval_has_no_warning() -> None:
    assert parse_config({"poll": {"interval": "15m"}}, environ=KEY_ENV).warnings() == []


def test_groups_absent_or_empty_mean_the_whole_team() -> None:
    assert parse_config({"groups": []}, environ=KEY_ENV).groups == ("",)
    assert parse_config({"groups": None}, environ=KEY_ENV).groups == ("",)


def _keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in raw.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


def test_example_config_is_valid_and_shows_every_key(tmp_path: Path) -> None:
    text = (ROOT / "config.example.yaml").read_text()
    raw = yaml.safe_load(text)
    key_file = tmp_path / "key"
    key_file.write_text("sk")
    raw["api"]["service_key_file"] = str(key_file)
    config = parse_config(raw, environ={})
    assert config.groups == ("engineering", "research")
    # Every key the parser knows appears in the example, commented out or not.
    for key in (
        "api.url",
        "api.service_key_file",
        "api.timeout",
        "api.max_response_size",
        "api.retries",
        "api.retry_backoff",
        "poll.interval",
        "poll.max_staleness",
        "poll.concurrency",
        "groups",
        "active_days_windows",
        "labels.user",
        "labels.hash_salt_file",
        "per_user",
        "idle_thresholds",
    ):
        leaf = key.rsplit(".", 1)[-1]
        assert f"{leaf}:" in text, key
    with pytest.raises(ConfigError) as caught:
        parse_config({**raw, "api": {**raw["api"], "bogus": 1}}, environ={})
    assert caught.value.problems == [
        "api.bogus: unknown key (expected one of: max_response_size, retries, retry_backoff,"
        " service_key_file, timeout, url)"
    ]
    assert _keys(raw) >= {"api.url", "poll.interval", "labels.user"}
