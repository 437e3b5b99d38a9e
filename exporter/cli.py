"""Flags, logging, wiring, signals and exit codes: the only module that knows them all."""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.api import Clocks
from exporter.collector import Collector, ReloadCollector, ReloadStatus, poll_requests
from exporter.config import (
    COLLECTOR_DEFAULTS,
    CollectorConfig,
    Config,
    ConfigError,
    Secret,
    WebConfig,
    Window,
    load_config,
    load_web_config,
    to_yaml,
)
from exporter.poller import Poller, Published, log_published
from exporter.web import App, Server

if TYPE_CHECKING:  # the fake API is imported only when --demo runs it
    from exporter.demo import FakeWindsurf

DEFAULT_PORT = 9929
DEFAULT_CONFIG = "config.yaml"
EXIT_FAILURE = 1
EXIT_CONFIG = 2
log = logging.getLogger("exporter")


def _glibc(function: str) -> Any:
    """One of glibc's malloc tuning functions; None under another C library (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(None), function)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
# mallopt's parameters (glibc malloc.h), each with the value it gets unless the environment
# variable glibc reads for it is set: two malloc arenas, not glibc's eight per core, since each
# thread that polls, renders, compresses or answers a scrape would keep the memory it freed in
# an arena of its own (bench/run.py at 20,000 users, team poll and Cascade on: 156 -> 100 MB
# resident after the first poll); and blocks of 1 MiB or more mapped apart, so they go back to
# the system when freed: glibc otherwise raises that threshold to the largest block freed (up
# to 32 MiB), after which a reply's JSON text and lists come from the heap, where a few blocks
# that live on keep their pages resident (the same run: 84 -> 70 MB).
_MALLOC_SETTINGS = (("MALLOC_ARENA_MAX", -8, 2), ("MALLOC_MMAP_THRESHOLD_", -3, 1 << 20))


def _tune_malloc() -> None:
    """glibc's malloc set for a process whose threads come and go and whose polls allocate
    and free a reply's worth at a time (see _MALLOC_SETTINGS); a setting in the environment
    wins."""
    if _MALLOPT is None:
        return
    for variable, parameter, value in _MALLOC_SETTINGS:
        if variable not in os.environ:
            _MALLOPT(parameter, value)


# Python's defaults (700, 10, 10) walk every object the exporter holds again and again while
# a poll builds the next hundreds of thousands (bench/run.py, 50,000 users: ~0.1 s of the
# start-up's polls): young objects are collected every 50,000 allocations, the whole heap
# more rarely. The exporter's data holds no reference cycles that would wait for them.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def _give_back_freed_memory() -> None:
    """Return the memory a poll or a scrape freed (JSON, a render's transients, a body) to the
    system: glibc keeps freed heap pages mapped, one heap per thread, so resident memory would
    stay at the peak of each poll and of each thread that answered a scrape."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="windsurf-exporter",
        description="Prometheus exporter for Windsurf (Codeium) seat usage and prompt credits.",
        epilog="windsurf-exporter whois WHO [--config.file PATH]: the email and name behind a"
        " user label (a hash mode pseudonym), or an email's label, asked of the API once.",
        allow_abbrev=False,  # `--config` must not pass for --config.file or --config.check
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default=None,
        metavar="PATH",
        help=f"YAML config file (default {DEFAULT_CONFIG}; optional with --demo)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config, print the result and exit 0 (valid) or 1 (invalid)",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help=f"address to serve on (default :{DEFAULT_PORT})",
    )
    add(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default /metrics)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="exporter-toolkit web config: TLS and basic auth; re-read on reload",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="allow POST /-/reload (off by default, as in Prometheus; SIGHUP always reloads)",
    )
    add(
        "--web.max-connections",
        dest="max_connections",
        type=_positive,
        default=64,
        metavar="N",
        help="clients connected at once; more wait to be accepted (default 64)",
    )
    add(
        "--web.max-requests",
        dest="max_requests",
        type=_natural,
        default=8,
        metavar="N",
        help="/metrics renders in memory at once (scrapes arriving during a render share it);"
        " a scrape that would need one more gets 503; 0 for no limit (default 8)",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="minimum level logged (default info)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log line format (default logfmt)",
    )
    add(
        "--demo",
        action="store_true",
        help="serve a built-in fake Windsurf API with a synthetic team; no key needed",
    )
    add("--version", action="version", version=f"windsurf-exporter {__version__}")
    return parser


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_listen_address(value: str) -> tuple[str, int]:
    """`host:port`, `:port` (all interfaces) or `[v6]:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address: {value!r} must look like host:port or :port")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class Formatter(logging.Formatter):
    """logfmt or JSON lines, with every known secret replaced however it got into the text."""

    def __init__(self, style: str, secrets: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self._json = style == "json"
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": {"WARNING": "warn"}.get(record.levelname, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self._json:
            line = json.dumps(fields, default=str, ensure_ascii=False)
        else:
            line = " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        for secret in self._secrets():
            line = line.replace(secret, "<redacted>")
        return line


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def setup_logging(
    level: str, style: str, secrets: Callable[[], Sequence[str]], stream: IO[str] | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(Formatter(style, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def demo_config(url: str, base: Config | None = None) -> Config:
    """The config --demo runs: the given one (or a showcase) pointed at the fake API."""
    from exporter.demo import DEMO_GROUPS, DEMO_SERVICE_KEY  # noqa: PLC0415 (only for --demo)

    if base is None:
        base = Config(
            groups=DEMO_GROUPS,
            windows=(Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)),
            # Every collector, the credit balance included: the fake grants "Billing Read".
            collectors=tuple(CollectorConfig(name, True) for name in COLLECTOR_DEFAULTS),
        )
        base = replace(base, poll=replace(base.poll, interval=60.0))
    api = replace(base.api, url=url, service_key=Secret(DEMO_SERVICE_KEY), service_key_file=None)
    return replace(base, api=api)


def _announce(message: str, config: Config, **fields: Any) -> None:
    """Log a config coming into force: its warnings, then one line with it, secrets redacted."""
    for warning in config.warnings(poll_requests(config)):
        log.warning(warning)
    log.info(message, extra={**fields, "config": to_yaml(config.redacted(), one_line=True)})


def secrets_of(config: Config) -> list[str]:
    """What the log formatter must redact: the service key and the hash salt (a value under
    4 characters is left out: redacting it would mangle ordinary text)."""
    return [
        s
        for s in (config.api.service_key.reveal(), config.labels.hash_salt.reveal())
        if len(s) >= 4
    ]


class Exporter:
    """The running exporter: config, fake API (in demo mode), poller and web server."""

    def __init__(
        self,
        args: argparse.Namespace,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.args = args
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self._reload_lock = threading.Lock()
        self._preparing = threading.Lock()
        # Ready once every target's first poll is published and rendered for scrapes.
        self._rendered = threading.Event()
        self.fake: FakeWindsurf | None = None
        if args.demo:
            from exporter.demo import FakeWindsurf  # noqa: PLC0415 (only for --demo)

            self.fake = FakeWindsurf(clock=clock).start()
        try:
            self.config = self.load()
            web = load_web_config(args.web_config_file)
        except BaseException:
            self._stop_fake()
            raise
        self.reload_status = ReloadStatus(successful=True, last_success=clock())
        registry = CollectorRegistry()
        for make in (ProcessCollector, PlatformCollector, GCCollector):
            make(registry=registry)
        registry.register(ReloadCollector(lambda: self.reload_status))
        self.poller = Poller(self.config, clocks=Clocks(wall=clock), on_published=self._published)
        self.app = App(
            collector=Collector(registry),
            snapshot=lambda: self.poller.snapshot,
            clock=clock,
            ready=self._rendered,
            reload=self.reload,
            config_summary=self.summary,
            telemetry_path=args.telemetry_path,
            web=web,
            lifecycle=args.enable_lifecycle,
            max_connections=args.max_connections,
            max_requests=args.max_requests,
            scraped=_give_back_freed_memory,
        )
        self.server: Server | None = None

    def _published(self, published: Published) -> None:
        """Log the poll, then render its Snapshot in the poll's thread, not the next scrape's."""
        log_published(published)
        # Polls publishing at once: the Snapshot is read under the lock, so the last one
        # prepared is the newest, and the next poll's render reuses this one's pieces.
        with self._preparing:
            # A render makes millions of small objects that live until the next one: the
            # cyclic GC would walk them again and again (a quarter of the render's time).
            collecting = gc.isenabled()
            gc.disable()
            try:
                self.app.collector.prepare(self.poller.snapshot, self.clock())
            except Exception:  # a scrape renders it again, and says so
                log.exception("rendering the new data failed")
            finally:
                if collecting:
                    gc.enable()
            _give_back_freed_memory()
            if self.poller.ready.is_set():
                self._rendered.set()

    def summary(self) -> dict[str, Any]:
        return self.config.redacted()

    def secrets(self) -> list[str]:
        return secrets_of(self.config)

    def load(self) -> Config:
        path = self.args.config_file
        if self.fake is not None:
            base = load_config(path, self.environ, require_key=False) if path else None
            return demo_config(self.fake.url, base)
        return load_config(path or DEFAULT_CONFIG, self.environ)

    def start(self) -> None:
        _tune_malloc()  # before the threads that would each take an arena
        _tune_gc()
        host, port = parse_listen_address(self.args.listen_address)
        self.server = Server((host, port), self.app)
        threading.Thread(
            target=self.server.serve_forever, args=(0.1,), name="web", daemon=True
        ).start()  # a short poll interval keeps shutdown quick
        _announce(
            "starting windsurf-exporter",
            self.config,
            version=__version__,
            listen=self.server.url,
            telemetry_path=self.args.telemetry_path,
            demo=self.fake is not None,
        )
        self.poller.start()

    def reload(self) -> tuple[bool, str]:
        """Re-read the config and the web config; if either is bad, it is logged and both
        running ones are kept."""
        with self._reload_lock:
            try:
                config = self.load()
                web = load_web_config(self.args.web_config_file)
            except ConfigError as err:
                log.error(
                    "config reload failed, keeping the running config: %s",
                    "; ".join(err.problems),
                    extra={"file": err.source},
                )
                self.reload_status = replace(self.reload_status, successful=False)
                return False, f"reload failed, running config kept:\n{err}"
            self.config = config
            self.reload_status = ReloadStatus(successful=True, last_success=self.clock())
            self.app.web = web
            self.poller.reconfigure(config)
            _announce("config reloaded", config)
            return True, "config reloaded"

    def stop(self) -> None:
        self.poller.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.drain(1.0)
            self.server.server_close()
        self._stop_fake()

    def _stop_fake(self) -> None:
        if self.fake is not None:
            self.fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["whois"]:
        return _whois(argv[1:])
    args = build_parser().parse_args(argv)
    holder: dict[str, Exporter] = {}
    setup_logging(
        args.log_level,
        args.log_format,
        lambda: holder["exporter"].secrets() if "exporter" in holder else [],
    )
    if args.config_check:
        return _check(args)
    try:
        parse_listen_address(args.listen_address)
        exporter = Exporter(args)
    except (ConfigError, ValueError) as err:
        print(f"windsurf-exporter: {err}", file=sys.stderr)
        return EXIT_CONFIG
    holder["exporter"] = exporter
    return _serve(exporter, args.listen_address)


_STOP = frozenset({signal.SIGTERM, signal.SIGINT})


def _serve(exporter: Exporter, listen: str) -> int:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP.

    The kernel may hand a signal to any thread, and Python runs its handler only when the main
    thread next runs: one waiting on a lock slept through SIGTERM now and then, until killed.
    So the main thread waits on a wakeup fd, to which each signal writes its number, whichever
    thread took it; the handlers themselves do nothing.
    """
    waker, woken = socket.socketpair()
    with waker, woken:
        waker.setblocking(False)
        previous = signal.set_wakeup_fd(waker.fileno(), warn_on_full_buffer=False)
        # Before start(): a signal that arrives right after the startup line must not kill us.
        for signum in _STOP | {signal.SIGHUP}:
            signal.signal(signum, lambda signum, frame: None)
        try:
            try:
                exporter.start()
            except OSError as err:
                log.error("cannot listen on %s: %s", listen, err.strerror)
                exporter.stop()
                return EXIT_FAILURE
            while not _STOP.intersection(received := set(woken.recv(64))):
                if signal.SIGHUP in received:
                    exporter.reload()
        finally:
            signal.set_wakeup_fd(previous)
    log.info("shutting down")
    exporter.stop()
    return 0


def _whois(argv: Sequence[str]) -> int:
    """`whois WHO`: the email and name behind a `user` label, or an email's label; 1 if nobody
    in the team matches."""
    from exporter.api import ApiError, Client  # noqa: PLC0415 (only for whois)
    from exporter.whois import whois  # noqa: PLC0415 (only for whois)

    parser = argparse.ArgumentParser(
        prog="windsurf-exporter whois",
        description="Ask the Windsurf API once who holds a `user` label (a hash mode pseudonym"
        " or a name), or which label an email has; run it where the exporter runs, with its"
        " config and key.",
        allow_abbrev=False,
    )
    parser.add_argument("who", help="a user label from an alert or a series, or an email")
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"the exporter's YAML config file (default {DEFAULT_CONFIG})",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config_file)
    except ConfigError as err:
        print(f"windsurf-exporter whois: {err}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = secrets_of(config)
    setup_logging("warn", "logfmt", lambda: secrets)
    client = Client(config.api)
    try:
        found = whois(config, args.who, client)
    except ApiError as err:
        print(f"windsurf-exporter whois: the Windsurf API failed: {err}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        client.close()
    if found is None:
        print(f"no such person: {args.who}", file=sys.stderr)
        return EXIT_FAILURE
    print(found)
    return 0


def _check(args: argparse.Namespace) -> int:
    """--config.check: validate the config and the web config, each reported, both at once."""
    ok = True
    try:
        print(f"OK: {_check_config(args)}")
    except ConfigError as err:
        print(f"FAILED: {err}")
        ok = False
    if args.web_config_file:
        try:
            web = load_web_config(args.web_config_file)
            print(f"OK: {args.web_config_file} is valid ({_describe_web(web)})")
        except ConfigError as err:
            print(f"FAILED: {err}")
            ok = False
    return 0 if ok else EXIT_FAILURE


def _check_config(args: argparse.Namespace) -> str:
    """Validate the config the flags name, print its warnings, and say what was found."""
    path = args.config_file or (None if args.demo else DEFAULT_CONFIG)
    if path is None:
        config = demo_config("http://127.0.0.1")
        found = "no config file, --demo runs its built-in config"
    else:
        config = load_config(path, require_key=not args.demo)
        found = f"{path} is valid"
    for warning in config.warnings(poll_requests(config)):
        print(f"WARNING: {warning}")
    return f"{found} ({len(config.groups)} group(s), {len(config.windows)} window(s))"


def _describe_web(web: WebConfig) -> str:
    tls = "TLS" if web.tls else "plain HTTP"
    return f"{tls}, {len(web.users)} basic auth user(s)"
