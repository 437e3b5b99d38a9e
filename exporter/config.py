"""YAML -> a frozen, typed Config; every problem is reported at once, each by its key path."""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar
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
    """Seconds -> a wait as a person reads it: whole seconds from a second up (`15m2s`, not
    `15m2s30ms`), milliseconds below. Use `_duration_text` where the value must survive."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    return _duration_text(round(seconds))


def _duration_text(seconds: float) -> str:
    """Seconds -> the exact Prometheus-style duration, in days at most, so `720h` and `30d` both
    label as `30d` and `7d` stays `7d` (not `1w` as Prometheus would print it)."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    parts = []
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


def _size_text(size: int) -> str:
    """Bytes -> the largest unit `api.max_response_size` accepts that states it exactly."""
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "KB"):
        count, rest = divmod(size, _SIZE_UNITS[unit])
        if count and not rest:
            return f"{count}{unit}"
    return f"{size}B"


@dataclass(frozen=True)
class ApiConfig:
    url: str = DEFAULT_URL
    service_key: Secret = field(default_factory=lambda: Secret(""))
    service_key_file: str | None = None
    timeout: float = 30.0
    max_response_bytes: int = 64 * 1024**2
    retries: int = 3
    retry_backoff: float = 1.0
    # Requests per minute the key may send, all targets and sources together; None: no limit.
    max_requests_per_minute: int | None = None


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
class Limits:
    """Bounds on what is built from one reply, whatever it holds (`max_response_size` bounds
    only its bytes): what goes over them is cut, counted and logged."""

    max_rows: int = 100_000
    max_label_length: int = 256
    max_label_values: int = 20


@dataclass(frozen=True)
class CollectorConfig:
    """One upstream source switched on or off (`collectors.<name>`), with its own poll
    interval (None: `poll.interval`)."""

    name: str
    enabled: bool
    interval: float | None = None


# The collectors a config may name, each with whether it is on by default: CascadeAnalytics
# needs only "Teams Read-only" like UserPageAnalytics; the credit balance needs "Billing Read".
COLLECTOR_DEFAULTS: Mapping[str, bool] = MappingProxyType(
    {"user_page": True, "cascade": True, "credits": False}
)
DEFAULT_COLLECTORS = tuple(CollectorConfig(n, on) for n, on in COLLECTOR_DEFAULTS.items())


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
    limits: Limits = field(default_factory=Limits)
    # Poll the whole team too: exact team numbers, people in no configured group.
    team: bool = True
    collectors: tuple[CollectorConfig, ...] = DEFAULT_COLLECTORS

    def collector(self, name: str) -> CollectorConfig:
        """The settings of collector `name` (one of COLLECTOR_DEFAULTS)."""
        return next(c for c in self.collectors if c.name == name)

    def interval(self, collector: str) -> float:
        """How often the collector's targets are polled."""
        own = self.collector(collector).interval
        return self.poll.interval if own is None else own

    def warnings(self, requests_per_poll: int) -> list[str]:
        """Legal settings an operator should still hear about; `requests_per_poll` is what the
        sources plan for one poll of every target (config cannot know the sources)."""
        found = []
        if self.poll.interval < RATE_LIMIT_WARN_INTERVAL:
            found.append(
                f"poll.interval: {format_duration(self.poll.interval)} makes {requests_per_poll}"
                " request(s)"
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
        """The config with the keys a user writes, safe to show and to paste back: the key and
        the salt appear only as the files they come from."""
        api: dict[str, Any] = {
            "url": self.api.url,
            "service_key_file": self.api.service_key_file,
            "timeout": _duration_text(self.api.timeout),
            "max_response_size": _size_text(self.api.max_response_bytes),
            "retries": self.api.retries,
            "retry_backoff": _duration_text(self.api.retry_backoff),
            "max_requests_per_minute": self.api.max_requests_per_minute,
        }
        labels = {"user": self.labels.user, "hash_salt_file": self.labels.hash_salt_file}
        return {
            "api": {k: v for k, v in api.items() if v is not None},
            "poll": {
                "interval": _duration_text(self.poll.interval),
                "max_staleness": _duration_text(self.poll.max_staleness),
                "concurrency": self.poll.concurrency,
            },
            "groups": [] if self.groups == ("",) else list(self.groups),
            "active_days_windows": [w.label for w in self.windows],
            "labels": {k: v for k, v in labels.items() if v is not None},
            "per_user": self.per_user,
            "idle_thresholds": [w.label for w in self.idle_thresholds],
            "limits": {
                "max_rows": self.limits.max_rows,
                "max_label_length": self.limits.max_label_length,
                "max_label_values": self.limits.max_label_values,
            },
            "team": self.team,
            "collectors": {
                c.name: c.enabled
                if c.interval is None
                else {"enabled": c.enabled, "interval": _duration_text(c.interval)}
                for c in self.collectors
            },
        }


def to_yaml(data: Mapping[str, Any], one_line: bool = False) -> str:
    """A config (`Config.redacted()`) as YAML that parses back: blocks for a page, one
    flow-style line for a log; a comment says where a key without a file comes from."""
    note = ""
    if "service_key_file" not in data.get("api", {}):
        note = f"# api.service_key_file: <unset: from ${SERVICE_KEY_ENV}>"
    if one_line:
        text = yaml.safe_dump(
            dict(data), default_flow_style=True, sort_keys=False, width=float("inf")
        ).strip()
        return f"{text} {note}".rstrip()
    return (note + "\n" if note else "") + yaml.safe_dump(dict(data), sort_keys=False)


# Every key each section accepts, in the order the example config shows them; "" is the top
# level. The parser and the tests read these, so a new key is added in one place.
CONFIG_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "": (
            "api",
            "poll",
            "groups",
            "team",
            "active_days_windows",
            "labels",
            "per_user",
            "idle_thresholds",
            "limits",
            "collectors",
        ),
        "api": (
            "url",
            "service_key_file",
            "timeout",
            "max_response_size",
            "retries",
            "retry_backoff",
            "max_requests_per_minute",
        ),
        "poll": ("interval", "max_staleness", "concurrency"),
        "labels": ("user", "hash_salt_file"),
        "limits": ("max_rows", "max_label_length", "max_label_values"),
        "collectors": tuple(COLLECTOR_DEFAULTS),
        # The keys of each `collectors.<name>` written as a mapping rather than true/false.
        "collectors.*": ("enabled", "interval"),
    }
)
WEB_CONFIG_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "": ("tls_server_config", "basic_auth_users", "http_server_config"),
        "tls_server_config": (
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "min_version",
            "max_version",
        ),
        "http_server_config": ("headers", "http2"),
    }
)
# exporter-toolkit keys this exporter does not implement: refused, never silently ignored.
_NOT_IMPLEMENTED = "not implemented by windsurf-exporter; remove it"
WEB_CONFIG_UNSUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "cipher_suites": f"{_NOT_IMPLEMENTED} (Python's default ciphers apply)",
        "curve_preferences": f"{_NOT_IMPLEMENTED} (Python's TLS defaults apply)",
        "prefer_server_cipher_suites": f"{_NOT_IMPLEMENTED} (the server's order applies)",
        "client_allowed_sans": _NOT_IMPLEMENTED,
        "cert": f"{_NOT_IMPLEMENTED}; give the certificate as cert_file",
        "key": f"{_NOT_IMPLEMENTED}; give the key as key_file",
        "client_ca": f"{_NOT_IMPLEMENTED}; give the CAs as client_ca_file",
    }
)
USER_LABEL_MODES: tuple[UserLabelMode, ...] = ("email", "name", "hash")
_PLACEHOLDER = re.compile(r"replace\b", re.IGNORECASE)
_T = TypeVar("_T")


class _Reader:
    """Walks the raw YAML, converting values and collecting every problem with its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def done(self, source: str) -> None:
        """Raise every problem found so far, at once."""
        if self.problems:
            raise ConfigError(source, self.problems)

    def section(
        self,
        raw: Mapping[str, Any],
        key: str,
        allowed: Sequence[str],
        unsupported: Mapping[str, str] | None = None,
    ) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of {', '.join(sorted(allowed))}")
            return {}
        self.unknown(value, allowed, f"{key}.", unsupported)
        return value

    def unknown(
        self,
        raw: Mapping[Any, Any],
        allowed: Sequence[str],
        prefix: str = "",
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        for key in raw:
            if key in allowed:
                continue
            if unsupported and key in unsupported:
                self.fail(f"{prefix}{key}", unsupported[key])
            else:
                expected = ", ".join(sorted(allowed))
                self.fail(f"{prefix}{key}", f"unknown key (expected one of: {expected})")

    def typed(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        default: _T,
        accept: Callable[[Any], bool],
        wanted: str,
    ) -> _T:
        """The value at `key`, `default` when absent or when `accept` refuses it (reported)."""
        value = raw.get(key)
        if value is None:
            return default
        if not accept(value):
            self.fail(path, f"{value!r} {wanted}")
            return default
        result: _T = value
        return result

    def duration(
        self, raw: Mapping[str, Any], key: str, path: str, default: float, minimum: float = 0.0
    ) -> float:
        text: str | None = self.typed(
            raw,
            key,
            path,
            None,
            lambda v: isinstance(v, str),
            "is not a duration; write it with a unit, e.g. 30s, 5m, 1h",
        )
        if text is None:
            return default
        try:
            seconds = parse_duration(text)
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
        return self.typed(
            raw,
            key,
            path,
            default,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"must be a whole number of at least {minimum}",
        )

    def boolean(self, raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        return self.typed(
            raw, key, path, default, lambda v: isinstance(v, bool), "must be true or false"
        )

    def choice(
        self, raw: Mapping[str, Any], key: str, path: str, options: Mapping[str, _T], default: _T
    ) -> _T:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in options:
            self.fail(path, f"{value!r} must be one of: {', '.join(options)}")
            return default
        return options[value]

    def file(self, raw: Mapping[str, Any], key: str, path: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"{value!r} must be a file path")
            return None
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
            label = _duration_text(seconds)
            if label in found:
                self.fail(f"{key}[{index}]", f"{item!r} repeats the window {label}")
            found[label] = Window(label, seconds)
        return tuple(found.values()) or default

    def pairs(
        self, value: Any, path: str, what: str, problem: Callable[[Any, Any], str | None]
    ) -> dict[str, str]:
        """A mapping of text to text, each pair checked by `problem` (None: fine)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of {what}")
            return {}
        found = {}
        for key, item in value.items():
            issue = problem(key, item)
            if issue:
                self.fail(f"{path}.{key}", issue)
            else:
                found[key] = item
        return found

    def secret_file(self, path: str, key_path: str) -> Secret:
        """A secret read from a file: a missing, empty or placeholder file is a problem, because
        a secret that failed to mount must not silently become no secret at all."""
        try:
            secret = Secret(Path(path).read_text(encoding="utf-8").strip())
        except UnicodeDecodeError:
            self.fail(key_path, f"{path!r} is not UTF-8 text")
            return Secret("")
        except OSError as err:
            self.fail(key_path, f"cannot read {path!r}: {err.strerror}")
            return Secret("")
        self.real_secret(secret, key_path, f"{path!r}")
        return secret

    def real_secret(self, secret: Secret, key_path: str, where: str) -> None:
        if not secret.reveal():
            self.fail(key_path, f"{where} is empty")
        elif _PLACEHOLDER.match(secret.reveal()):
            self.fail(
                key_path, f"{where} holds a REPLACE-... placeholder; put the real value there"
            )


def parse_config(
    raw: Any,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    require_key: bool = True,
) -> Config:
    """Validate already-loaded YAML; raises ConfigError naming every bad key path at once."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): must be a mapping with keys such as api, poll"])
    reader = _Reader()
    reader.unknown(raw, CONFIG_KEYS[""])
    api = _api(
        reader,
        reader.section(raw, "api", CONFIG_KEYS["api"]),
        os.environ if environ is None else environ,
        require_key,
    )
    poll_raw = reader.section(raw, "poll", CONFIG_KEYS["poll"])
    poll = PollConfig(
        interval=reader.duration(poll_raw, "interval", "poll.interval", 900.0),
        max_staleness=reader.duration(poll_raw, "max_staleness", "poll.max_staleness", 21600.0),
        concurrency=reader.integer(poll_raw, "concurrency", "poll.concurrency", 4, 1),
    )
    groups = _groups(reader, raw.get("groups"))
    windows = reader.windows(raw, "active_days_windows", Config.windows)
    idle = reader.windows(raw, "idle_thresholds", Config.idle_thresholds)
    labels = _labels(reader, reader.section(raw, "labels", CONFIG_KEYS["labels"]))
    per_user = reader.boolean(raw, "per_user", "per_user", True)
    team = reader.boolean(raw, "team", "team", True)
    limits = _limits(reader, reader.section(raw, "limits", CONFIG_KEYS["limits"]))
    collectors = _collectors(reader, reader.section(raw, "collectors", CONFIG_KEYS["collectors"]))
    reader.done(source)
    return Config(
        api=api,
        poll=poll,
        groups=groups,
        windows=windows,
        labels=labels,
        per_user=per_user,
        idle_thresholds=idle,
        limits=limits,
        team=team,
        collectors=collectors,
    )


def _collectors(reader: _Reader, raw: Mapping[str, Any]) -> tuple[CollectorConfig, ...]:
    """Each collector as `true`/`false` or `{enabled, interval}`; absent ones keep their
    default."""
    found = []
    for name, default in COLLECTOR_DEFAULTS.items():
        path = f"collectors.{name}"
        value = raw.get(name)
        if isinstance(value, dict):
            reader.unknown(value, CONFIG_KEYS["collectors.*"], f"{path}.")
            enabled = reader.boolean(value, "enabled", f"{path}.enabled", True)
            interval = value.get("interval")
            seconds = (
                None
                if interval is None
                else reader.duration(value, "interval", f"{path}.interval", 0.0)
            )
            found.append(CollectorConfig(name, enabled, seconds or None))
        elif value is None or isinstance(value, bool):
            found.append(CollectorConfig(name, default if value is None else value))
        else:
            reader.fail(path, f"{value!r} must be true, false or a mapping of enabled, interval")
            found.append(CollectorConfig(name, default))
    return tuple(found)


def _limits(reader: _Reader, raw: Mapping[str, Any]) -> Limits:
    default = Limits()
    return Limits(
        max_rows=reader.integer(raw, "max_rows", "limits.max_rows", default.max_rows, 1),
        # Room for the `…` and 8 hex digits a cut value ends with.
        max_label_length=reader.integer(
            raw, "max_label_length", "limits.max_label_length", default.max_label_length, 16
        ),
        max_label_values=reader.integer(
            raw, "max_label_values", "limits.max_label_values", default.max_label_values, 1
        ),
    )


def _api(
    reader: _Reader, raw: Mapping[str, Any], environ: Mapping[str, str], require_key: bool
) -> ApiConfig:
    key_file = reader.file(raw, "service_key_file", "api.service_key_file")
    if key_file:
        service_key = reader.secret_file(key_file, "api.service_key_file")
    else:
        service_key = Secret(environ.get(SERVICE_KEY_ENV, "").strip())
        if require_key and not service_key.reveal():
            reader.fail(
                "api.service_key_file",
                f"not set and ${SERVICE_KEY_ENV} is empty; give the key in one of them",
            )
        elif service_key.reveal():
            reader.real_secret(service_key, "api.service_key_file", f"${SERVICE_KEY_ENV}")
    return ApiConfig(
        url=_url(reader, raw.get("url", DEFAULT_URL)),
        service_key=service_key,
        service_key_file=key_file,
        timeout=reader.duration(raw, "timeout", "api.timeout", 30.0),
        max_response_bytes=reader.size(
            raw, "max_response_size", "api.max_response_size", 64 * 1024**2
        ),
        retries=reader.integer(raw, "retries", "api.retries", 3, 0),
        retry_backoff=reader.duration(raw, "retry_backoff", "api.retry_backoff", 1.0),
        max_requests_per_minute=reader.typed(
            raw,
            "max_requests_per_minute",
            "api.max_requests_per_minute",
            None,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "must be a whole number of at least 1 (leave it out for no limit)",
        ),
    )


def _url(reader: _Reader, url: Any) -> str:
    """The base URL the exporter adds `/api/v1/<method>` to; what it cannot use is refused at
    startup, not found out at each poll."""
    problem = _url_problem(url)
    if problem:
        reader.fail("api.url", problem)
        return DEFAULT_URL
    return str(url).rstrip("/")


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+([/?#]\S*)?", url):
        return f"{url!r} must be an http:// or https:// URL"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number < 65536, a bad [v6]
        return f"{url!r} must be an http:// or https:// URL with a valid host and port"
    if "@" in parts.netloc:
        # Never echoed: the URL holds a password. Sent as basic auth, it would also leak.
        return (
            "must not hold credentials (user:password@); the service key goes in"
            f" api.service_key_file or ${SERVICE_KEY_ENV}"
        )
    if port == 0:
        return f"{url!r} has port 0"
    base = f"{parts.scheme}://{parts.netloc}"
    method = re.search(r"/api/v1(/.*)?$", parts.path)
    if method:
        return (
            f"{url!r} already ends in the API path {method.group(0)!r}; give the base URL only"
            f" (e.g. {base + parts.path[: method.start()]!r}): the exporter adds /api/v1/..."
        )
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment; give the base URL only ({base!r})"
    return None


def _labels(reader: _Reader, raw: Mapping[str, Any]) -> LabelConfig:
    mode = reader.choice(
        raw, "user", "labels.user", {m: m for m in USER_LABEL_MODES}, USER_LABEL_MODES[0]
    )
    salt_file = reader.file(raw, "hash_salt_file", "labels.hash_salt_file")
    salt = reader.secret_file(salt_file, "labels.hash_salt_file") if salt_file else Secret("")
    return LabelConfig(user=mode, hash_salt=salt, hash_salt_file=salt_file)


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


@dataclass(frozen=True)
class WebConfig:
    """The exporter-toolkit web config: TLS and basic auth for every endpoint."""

    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")  # the cost is characters 4-5
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HASH_HOWTO = (
    "make one with: python -c 'import bcrypt,getpass;"
    " print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'"
)


def parse_web_config(raw: Any, source: str = "<web config>") -> WebConfig:
    """Validate an already-loaded web config; raises ConfigError naming every bad key path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source, ["(top level): must be a mapping with keys such as tls_server_config"]
        )
    reader = _Reader()
    reader.unknown(raw, WEB_CONFIG_KEYS[""])
    tls = _tls(
        reader,
        reader.section(
            raw, "tls_server_config", WEB_CONFIG_KEYS["tls_server_config"], WEB_CONFIG_UNSUPPORTED
        ),
    )
    users = _users(reader, raw.get("basic_auth_users"))
    http = reader.section(raw, "http_server_config", WEB_CONFIG_KEYS["http_server_config"])
    headers = _headers(reader, http.get("headers"))
    if reader.boolean(http, "http2", "http_server_config.http2", False):
        reader.fail("http_server_config.http2", f"HTTP/2 is {_NOT_IMPLEMENTED} or set it false")
    reader.done(source)
    return WebConfig(tls=tls, users=users, headers=headers)


def _tls(reader: _Reader, raw: Mapping[str, Any]) -> ssl.SSLContext | None:
    if not raw:
        return None
    where = "tls_server_config."
    cert = reader.file(raw, "cert_file", where + "cert_file")
    key = reader.file(raw, "key_file", where + "key_file")
    oldest = reader.choice(raw, "min_version", where + "min_version", _TLS_VERSIONS, None)
    newest = reader.choice(raw, "max_version", where + "max_version", _TLS_VERSIONS, None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = oldest or ssl.TLSVersion.TLSv1_2
    if newest is not None:
        if newest < context.minimum_version:
            reader.fail(where + "max_version", "is older than min_version")
        else:
            context.maximum_version = newest
    for name, value in (("cert_file", cert), ("key_file", key)):
        if value is None and name not in raw:
            reader.fail(where + name, "required to serve TLS")
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            reader.fail(where + "cert_file", f"cannot load with key_file: {err}")
    _client_auth(reader, raw, context)
    return context


def _client_auth(reader: _Reader, raw: Mapping[str, Any], context: ssl.SSLContext) -> None:
    where = "tls_server_config."
    auth = reader.choice(raw, "client_auth_type", where + "client_auth_type", _CLIENT_AUTH, None)
    ca_file = reader.file(raw, "client_ca_file", where + "client_ca_file")
    context.verify_mode = auth or ssl.CERT_NONE
    if ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as err:
            reader.fail(where + "client_ca_file", f"cannot load: {err}")
    elif auth not in (None, ssl.CERT_NONE) and "client_ca_file" not in raw:
        reader.fail(
            where + "client_ca_file", f"required by client_auth_type {raw['client_auth_type']}"
        )


def _users(reader: _Reader, value: Any) -> dict[str, bytes]:
    users = reader.pairs(value, "basic_auth_users", "user name to bcrypt hash", _user_problem)
    return {user: hashed.encode() for user, hashed in users.items()}


def _user_problem(user: Any, hashed: Any) -> str | None:
    if not isinstance(user, str) or not user or ":" in user:
        return "a user name must be text without ':' (quote it in YAML)"
    if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
        return f"must be a bcrypt hash ($2b$...); {_HASH_HOWTO}"
    return None


def _headers(reader: _Reader, value: Any) -> dict[str, str]:
    return reader.pairs(
        value, "http_server_config.headers", "header name to value", _header_problem
    )


def _header_problem(name: Any, text: Any) -> str | None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        return "not a valid header name"
    if not isinstance(text, str) or not text.isprintable():
        return "the value must be text on one line"
    return None


def _read_yaml(path: str) -> Any:
    """A YAML file's content; a file that cannot be read or parsed is a one-line ConfigError,
    with the line and column of a syntax error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeError:
        raise ConfigError(path, ["(file): not UTF-8 text"]) from None
    except OSError as err:
        raise ConfigError(path, [f"(file): cannot read: {err.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(path, [f"{where}: {problem}"]) from None


def load_config(
    path: str, environ: Mapping[str, str] | None = None, require_key: bool = True
) -> Config:
    """Read and validate a config file; every failure is a ConfigError with a one-line cause."""
    return parse_config(_read_yaml(path), source=path, environ=environ, require_key=require_key)


def load_web_config(path: str | None) -> WebConfig:
    """Read `--web.config.file` (none: plain HTTP, no auth), reported like the main config."""
    if not path:
        return WebConfig()
    return parse_web_config(_read_yaml(path), source=path)
