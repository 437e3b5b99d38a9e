"""HTTP: /metrics, the landing page, health, readiness and reload, behind optional TLS and basic
auth configured in the exporter-toolkit web config format."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import io
import logging
import os
import re
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bcrypt

from exporter import __version__
from exporter.collector import Collector
from exporter.config import WebConfig, format_duration, to_yaml
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.state import Snapshot, SourceState

log = logging.getLogger("exporter.web")


@dataclass
class App:
    """What the HTTP layer needs from the rest of the exporter, injected; `web` is swapped
    whole when a reload reads a new web config."""

    collector: Collector
    snapshot: Callable[[], Snapshot]
    clock: Callable[[], float]
    ready: threading.Event
    reload: Callable[[], tuple[bool, str]]
    config_summary: Callable[[], Mapping[str, Any]]
    telemetry_path: str = "/metrics"
    web: WebConfig = field(default_factory=WebConfig)
    lifecycle: bool = False  # --web.enable-lifecycle: POST /-/reload allowed
    max_connections: int = 64  # --web.max-connections
    max_requests: int = 8  # --web.max-requests: distinct renders in use at once, 0: no limit
    header_timeout: float = 5.0  # from accept (or the request line) to the end of the headers
    idle_timeout: float = 60.0  # a keep-alive connection waiting for its next request
    write_timeout: float = 60.0  # a whole answer, however slowly the client reads
    # Called once a scrape's body is sent and dropped (cli gives its memory back to the system).
    scraped: Callable[[], None] = lambda: None


_BCRYPT_MAX_PASSWORD = 72  # bcrypt ignores (bcrypt 5 refuses) longer passwords


class Authenticator:
    """Checks basic auth against bcrypt hashes, remembering good answers (bcrypt is slow).

    A name that is not a user is checked against a stand-in hash whose cost is drawn from the
    users' costs by a keyed hash of the name: it costs what some user's check costs, always the
    same for the same name, so timing does not tell whether a name exists. `checkpw` is the
    seam a test uses to see which hash was checked."""

    def __init__(
        self,
        users: Mapping[str, bytes],
        checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw,
    ) -> None:
        self._users = users
        self._checkpw = checkpw
        self._key = os.urandom(16)
        self._costs = sorted(h[4:6] for h in users.values())  # one entry per user
        self._stand_ins = {
            cost: bcrypt.hashpw(b"unused", bcrypt.gensalt(rounds=int(cost)))
            for cost in set(self._costs)
        }
        self._good: set[str] = set()
        self._lock = threading.Lock()

    def _stand_in(self, user: str) -> bytes:
        digest = hmac.digest(self._key, user.encode(), "sha256")
        return self._stand_ins[self._costs[int.from_bytes(digest[:8]) % len(self._costs)]]

    def check(self, header: str | None) -> bool:
        if not self._users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        secret = password.encode()
        if len(secret) > _BCRYPT_MAX_PASSWORD:
            return False  # no bcrypt hash can match it; says nothing about the user
        hashed = self._users.get(user) or self._stand_in(user)
        token = hashlib.sha256(b"\0".join([user.encode(), secret, hashed])).hexdigest()
        with self._lock:
            if token in self._good:
                return True
        ok = self._checkpw(secret, hashed) and user in self._users
        if ok:
            with self._lock:
                self._good.add(token)
        return ok


class RateLimitedLog:
    """At most `burst` lines per `period` seconds; the next line allowed says how many were
    dropped, so a flood of bad requests cannot flood the log."""

    def __init__(self, logger: logging.Logger, burst: int = 10, period: float = 10.0) -> None:
        self._log = logger
        self._burst = burst
        self._period = period
        self._window = -period
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def debug(self, message: str, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._window >= self._period:
                self._window, self._count = now, 0
            self._count += 1
            if self._count > self._burst:
                self._dropped += 1
                return
            dropped, self._dropped = self._dropped, 0
        if dropped:
            fields["dropped"] = dropped
        self._log.debug(message, extra=fields)


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    body: bytes | None = None
    users: int = 0  # scrapes waiting for or sending this body


class Scrapes:
    """Renders for /metrics, bounded in memory whatever the number of scrapers. Scrapes that
    arrive while a render of the same format runs wait for it and share its bytes (one body,
    not one per scraper); at most `limit` bodies (0: no limit) are in use at once, each until
    its last scraper has been sent it, so slow readers cannot pile up copies."""

    def __init__(self, render: Callable[[bool, bool], bytes], limit: int) -> None:
        self._render = render
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        self._flights: dict[tuple[bool, bool], _Flight] = {}
        self._lock = threading.Lock()

    def users(self, openmetrics: bool, gzip: bool) -> int:
        """How many scrapes share the render of this format now running (0: none runs)."""
        with self._lock:
            flight = self._flights.get((openmetrics, gzip))
            return flight.users if flight else 0

    def _join(self, key: tuple[bool, bool]) -> tuple[_Flight | None, bool]:
        """The render of this format to wait for, or a new one to run (if a slot is free)."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                if self._slots is not None and not self._slots.acquire(blocking=False):
                    return None, False
                flight = self._flights[key] = _Flight()
            flight.users += 1
            return flight, leader

    @contextmanager
    def body(self, openmetrics: bool, gzip: bool) -> Iterator[bytes | None]:
        """The exposition in this format, rendered here or by the render already running,
        held while the block sends it; None when `limit` bodies are already in use."""
        key = (openmetrics, gzip)
        flight, leader = self._join(key)
        if flight is None:
            yield None
            return
        try:
            if leader:
                try:
                    flight.body = self._render(openmetrics, gzip)
                finally:
                    with self._lock:
                        del self._flights[key]  # scrapes from now on get a fresh render
                    flight.done.set()
            flight.done.wait()
            if flight.body is None:
                raise RuntimeError("the shared render failed")
            yield flight.body
        finally:
            with self._lock:
                flight.users -= 1
                last = flight.users == 0
            if last and self._slots is not None:
                self._slots.release()


_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 section 12.4.2


def _entries(header: str) -> Iterator[tuple[str, dict[str, str]]]:
    """An Accept-style header's entries: the lowercased value and its parameters."""
    for part in header.split(","):
        value, *params = (p.strip() for p in part.split(";"))
        yield (
            value.lower(),
            {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params)},
        )


def quality(params: Mapping[str, str]) -> float:
    """An entry's q: 1 when absent; a malformed one (nan, 2, -1) refuses the entry."""
    q = params.get("q", "1")
    return float(q) if _QVALUE.fullmatch(q) else 0.0


def wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when the client prefers it to text/plain (Prometheus does), else text."""
    openmetrics = text = 0.0
    for kind, params in _entries(accept):
        if kind == "application/openmetrics-text":
            if params.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
                openmetrics = max(openmetrics, quality(params))
        elif kind in ("text/plain", "text/*", "*/*"):
            text = max(text, quality(params))
    return openmetrics > 0 and openmetrics >= text


def accepts_gzip(accept_encoding: str) -> bool:
    """gzip when named and not refused; `*` counts only when gzip is not named at all."""
    anything = False
    for coding, params in _entries(accept_encoding):
        if coding == "gzip":
            return quality(params) > 0
        if coding == "*":
            anything = quality(params) > 0
    return anything


_RESERVED_FDS = 64  # descriptors kept for polls, logs and the listener, whatever the clients do
_ACCEPT_PAUSE = 0.1  # how long the accept loop waits for a free slot or after EMFILE
_EVICT_AFTER = 1.0  # when every slot is taken, clients silent this long make way for others


def connection_cap(wanted: int) -> int:
    """`--web.max-connections`, lowered when the descriptor limit could not also serve polls."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or wanted <= soft - _RESERVED_FDS:
        return wanted
    cap = max(1, soft - _RESERVED_FDS)
    log.warning(
        "--web.max-connections lowered to keep descriptors for polls",
        extra={"wanted": wanted, "cap": cap, "nofile_limit": soft},
    )
    return cap


class Server(ThreadingHTTPServer):
    """A threaded HTTP server that accepts at most `max_connections` clients (the others wait
    in the kernel's backlog, holding no descriptor of ours), backs off instead of spinning when
    descriptors run out, and does TLS handshakes in the request thread, not the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops connects under a burst of scrapes

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._auth = (app.web, Authenticator(app.web.users))
        self.scrapes = Scrapes(self._render, app.max_requests)
        self.slots = threading.BoundedSemaphore(connection_cap(app.max_connections))
        self.errors = RateLimitedLog(log)
        self._waiting: dict[socket.socket, float] = {}  # clients between requests, and since when
        self._waiting_lock = threading.Lock()
        self.active = 0  # requests being answered; idle keep-alive connections do not count
        self.idle = threading.Condition()
        self.stopping = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    @property
    def auth(self) -> Authenticator:
        """The authenticator of the web config in force (a reload may have swapped it)."""
        web, auth = self._auth
        if web is not self.app.web:
            web = self.app.web
            auth = Authenticator(web.users)
            self._auth = (web, auth)
        return auth

    def _render(self, openmetrics: bool, gzip: bool) -> bytes:
        app = self.app
        return app.collector.render(app.snapshot(), app.clock(), openmetrics, gzip)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one client if a slot is free; an OSError tells socketserver to try later."""
        if not self.slots.acquire(timeout=_ACCEPT_PAUSE):
            self._evict()
            raise OSError(errno.EAGAIN, "every connection slot is taken")
        try:
            return self.socket.accept()
        except OSError as err:
            self.slots.release()
            if err.errno in (errno.EMFILE, errno.ENFILE):
                self.errors.debug("out of file descriptors, accept paused", err=str(err))
                time.sleep(_ACCEPT_PAUSE)  # the listener stays readable: do not spin on it
            raise

    def waiting(self, conn: socket.socket, waits: bool) -> None:
        """Mark a client as waiting for (or sending) its next request's headers, or not."""
        with self._waiting_lock:
            if waits:
                self._waiting[conn] = time.monotonic()
            else:
                self._waiting.pop(conn, None)

    def _evict(self) -> None:
        """Someone waits to be accepted and every slot is taken: hang up on the clients that
        have been idle or trickling headers for a while (slowloris, idle keep-alives); their
        half-sent requests are dropped, never served."""
        cutoff = time.monotonic() - _EVICT_AFTER
        with self._waiting_lock:
            stale = [conn for conn, since in self._waiting.items() if since < cutoff]
        for conn in stale:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: Any) -> None:
        """Called exactly once per accepted client, whatever happened to it."""
        try:
            super().shutdown_request(request)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.app.web.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.app.header_timeout)
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            self.errors.debug("TLS handshake failed", client=client_address[0], err=str(err))
            return
        # The TLS socket owns the descriptor now; socketserver would close only the plain one.
        with wrapped:
            super().finish_request(wrapped, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is one debug line, not a traceback on stderr."""
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            self.errors.debug("connection ended", client=client_address[0], err=str(err))
        else:
            log.error("request failed", exc_info=True, extra={"client": client_address[0]})

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Counts a request in flight, so a shutdown can let it finish."""
        with self.idle:
            self.active += 1
        try:
            yield
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def drain(self, timeout: float) -> None:
        """Wait for in-flight requests to finish, up to `timeout` seconds; close keep-alives."""
        with self.idle:
            self.stopping = True
            self.idle.wait_for(lambda: self.active == 0, timeout)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.app.web.tls else "http"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"


class _DeadlineReader(io.RawIOBase):
    """The client socket as a raw stream whose reads share one deadline (so a client sending a
    byte now and then cannot hold a connection), remembering whether the client hung up."""

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self._sock = sock
        self._idle_timeout = idle_timeout
        self.deadline: float | None = None
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._idle_timeout)
        else:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request headers took too long")
            self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        self.eof = count == 0
        return count

    def within(self, seconds: float) -> None:
        """Set a deadline `seconds` from now, or keep the current one if it is sooner."""
        deadline = time.monotonic() + seconds
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)


_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_MAX_BODY = 65536


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # errors before the version is known get a status line
    server_version = "windsurf-exporter"  # no version of ours or of Python for scanners
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def setup(self) -> None:
        app = self.server.app
        super().setup()
        self.rfile.close()  # the socket's own reader: it would keep the descriptor open
        self._reader = _DeadlineReader(self.connection, app.idle_timeout)
        self._reader.within(app.header_timeout)  # the first request: counted from accept
        self.rfile = io.BufferedReader(self._reader)
        self._body = 0
        self.server.waiting(self.connection, True)

    def finish(self) -> None:
        self.server.waiting(self.connection, False)
        super().finish()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args, extra={"client": self.client_address[0]})

    def log_error(self, format: str, *args: Any) -> None:
        self.server.errors.debug(format % args, client=self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Refused requests share the rate limit of errors: a flood of them is a few lines."""
        if str(code).isdigit() and int(code) >= 400:
            self.log_error('"%s" %s %s', self.requestline, str(int(code)), size)
        else:
            super().log_request(code, size)

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self._reader.deadline = None  # the next request line may come after an idle wait
        self.server.waiting(self.connection, True)

    def parse_request(self) -> bool:
        """The request line and headers, whole and within the deadline; the framing checked."""
        self._reader.within(self.server.app.header_timeout)
        if self._reader.eof or not super().parse_request() or self._reader.eof:
            # a client that hung up (or was hung up on) mid-request sent no request at all
            self.close_connection = True
            return False
        self._reader.deadline = None
        self.server.waiting(self.connection, False)
        if len(self.requestline.split()) != 3:
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
            return False
        lengths = set(self.headers.get_all("Content-Length") or [])
        if len(lengths) > 1 or not all(_CONTENT_LENGTH.fullmatch(v) for v in lengths):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad Content-Length")
            return False
        self._body = int(lengths.pop()) if lengths else 0
        if "Transfer-Encoding" in self.headers or (self._body and self.command != "POST"):
            self.close_connection = True  # a body we do not read must not pass for a request
        return True

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if self.command != "HEAD" or status != HTTPStatus.OK or body:
            self.send_header("Content-Length", str(len(body)))
        if self.server.stopping:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        for key, value in {**self.server.app.web.headers, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self._write(body)

    def _write(self, body: bytes) -> None:
        """The body in slices of the shared bytes (no copy), the whole within the deadline."""
        self.wfile.flush()
        deadline = time.monotonic() + self.server.app.write_timeout
        view = memoryview(body)
        for start in range(0, len(view), _MAX_BODY):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the client reads too slowly")
            self.connection.settimeout(remaining)
            self.connection.sendall(view[start : start + _MAX_BODY])

    @property
    def _route(self) -> str:
        """The request path without its query string."""
        return self.path.split("?")[0]

    def _authorized(self) -> bool:
        if self._route == "/-/healthy":
            return True  # says nothing about the data; lets container health checks work
        if self.server.auth.check(self.headers.get("Authorization")):
            return True
        self.close_connection = True  # an unread request body must not pass for the next request
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="windsurf-exporter"'},
        )
        return False

    def do_GET(self) -> None:
        with self.server.busy():
            self._get()

    def do_POST(self) -> None:
        with self.server.busy():
            self._post()

    def _not_allowed(self) -> None:
        """405 naming the methods the path takes; PUT and friends never reach an action."""
        self.close_connection = True
        allow = "POST" if self._route == "/-/reload" else "GET, HEAD"
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Method not allowed\n", headers={"Allow": allow})

    do_HEAD = do_GET
    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _get(self) -> None:
        if not self._authorized():
            return
        app = self.server.app
        path = self._route
        if path == app.telemetry_path:
            self._metrics()
        elif path == "/":
            self._send(HTTPStatus.OK, landing_page(app).encode(), "text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, b"Healthy\n")
        elif path == "/-/ready":
            if app.ready.is_set():
                self._send(HTTPStatus.OK, b"Ready\n")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"Not ready: first poll not done\n")
        elif path == "/-/reload":
            self._not_allowed()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found\n")

    def _post(self) -> None:
        if not self._authorized():
            return
        if self._body > _MAX_BODY:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"Body too large\n")
            return
        self.rfile.read(self._body)
        if self._route != "/-/reload":
            self._not_allowed()
        elif not self.server.app.lifecycle:
            self._send(
                HTTPStatus.FORBIDDEN,
                b"Lifecycle API is not enabled (--web.enable-lifecycle); SIGHUP reloads\n",
            )
        else:
            ok, message = self.server.app.reload()
            status = HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, (message + "\n").encode())

    def _metrics(self) -> None:
        openmetrics = wants_openmetrics(self.headers.get("Accept", ""))
        gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzip else {}
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        if self.command == "HEAD":  # the headers a GET would get, without rendering the body
            self._send(HTTPStatus.OK, b"", content_type, headers)
            return
        self._scrape(openmetrics, gzip, content_type, headers)
        self.server.app.scraped()  # the body is no one's now (this frame held it, too)

    def _scrape(
        self, openmetrics: bool, gzip: bool, content_type: str, headers: Mapping[str, str]
    ) -> None:
        with ExitStack() as held:
            try:
                body = held.enter_context(self.server.scrapes.body(openmetrics, gzip))
            except Exception:
                log.exception("rendering metrics failed")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error rendering metrics\n")
                return
            if body is None:
                self._send(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    b"Too many scrapes at once (--web.max-requests)\n",
                    headers={"Retry-After": "1"},
                )
                return
            self._send(HTTPStatus.OK, body, content_type, headers)


def landing_page(app: App) -> str:
    """A page for people: links, per-group status with when and why, and the effective config
    as YAML that can be pasted back, with secrets redacted."""
    now = app.clock()
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _status(state, now)) + "</tr>"
        for state in app.snapshot().states
    )
    config = html.escape(to_yaml(app.config_summary()))
    path = html.escape(app.telemetry_path)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Windsurf Exporter</title></head>
<body>
<h1>Windsurf Exporter</h1>
<p>Prometheus exporter for Windsurf seat usage and prompt credits, version
{html.escape(__version__)}.</p>
<ul>
<li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a> and <a href="/-/ready">readiness</a></li>
</ul>
<h2>Groups</h2>
<table border="1" cellpadding="4">
<tr><th>group</th><th>up</th><th>last poll</th><th>last success</th><th>users</th>\
<th>last error</th></tr>
{rows}
</table>
<h2>Configuration</h2>
<p>In force now, as YAML a config file can take back. The service key and the hash salt never
appear, only the files they are read from.</p>
<pre>{config}</pre>
</body></html>
"""


def _status(state: SourceState, now: float) -> tuple[str, ...]:
    """A group's table row: whether it is up, when it was last polled and last succeeded, and
    its current error with when it happened and the (already redacted) one-line message."""
    error = "-"
    if state.last_error is not None and state.last_attempt is not None:
        error = f"{_when(state.last_attempt, now)}: {state.last_error.value}"
        if state.last_error_message:
            error += f": {state.last_error_message}"
    return (
        state.name or "(whole team)",
        "up" if state.up else "down",
        _when(state.last_attempt, now),
        _when(state.last_success, now),
        str(state.report.rows) if state.report else "-",
        error,
    )


def _when(timestamp: float | None, now: float) -> str:
    """A Unix time as a person reads it: UTC to the second, and how long ago."""
    if timestamp is None:
        return "never"
    moment = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    return f"{moment} ({format_duration(max(now - timestamp, 0.0))} ago)"
