"""HTTP: /metrics, the landing page, health, readiness and reload, behind optional TLS and basic
auth configured in the exporter-toolkit web config format."""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bcrypt

from exporter import __version__
from exporter.collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Collector
from exporter.config import WebConfig, format_duration, to_yaml
from exporter.poller import GroupState, Snapshot

log = logging.getLogger("exporter.web")


@dataclass
class App:
    """What the HTTP layer needs from the rest of the exporter, injected."""

    collector: Collector
    snapshot: Callable[[], Snapshot]
    clock: Callable[[], float]
    ready: threading.Event
    reload: Callable[[], tuple[bool, str]]
    config_summary: Callable[[], Mapping[str, Any]]
    telemetry_path: str = "/metrics"
    web: WebConfig = field(default_factory=WebConfig)


class _Authenticator:
    """Checks basic auth against bcrypt hashes, remembering good answers (bcrypt is slow)."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = users
        # Checked when the user is unknown, at the users' cost, so a wrong user name takes as
        # long as a wrong password and does not reveal which names exist.
        cost = max((int(h[4:6]) for h in users.values()), default=4)
        self._dummy = bcrypt.hashpw(b"unused", bcrypt.gensalt(rounds=cost))
        self._good: set[str] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not self._users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self._users.get(user, self._dummy)
        token = hashlib.sha256(b"\0".join([user.encode(), password.encode(), hashed])).hexdigest()
        with self._lock:
            if token in self._good:
                return True
        ok = bcrypt.checkpw(password.encode(), hashed) and user in self._users
        if ok:
            with self._lock:
                self._good.add(token)
        return ok


class Server(ThreadingHTTPServer):
    """A threaded HTTP server whose TLS handshakes happen in the request thread, not the
    accept loop, so one slow client cannot stall the others."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops connects under a burst of scrapes

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.auth = _Authenticator(app.web.users)
        self.active = 0  # requests being answered; idle keep-alive connections do not count
        self.idle = threading.Condition()
        self.stopping = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.app.web.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            log.debug("TLS handshake failed", extra={"client": client_address[0], "err": str(err)})
            return
        # The TLS socket owns the descriptor now; socketserver would close only the plain one.
        with wrapped:
            super().finish_request(wrapped, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is one debug line, not a traceback on stderr."""
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            log.debug("connection ended", extra={"client": client_address[0], "err": str(err)})
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


def _quality(params: list[str]) -> float:
    """An Accept-style entry's q value, however it is spelled (0, 0.000); 1 when absent."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0


def _refused(params: list[str]) -> bool:
    return _quality(params) <= 0


def _wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when the client prefers it to text/plain (Prometheus does), else text."""
    openmetrics = text = 0.0
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        kind = kind.lower()
        if kind == "application/openmetrics-text":
            options = {
                k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params)
            }
            if options.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
                openmetrics = max(openmetrics, _quality(params))
        elif kind in ("text/plain", "text/*", "*/*"):
            text = max(text, _quality(params))
    return openmetrics > 0 and openmetrics >= text


def _accepts_gzip(accept_encoding: str) -> bool:
    """gzip when named and not refused; `*` counts only when gzip is not named at all."""
    anything = False
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() == "gzip":
            return not _refused(params)
        if coding == "*":
            anything = not _refused(params)
    return anything


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = f"windsurf-exporter/{__version__}"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args, extra={"client": self.client_address[0]})

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        for key, value in {**self.server.app.web.headers, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

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

    do_HEAD = do_GET
    do_PUT = do_POST

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
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED, b"Use POST to reload\n", headers={"Allow": "POST"}
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found\n")

    def _post(self) -> None:
        if not self._authorized():
            return
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body we do not read must not pass for a request
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > 65536:
            self.close_connection = True
            self._send(HTTPStatus.BAD_REQUEST, b"Bad Content-Length\n")
            return
        self.rfile.read(int(length))
        if self._route != "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Method not allowed\n")
            return
        ok, message = self.server.app.reload()
        self._send(
            HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR, (message + "\n").encode()
        )

    def _metrics(self) -> None:
        app = self.server.app
        openmetrics = _wants_openmetrics(self.headers.get("Accept", ""))
        gzip = _accepts_gzip(self.headers.get("Accept-Encoding", ""))
        try:
            body = app.collector.render(app.snapshot(), app.clock(), openmetrics, gzip)
        except Exception:
            log.exception("rendering metrics failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error rendering metrics\n")
            return
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzip else {}
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        self._send(HTTPStatus.OK, body, content_type, headers)


def landing_page(app: App) -> str:
    """A page for people: links, per-group status with when and why, and the effective config
    as YAML that can be pasted back, with secrets redacted."""
    now = app.clock()
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _status(state, now)) + "</tr>"
        for state in app.snapshot().groups
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


def _status(state: GroupState, now: float) -> tuple[str, ...]:
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
        str(len(state.report.users)) if state.report else "-",
        error,
    )


def _when(timestamp: float | None, now: float) -> str:
    """A Unix time as a person reads it: UTC to the second, and how long ago."""
    if timestamp is None:
        return "never"
    moment = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    return f"{moment} ({format_duration(max(now - timestamp, 0.0))} ago)"
