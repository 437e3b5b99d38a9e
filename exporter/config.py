"""YAML -> a frozen, typed Config; every problem is reported at once, each by its key path."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

DEFAULT_URL = "https://server.codeium.com"
SERVICE_KEY_ENV = "WINDSURF_SERVICE_KEY"
# The upstream refreshes its numbers every few hours; polling faster than this only spends quota.
RATE_LIMIT_WARN_INTERVAL = 60.0

UserLabelMode = Literal["email", "name", "hash"]

_DURATION_UNITS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_DURATION_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
# Longer waits make threading raise OverflowError in the poller and the request watchdog.
_DURATION_MAX = threading.TIMEOUT_MAX
_SIZE_RE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


class ConfigError(Exception):
    """A config that cannot run; str() lists every problem, one per line, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  {p}" for p in problems))


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(text: str) -> float:
    """Prometheus-style duration (`1h30m`, `500ms`, `7d`) -> seconds; ValueError when malformed."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{text!r} is not a duration; use a number and a unit: 30s, 5m, 1h, 7d")
    if total > _DURATION_MAX:
        raise ValueError(f"{text!r} is longer than a timer can wait ({_DURATION_MAX:.0f}s)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> a Prometheus-style duration in days at most, so `720h` and `30d` both label
    as `30d` and `7d` stays `7d` (not `1w` as Prometheus would print it)."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    parts = []
    # Days at most: `7d` reads better than `1w`, and windows are usually given in days.
    for unit, size in (
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class ApiConfig:
    url: str = DEFAULT_URL
    service_key: Secret = field(default_factory=lambda: Secret(""))
    service_key_file: str | None = None
    timeout: float = 30.0
    max_response_bytes: int = 64 * 1024**2
    retries: int = 3
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class PollConfig:
    interval: float = 900.0
    max_staleness: float = 6 * 3600.0
    concurrency: int = 4


@dataclass(frozen=True)
class Window:
    """An activeDays window: its label (`30d`) and its length in seconds."""

    label: str
    seconds: float


@dataclass(frozen=True)
class LabelConfig:
    user: UserLabelMode = "email"
    hash_salt: Secret = field(default_factory=lambda: Secret(""))
    hash_salt_file: str | None = None


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    groups: tuple[str, ...] = ("",)
    windows: tuple[Window, ...] = (Window("30d", 30 * 86400.0),)
    labels: LabelConfig = field(default_factory=LabelConfig)
    per_user: bool = True
    idle_thresholds: tuple[Window, ...] = (
        Window("7d", 7 * 86400.0),
        Window("30d", 30 * 86400.0),
    )
    # Poll the whole team too: exact team numbers, people in no configured group.
    team: bool = True

    def warnings(self) -> list[str]:
        """Legal settings an operator should still hear about."""
        found = []
        if self.poll.interval < RATE_LIMIT_WARN_INTERVAL:
            requests = len(self.groups) * len(self.windows)
            found.append(
                f"poll.interval: {format_duration(self.poll.interval)} makes {requests} request(s)"
                f" every {format_duration(self.poll.interval)}; the data changes every few hours"
                " and short intervals may trip the API's rate limit"
            )
        if self.poll.max_staleness < self.poll.interval:
            found.append(
                "poll.max_staleness: shorter than poll.interval, so data is dropped between polls"
            )
        if self.labels.user == "hash" and not self.labels.hash_salt.reveal():
            found.append(
                "labels.user: hash without labels.hash_salt_file; anyone holding a list of"
                " emails can recompute the hashes, so give a secret salt file"
            )
        if self.labels.user == "email" and self.labels.hash_salt_file:
            found.append("labels.hash_salt_file: unused, labels.user is email")
        return found

    def redacted(self) -> dict[str, Any]:
        """The config as an operator would write it, safe to show: no key or salt, only files."""
        return {
            "api": {
                "url": self.api.url,
                "service_key_file": self.api.service_key_file
                or f"<unset: from ${SERVICE_KEY_ENV}>",
                "timeout": format_duration(self.api.timeout),
                "max_response_bytes": self.api.max_response_bytes,
                "retries": self.api.retries,
                "retry_backoff": format_duration(self.api.retry_backoff),
            },
            "poll": {
                "interval": format_duration(self.poll.interval),
                "max_staleness": format_duration(self.poll.max_staleness),
                "concurrency": self.poll.concurrency,
            },
            "groups": list(self.groups),
            "active_days_windows": [w.label for w in self.windows],
            "labels": {"user": self.labels.user, "hash_salt_file": self.labels.hash_salt_file},
            "per_user": self.per_user,
            "idle_thresholds": [w.label for w in self.idle_thresholds],
            "team": self.team,
        }


class _Reader:
    """Walks the raw YAML, converting values and collecting every problem with its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, raw: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of {', '.join(sorted(allowed))}")
            return {}
        self.unknown(value, allowed, f"{key}.")
        return value

    def unknown(self, raw: Mapping[Any, Any], allowed: set[str], prefix: str = "") -> None:
        for key in raw:
            if key not in allowed:
                self.fail(
                    f"{prefix}{key}",
                    f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                )

    def duration(
        self, raw: Mapping[str, Any], key: str, path: str, default: float, minimum: float = 0.0
    ) -> float:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(path, f"{value!r} is not a duration; write it with a unit, e.g. 30s, 5m, 1h")
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            self.fail(path, str(err))
            return default
        if seconds <= minimum:
            self.fail(path, f"must be longer than {format_duration(minimum)}")
            return default
        return seconds

    def integer(
        self, raw: Mapping[str, Any], key: str, path: str, default: int, minimum: int
    ) -> int:
        value = raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"{value!r} must be a whole number of at least {minimum}")
            return default
        return value

    def size(self, raw: Mapping[str, Any], key: str, path: str, default: int) -> int:
        value = raw.get(key)
        if value is None:
            return default
        match = _SIZE_RE.fullmatch(str(value).strip()) if not isinstance(value, bool) else None
        if match is None or int(match.group(1)) == 0:
            self.fail(path, f"{value!r} is not a size; use bytes or a unit, e.g. 64MiB")
            return default
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]

    def windows(
        self, raw: Mapping[str, Any], key: str, default: tuple[Window, ...]
    ) -> tuple[Window, ...]:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not value:
            self.fail(key, "must be a non-empty list of durations, e.g. [7d, 30d]")
            return default
        found: dict[str, Window] = {}
        for index, item in enumerate(value):
            seconds = self.duration({"x": item}, "x", f"{key}[{index}]", 0.0)
            if not seconds:
                continue
            label = format_duration(seconds)
            if label in found:
                self.fail(f"{key}[{index}]", f"{item!r} repeats the window {label}")
            found[label] = Window(label, seconds)
        return tuple(found.values()) or default

    def secret_file(self, path: str, key_path: str) -> Secret:
        try:
            return Secret(Path(path).read_text(encoding="utf-8").strip())
        except UnicodeDecodeError:
            self.fail(key_path, f"{path!r} is not UTF-8 text")
        except OSError as err:
            self.fail(key_path, f"cannot read {path!r}: {err.strerror}")
        return Secret("")


_TOP_KEYS = {
    "api",
    "poll",
    "groups",
    "team",
    "active_days_windows",
    "labels",
    "per_user",
    "idle_thresholds",
}


def parse_config(
    raw: Any,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    require_key: bool = True,
) -> Config:
    """Validate already-loaded YAML; raises ConfigError naming every bad key path at once."""
    environ = os.environ if environ is None else environ
    reader = _Reader()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): must be a mapping with keys such as api, poll"])
    reader.unknown(raw, _TOP_KEYS)

    api_raw = reader.section(
        raw,
        "api",
        {"url", "service_key_file", "timeout", "max_response_size", "retries", "retry_backoff"},
    )
    url = api_raw.get("url", DEFAULT_URL)
    if not _is_http_url(url):
        reader.fail("api.url", f"{url!r} must be an http:// or https:// URL")
        url = DEFAULT_URL
    key_file = api_raw.get("service_key_file")
    service_key = Secret("")
    if key_file is not None and not isinstance(key_file, str):
        reader.fail("api.service_key_file", "must be a file path")
        key_file = None
    if key_file:
        service_key = reader.secret_file(key_file, "api.service_key_file")
        if require_key and not service_key.reveal() and not reader.problems:
            reader.fail("api.service_key_file", f"{key_file!r} is empty")
    else:
        service_key = Secret(environ.get(SERVICE_KEY_ENV, "").strip())
        if require_key and not service_key.reveal():
            reader.fail(
                "api.service_key_file",
                f"not set and ${SERVICE_KEY_ENV} is empty; give the key in one of them",
            )
    api = ApiConfig(
        url=url.rstrip("/"),
        service_key=service_key,
        service_key_file=key_file or None,
        timeout=reader.duration(api_raw, "timeout", "api.timeout", 30.0),
        max_response_bytes=reader.size(
            api_raw, "max_response_size", "api.max_response_size", 64 * 1024**2
        ),
        retries=reader.integer(api_raw, "retries", "api.retries", 3, 0),
        retry_backoff=reader.duration(api_raw, "retry_backoff", "api.retry_backoff", 1.0),
    )

    poll_raw = reader.section(raw, "poll", {"interval", "max_staleness", "concurrency"})
    poll = PollConfig(
        interval=reader.duration(poll_raw, "interval", "poll.interval", 900.0),
        max_staleness=reader.duration(poll_raw, "max_staleness", "poll.max_staleness", 21600.0),
        concurrency=reader.integer(poll_raw, "concurrency", "poll.concurrency", 4, 1),
    )

    groups = _groups(reader, raw.get("groups"))
    windows = reader.windows(raw, "active_days_windows", Config.windows)
    idle = reader.windows(raw, "idle_thresholds", Config.idle_thresholds)

    labels_raw = reader.section(raw, "labels", {"user", "hash_salt_file"})
    mode = labels_raw.get("user", "email")
    if mode not in ("email", "name", "hash"):
        reader.fail("labels.user", f"{mode!r} must be one of: email, name, hash")
        mode = "email"
    salt_file = labels_raw.get("hash_salt_file")
    salt = Secret("")
    if salt_file is not None:
        if isinstance(salt_file, str) and salt_file:
            known = len(reader.problems)
            salt = reader.secret_file(salt_file, "labels.hash_salt_file")
            if not salt.reveal() and len(reader.problems) == known:
                # A secret that failed to mount must not silently turn into no salt at all.
                reader.fail("labels.hash_salt_file", f"{salt_file!r} is empty")
        else:
            reader.fail("labels.hash_salt_file", "must be a file path")
            salt_file = None

    per_user = raw.get("per_user", True)
    if not isinstance(per_user, bool):
        reader.fail("per_user", f"{per_user!r} must be true or false")
        per_user = True
    team = raw.get("team", True)
    if not isinstance(team, bool):
        reader.fail("team", f"{team!r} must be true or false")
        team = True

    if reader.problems:
        raise ConfigError(source, reader.problems)
    return Config(
        api=api,
        poll=poll,
        groups=groups,
        windows=windows,
        labels=LabelConfig(user=mode, hash_salt=salt, hash_salt_file=salt_file),
        per_user=per_user,
        idle_thresholds=idle,
        team=team,
    )


def _is_http_url(url: Any) -> bool:
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        return False
    try:
        return urlsplit(url).port != 0  # ValueError: a port that is no number < 65536, a bad [v6]
    except ValueError:
        return False


def _groups(reader: _Reader, value: Any) -> tuple[str, ...]:
    if value is None or value == []:
        return ("",)
    if not isinstance(value, list):
        reader.fail("groups", "must be a list of group names (or absent for the whole team)")
        return ("",)
    seen: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            reader.fail(f"groups[{index}]", f"{item!r} must be a group name in quotes")
        elif not item.strip():
            reader.fail(
                f"groups[{index}]",
                f"{item!r} is no group name; leave groups out to poll the whole team",
            )
        elif item in seen:
            reader.fail(f"groups[{index}]", f"{item!r} is listed twice")
        else:
            seen.append(item)
    return tuple(seen) or ("",)


def load_config(
    path: str, environ: Mapping[str, str] | None = None, require_key: bool = True
) -> Config:
    """Read and validate a config file; every failure is a ConfigError with a one-line cause."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, ["(file): not UTF-8 text"]) from None
    except OSError as err:
        raise ConfigError(path, [f"(file): cannot read: {err.strerror}"]) from None
    except UnicodeError:
        raise ConfigError(path, ["(file): not UTF-8 text"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(path, [f"{where}: {problem}"]) from None
    return parse_config(raw, source=path, environ=environ, require_key=require_key)
