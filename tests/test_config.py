"""The config contract: defaults, durations, and every problem reported at once by key path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.collector import poll_requests
from exporter.config import (
    CONFIG_KEYS,
    WEB_CONFIG_UNSUPPORTED,
    Config,
    ConfigError,
    Secret,
    WebConfig,
    format_duration,
    load_config,
    load_web_config,
    parse_config,
    parse_duration,
    parse_web_config,
    to_yaml,
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


def test_full_config_is_read(tmp_path: Path) -> None:
    config = a_full_config(tmp_path)
    assert config.api.url == "https://eu.windsurf.example/base"
    assert config.api.service_key.reveal() == "sk-file"
    assert (config.api.timeout, config.api.retries, config.api.retry_backoff) == (90, 0, 0.25)
    assert config.api.max_response_bytes == 1000 * 1000
    assert (config.poll.interval, config.poll.max_staleness, config.poll.concurrency) == (
        7 * 86400,
        36 * 3600,
        2,
    )
    assert config.groups == ("eng", "it's: odd")
    assert [(w.label, w.seconds) for w in config.windows] == [("7d", 604800), ("90d", 7776000)]
    assert (config.labels.user, config.labels.hash_salt.reveal()) == ("hash", "pepper")
    assert config.per_user is False
    assert [w.label for w in config.idle_thresholds] == ["14d"]


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
    (warning,) = config.warnings(poll_requests(config))
    # Two groups' memberships and one team request for the one window, and CascadeAnalytics
    # (on by default) for the two groups and the team.
    assert warning.startswith("poll.interval: 1s makes 6 request(s) every 1s")
    assert "rate limit" in warning


def test_a_normal_interval_has_no_warning() -> None:
    config = parse_config({"poll": {"interval": "15m"}}, environ=KEY_ENV)
    assert config.warnings(poll_requests(config)) == []


def test_groups_absent_or_empty_mean_the_whole_team() -> None:
    assert parse_config({"groups": []}, environ=KEY_ENV).groups == ("",)
    assert parse_config({"groups": None}, environ=KEY_ENV).groups == ("",)


def test_example_config_is_valid_and_shows_every_key_the_parser_knows(tmp_path: Path) -> None:
    text = (ROOT / "config.example.yaml").read_text()
    config = parse_config(yaml.safe_load(text), environ=KEY_ENV)
    assert config.groups == ("engineering", "research")
    # Every key the parser knows appears in the example, commented out or not.
    for section, keys in CONFIG_KEYS.items():
        for key in keys:
            assert re.search(rf"^ *#? *{key}:", text, re.MULTILINE), f"{section}.{key}".strip(".")
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": {"bogus": 1}}, environ=KEY_ENV)
    assert caught.value.problems == [
        f"api.bogus: unknown key (expected one of: {', '.join(sorted(CONFIG_KEYS['api']))})"
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(902.03, "15m2s"), (0.923, "923ms"), (0.9996, "1s"), (0, "0s"), (86400 + 61.4, "1d1m1s")],
)
def test_durations_in_messages_are_rounded_to_what_a_person_reads(
    seconds: float, text: str
) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "url",
    [
        "https://server.codeium.com/api/v1/UserPageAnalytics",
        "https://server.codeium.com/api/v1",
        "https://proxy.example/windsurf/api/v1/",
    ],
)
def test_a_url_that_already_holds_the_api_path_is_refused_saying_so(url: str) -> None:
    (problem,) = problems({"api": {"url": url}})
    assert problem.startswith(f"api.url: {url!r} already ends in the API path '/api/v1")
    assert "give the base URL only" in problem


def test_a_base_path_before_the_api_path_is_kept() -> None:
    config = parse_config({"api": {"url": "https://proxy.example/windsurf/"}}, environ=KEY_ENV)
    assert config.api.url == "https://proxy.example/windsurf"


@pytest.mark.parametrize(
    "url", ["https://alice:hunter2@server.codeium.com", "https://hunter2@server.codeium.com"]
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str) -> None:
    (problem,) = problems({"api": {"url": url}})
    assert problem.startswith("api.url: must not hold credentials")
    assert "hunter2" not in problem


def test_an_empty_key_file_is_reported_together_with_other_problems(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("\n")
    found = problems({"api": {"service_key_file": str(key), "timeout": "soon"}}, environ={})
    assert [p.split(":")[0] for p in found] == ["api.service_key_file", "api.timeout"]
    assert found[0] == f"api.service_key_file: {str(key)!r} is empty"


def test_placeholder_key_and_salt_are_refused(tmp_path: Path) -> None:
    key, salt = tmp_path / "service-key", tmp_path / "hash-salt"
    key.write_text("REPLACE-with-a-service-key-with-Teams-Read-only-permission")
    salt.write_text("REPLACE-with-a-long-random-string\n")
    found = problems(
        {
            "api": {"service_key_file": str(key)},
            "labels": {"user": "hash", "hash_salt_file": str(salt)},
        }
    )
    assert found == [
        f"api.service_key_file: {str(key)!r} holds a REPLACE-... placeholder;"
        " put the real value there",
        f"labels.hash_salt_file: {str(salt)!r} holds a REPLACE-... placeholder;"
        " put the real value there",
    ]
    assert problems({}, environ={"WINDSURF_SERVICE_KEY": "REPLACE-me"}) == [
        "api.service_key_file: $WINDSURF_SERVICE_KEY holds a REPLACE-... placeholder;"
        " put the real value there"
    ]


def a_full_config(tmp_path: Path) -> Config:
    """A config that sets every key away from its default, with key and salt files."""
    key, salt = tmp_path / "service-key", tmp_path / "hash-salt"
    key.write_text("sk-file\n")
    salt.write_text("pepper\n")
    return parse_config(
        {
            "api": {
                "url": "https://eu.windsurf.example/base/",
                "service_key_file": str(key),
                "timeout": "1m30s",
                "max_response_size": "1000KB",
                "retries": 0,
                "retry_backoff": "250ms",
            },
            "poll": {"interval": "168h", "max_staleness": "1d12h", "concurrency": 2},
            "groups": ["eng", "it's: odd"],
            "active_days_windows": ["1w", "90d"],
            "labels": {"user": "hash", "hash_salt_file": str(salt)},
            "per_user": False,
            "idle_thresholds": ["14d"],
        },
        environ={},
    )


@pytest.mark.parametrize("one_line", [False, True])
def test_the_effective_config_pasted_back_is_the_same_config(
    tmp_path: Path, one_line: bool
) -> None:
    config = a_full_config(tmp_path)
    text = to_yaml(config.redacted(), one_line=one_line)
    assert (len(text.splitlines()) == 1) is one_line
    assert "max_response_size: 1MB" in text
    assert "sk-file" not in text
    assert "pepper" not in text
    assert parse_config(yaml.safe_load(text), environ={}) == config


def test_the_effective_config_says_where_a_key_without_a_file_comes_from() -> None:
    config = parse_config({}, environ=KEY_ENV)
    for one_line in (False, True):
        text = to_yaml(config.redacted(), one_line=one_line)
        assert "# api.service_key_file: <unset: from $WINDSURF_SERVICE_KEY>" in text
        assert "sk-from-env" not in text
        assert parse_config(yaml.safe_load(text), environ=KEY_ENV) == config


def web_problems(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_web_config(raw)
    return caught.value.problems


def test_web_config_wrong_types_are_all_reported_by_path_not_crashed() -> None:
    found = web_problems(
        {
            "basic_auth_users": ["a"],
            "http_server_config": [1],
            "tls_server_config": {"cert_file": 5, "key_file": "/k", "min_version": ["TLS12"]},
            "colour": "red",
        }
    )
    assert found == [
        "colour: unknown key (expected one of: basic_auth_users, http_server_config,"
        " tls_server_config)",
        "tls_server_config.cert_file: 5 must be a file path",
        "tls_server_config.min_version: ['TLS12'] must be one of: TLS10, TLS11, TLS12, TLS13",
        "basic_auth_users: must be a mapping of user name to bcrypt hash",
        "http_server_config: must be a mapping of headers, http2",
    ]


@pytest.mark.parametrize(
    "key", ["cipher_suites", "curve_preferences", "prefer_server_cipher_suites"]
)
def test_web_config_keys_not_implemented_are_refused_not_ignored(key: str) -> None:
    problem = web_problems({"tls_server_config": {key: "x", "cert_file": "/c"}})[0]
    assert problem.startswith(f"tls_server_config.{key}: not implemented by windsurf-exporter")
    assert key in WEB_CONFIG_UNSUPPORTED


def test_web_config_users_headers_and_http2_are_checked() -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    found = web_problems(
        {
            "basic_auth_users": {"ok": hashed, "bad": "plain", "a:b": hashed, 7: hashed},
            "http_server_config": {
                "headers": {"X-Frame-Options": "DENY", "Bad Name": "x", "X-Inject": "a\r\nb"},
                "http2": True,
            },
        }
    )
    assert [p.split(": ")[0] for p in found] == [
        "basic_auth_users.bad",
        "basic_auth_users.a:b",
        "basic_auth_users.7",
        "http_server_config.headers.Bad Name",
        "http_server_config.headers.X-Inject",
        "http_server_config.http2",
    ]
    web = parse_web_config(
        {"basic_auth_users": {"ok": hashed}, "http_server_config": {"headers": {"X-A": "1"}}}
    )
    assert (dict(web.users), dict(web.headers), web.tls) == (
        {"ok": hashed.encode()},
        {"X-A": "1"},
        None,
    )


def test_web_config_tls_needs_both_files_and_loadable_ones(tmp_path: Path) -> None:
    assert web_problems(
        {"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}}
    ) == [
        "tls_server_config.cert_file: required to serve TLS",
        "tls_server_config.key_file: required to serve TLS",
        "tls_server_config.client_ca_file: required by client_auth_type RequireAndVerifyClientCert",
    ]
    (problem,) = web_problems(
        {"tls_server_config": {"cert_file": str(tmp_path / "c"), "key_file": str(tmp_path / "k")}}
    )
    assert problem.startswith("tls_server_config.cert_file: cannot load with key_file:")


def test_web_config_yaml_errors_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  a: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    (problem,) = caught.value.problems
    assert re.fullmatch(r"line \d+, column \d+: .+", problem)


def test_no_web_config_means_plain_http_without_auth() -> None:
    assert load_web_config(None) == WebConfig()
