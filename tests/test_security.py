"""Security: TLS (with client certificates) and basic auth from the exporter-toolkit web config,
and no credential anywhere in what the exporter says, whatever the upstream does."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.api import ApiError, Client
from exporter.cli import Formatter
from exporter.config import ApiConfig, Secret
from exporter.demo import FakeWindsurf, Fault, synthetic_team
from exporter.sources.user_rows import decode_page
from exporter.web import Authenticator
from tests.conftest import ROOT, Process, Running, page_request, samples, wait_for, write_config_in
from tests.test_faults import API, HEALTHY, POLL, ROWS

# Short and not token-like, so only knowing the key (not a pattern) can keep it out of the text.
SERVICE_KEY = "sk-Hunter2-rel"
PASSWORD = "correct horse"
USERS = {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}


# --- Certificates made in the test ---


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    directory: Path,
    name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    server: bool = False,
) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA (no issuer), or a server or client certificate signed by `issuer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer[1].subject if issuer else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    if issuer is not None:
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
    pem = Pem(directory / f"{name}.crt", directory / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, key, cert


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from another CA

    def server_tls(self, **extra: str) -> dict[str, str]:
        """tls_server_config serving the test server certificate."""
        return {"cert_file": str(self.server.cert), "key_file": str(self.server.key), **extra}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_cert(directory, "ca")
    _, other_key, other_cert = make_cert(directory, "other-ca")
    server = make_cert(directory, "server", (ca_key, ca_cert), server=True)[0]
    client = make_cert(directory, "client", (ca_key, ca_cert))[0]
    stranger = make_cert(directory, "stranger", (other_key, other_cert))[0]
    return Pki(ca, server, client, stranger)


def tls_client(pki: Pki, cert: Pem | None = None) -> httpx.Client:
    """A real TLS client that trusts the test CA and presents `cert` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return httpx.Client(verify=context, timeout=5)


def write_web_config(directory: Path, web: dict[str, Any]) -> Path:
    path = directory / "web.yaml"
    path.write_text(yaml.safe_dump(web))
    return path


@pytest.fixture
def serve(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    tmp_path: Path,
) -> Callable[[dict[str, Any]], Running]:
    """Run the exporter in-process behind the given web config."""

    def start(web: dict[str, Any]) -> Running:
        config = write_config({"api": {"url": fake_api.url}, "groups": ["engineering"]})
        web_file = write_web_config(tmp_path, web)
        return start_exporter("--config.file", str(config), "--web.config.file", str(web_file))

    return start


# --- TLS ---


def test_tls_serves_metrics_to_a_client_that_trusts_the_certificate(
    pki: Pki, serve: Callable[[dict[str, Any]], Running]
) -> None:
    running = serve({"tls_server_config": pki.server_tls()})
    assert running.url.startswith("https://127.0.0.1:")
    with tls_client(pki) as client:
        response = client.get(running.url + "/metrics")
    assert response.status_code == 200
    assert 'windsurf_up{group="engineering"} 1' in response.text
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(running.url + "/metrics")  # the system CAs do not know the test CA
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url.replace("https://", "http://") + "/metrics")


def test_tls_client_certificates_are_required_and_verified(
    pki: Pki, serve: Callable[[dict[str, Any]], Running]
) -> None:
    running = serve(
        {
            "tls_server_config": pki.server_tls(
                client_ca_file=str(pki.ca.cert), client_auth_type="RequireAndVerifyClientCert"
            )
        }
    )
    with tls_client(pki, pki.client) as client:
        assert client.get(running.url + "/metrics").status_code == 200
    for cert in (None, pki.stranger):
        with tls_client(pki, cert) as client, pytest.raises(httpx.TransportError):
            client.get(running.url + "/metrics")
    with tls_client(pki, pki.client) as client:  # a refused client did not stop the server
        assert client.get(running.url + "/-/healthy").status_code == 200


def test_a_tls_hello_sent_a_byte_at_a_time_meets_one_deadline(
    pki: Pki, serve: Callable[[dict[str, Any]], Running]
) -> None:
    running = serve({"tls_server_config": pki.server_tls()})
    running.exporter.app.header_timeout = 0.5
    host, port = running.url.removeprefix("https://").split(":")
    # A ClientHello record announcing 512 bytes, sent a byte every 20 ms: each byte comes
    # within the timeout a read would have, but the handshake has one deadline in all.
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500)
    sent = iter(hello)
    with socket.create_connection((host, int(port)), timeout=10) as conn:

        def trickled_until_closed() -> bool:
            try:
                if conn.recv(1, socket.MSG_DONTWAIT) == b"":
                    return True
            except BlockingIOError:
                conn.send(bytes([next(sent)]))
                return False
            except ConnectionResetError:
                return True
            raise AssertionError("the server answered a hello it never received whole")

        started = time.monotonic()
        wait_for(trickled_until_closed, timeout=10, what="the server to hang up")
        assert time.monotonic() - started < 3  # one deadline of 0.5 s, not one per read
    with tls_client(pki) as client:  # the server goes on serving
        assert client.get(running.url + "/-/healthy").status_code == 200


# --- Basic auth ---


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def authed(serve: Callable[[dict[str, Any]], Running]) -> Running:
    return serve({"basic_auth_users": USERS})


def test_basic_auth_right_password_gets_the_metrics(authed: Running) -> None:
    response = httpx.get(authed.url + "/metrics", auth=("prometheus", PASSWORD))
    assert response.status_code == 200
    assert "windsurf_up" in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": basic("prometheus", "wrong")},
        {"Authorization": basic("nobody", PASSWORD)},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer " + PASSWORD},
    ],
    ids=["none", "wrong-password", "unknown-user", "garbage", "bearer"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("GET", "/"), ("GET", "/-/ready"), ("POST", "/-/reload")],
)
def test_basic_auth_refusal_is_a_401_and_nothing_else(
    authed: Running, headers: dict[str, str], method: str, path: str
) -> None:
    response = httpx.request(method, authed.url + path, headers=headers)
    assert response.status_code == 401
    assert response.text == "Unauthorized\n"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="windsurf-exporter"'
    assert response.headers["Connection"] == "close"
    assert set(response.headers) <= {
        "server",
        "date",
        "content-type",
        "content-length",
        "www-authenticate",
        "connection",
    }


def test_healthy_needs_no_password_for_container_health_checks(authed: Running) -> None:
    response = httpx.get(authed.url + "/-/healthy")
    assert (response.status_code, response.text) == (200, "Healthy\n")


def test_tls_and_basic_auth_together_in_the_real_process(
    pki: Pki,
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    web = write_web_config(
        tmp_path, {"tls_server_config": pki.server_tls(), "basic_auth_users": USERS}
    )
    config = write_config({"api": {"url": fake_api.url}, "groups": ["engineering"]})
    process = exporter_process("--config.file", str(config), "--web.config.file", str(web))
    assert process.url.startswith("https://")
    with tls_client(pki) as client:
        assert client.get(process.url + "/metrics").status_code == 401
        response = wait_for(
            lambda: (
                (r := client.get(process.url + "/metrics", auth=("prometheus", PASSWORD)))
                and 'windsurf_up{group="engineering"} 1' in r.text
                and r
            ),
            what="an authenticated scrape over TLS",
        )
    assert response.status_code == 200


# --- Secrets: the service key and every user apiKey, never shown ---


HOSTILE = {
    # an upstream that repeats the credentials it was sent, in every place it can
    "echo_401": Fault(401, error=f"service key {SERVICE_KEY} is not valid"),
    "echo_error": Fault(error=f'bad request {{"service_key": "{SERVICE_KEY}"}}'),
    "echo_html": Fault(500, body=f"<html>{SERVICE_KEY}</html>".encode(), content_type="text/html"),
    "echo_type": Fault(body=b"<html></html>", content_type=f"text/{SERVICE_KEY}"),
    "echo_retry_after": Fault(429, headers={"Retry-After": SERVICE_KEY}),
}


def hostile_rows(team_keys: list[str]) -> dict[str, Fault]:
    """The hostile faults plus one that quotes a user's apiKey."""
    return {**HOSTILE, "echo_user_key": Fault(error=f"user {team_keys[0]} is over quota")}


@pytest.fixture
def leaky_world(tmp_path: Path) -> Iterator[tuple[FakeWindsurf, dict[str, Fault], Path]]:
    """A fake API with one group per fault (table rows and hostile echoes) plus a healthy one."""
    names = [row.group for row in ROWS] + [*HOSTILE, "echo_user_key", HEALTHY]
    team = synthetic_team(size=3 * len(names), groups=names)
    faults = {row.group: row.fault for row in ROWS} | hostile_rows([m.api_key for m in team])
    with FakeWindsurf(team=team, service_key=SERVICE_KEY) as fake:
        config = write_config_in(
            tmp_path,
            {"api": {**API, "url": fake.url}, "poll": POLL, "groups": names},
            key=SERVICE_KEY,
        )
        yield fake, faults, config


def assert_no_secret(text: str, fake: FakeWindsurf) -> None:
    assert SERVICE_KEY not in text
    leaked = [m.api_key for m in fake.team if m.api_key in text]
    assert leaked == []


def test_no_secret_in_any_output_under_every_fault_with_debug_logging(
    leaky_world: tuple[FakeWindsurf, dict[str, Fault], Path],
    exporter_process: Callable[..., Process],
) -> None:
    fake, faults, config = leaky_world
    process = exporter_process(
        "--config.file", str(config), "--log.level", "debug", "--web.enable-lifecycle"
    )
    url = process.url
    wait_for(lambda: httpx.get(url + "/-/ready").status_code == 200, what="first poll")
    for group, fault in faults.items():
        fake.set_fault(group, fault)

    def all_failed() -> bool:
        metrics = samples(httpx.get(url + "/metrics").text)
        return all(metrics[f'windsurf_up{{group="{g}"}}'] == 0 for g in faults)

    wait_for(all_failed, timeout=20, what="every fault group down")
    seen = [
        httpx.get(url + "/metrics").text,
        httpx.get(url + "/metrics", headers={"Accept": "application/openmetrics-text"}).text,
        httpx.get(url + "/").text,
        httpx.get(url + "/nowhere").text,
    ]
    original = config.read_text()
    config.write_text(original + "oops: [\n")
    seen.append(httpx.post(url + "/-/reload").text)  # a bad config: the error message
    config.write_text(original)
    seen.append(httpx.post(url + "/-/reload").text)
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "".join(process.lines).count("config reloaded") >= 2, what="SIGHUP reload")
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=5) == 0
    logs = wait_for(
        lambda: "shutting down" in "".join(process.lines) and "".join(process.lines),
        what="the whole log",
    )
    assert "level=debug" in logs, "debug logging was on"
    for group in faults:  # every hostile echo was logged, with the key cut out
        assert f"group={group}" in logs
    assert "<redacted>" in logs
    assert "Traceback" not in logs
    assert_no_secret(logs, fake)
    for text in seen:
        assert_no_secret(text, fake)
    assert "service_key_file" in seen[2], "the landing page shows the config, redacted"


def test_api_errors_never_carry_a_secret_in_str_repr_or_traceback(
    leaky_world: tuple[FakeWindsurf, dict[str, Fault], Path],
) -> None:
    fake, faults, _ = leaky_world
    for group, fault in faults.items():
        fake.set_fault(group, fault)
    api = ApiConfig(
        url=fake.url,
        service_key=Secret(SERVICE_KEY),
        timeout=1.0,
        retries=0,
        max_response_bytes=65536,
    )
    client = Client(api, max_connections=1)
    try:
        texts = []
        for group in faults:
            with pytest.raises(ApiError) as caught:
                client.call(page_request(group), decode_page)
            err = caught.value
            texts += [str(err), repr(err), "".join(traceback.format_exception(err))]
    finally:
        client.close()
    assert any("<redacted>" in text for text in texts)
    for text in texts:
        assert_no_secret(text, fake)


def test_log_formatter_redacts_known_secrets_in_message_and_fields() -> None:
    record = logging.LogRecord(
        "exporter", logging.ERROR, __file__, 1, "got %s", (SERVICE_KEY,), None
    )
    record.detail = f"key={SERVICE_KEY}"
    for style in ("logfmt", "json"):
        line = Formatter(style, lambda: [SERVICE_KEY]).format(record)
        assert SERVICE_KEY not in line
        assert "<redacted>" in line
    assert json.loads(Formatter("json", lambda: [SERVICE_KEY]).format(record))["msg"] == (
        "got <redacted>"
    )


def test_service_key_in_the_config_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"service_key": SERVICE_KEY}}))
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1
    assert "api.service_key: unknown key" in result.stdout
    assert SERVICE_KEY not in result.stdout + result.stderr


def test_service_key_may_come_from_the_environment(
    start_exporter: Callable[..., Running], tmp_path: Path
) -> None:
    with FakeWindsurf(team=synthetic_team(10), service_key=SERVICE_KEY) as fake:
        config = tmp_path / "env-config.yaml"
        config.write_text(yaml.safe_dump({"api": {"url": fake.url}, "groups": ["engineering"]}))
        running = start_exporter(
            "--config.file", str(config), environ={"WINDSURF_SERVICE_KEY": SERVICE_KEY}
        )
        assert samples(running.scrape().text)['windsurf_up{group="engineering"}'] == 1
        page = running.scrape("/").text
    assert "&lt;unset: from $WINDSURF_SERVICE_KEY&gt;" in page
    assert SERVICE_KEY not in page


def test_malformed_or_abandoned_requests_get_no_traceback(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = write_config({"api": {"url": fake_api.url}, "groups": ["engineering"]})
    running = start_exporter("--config.file", str(config))
    address = running.exporter.server.server_address  # type: ignore[union-attr]
    with socket.create_connection(address[:2], timeout=5) as conn:
        conn.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
        assert conn.recv(1024).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(address[:2], timeout=5) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and hang up unread
    assert running.scrape("/-/healthy").status_code == 200
    running.exporter.stop()
    assert "Traceback" not in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def checked_costs(users: dict[str, bytes], names: list[str]) -> dict[str, set[bytes]]:
    """Which bcrypt cost each name's check paid (twice per name), seen through the seam."""
    costs: dict[str, set[bytes]] = {}
    current = ""

    def checkpw(password: bytes, hashed: bytes) -> bool:
        costs.setdefault(current, set()).add(hashed[4:6])
        return bcrypt.checkpw(password, hashed)

    auth = Authenticator(users, checkpw=checkpw)
    for current in names * 2:
        assert not auth.check(basic(current, "wrong"))
    return costs


def test_an_unknown_user_costs_what_a_user_costs_so_timing_does_not_tell_who_exists() -> None:
    users = {
        "fast": bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=4)),
        "slow": bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=5)),
    }
    strangers = [f"user{i}" for i in range(40)]
    costs = checked_costs(users, ["fast", "slow", *strangers])
    assert costs["fast"] == {b"04"}
    assert costs["slow"] == {b"05"}
    assert all(len(costs[name]) == 1 for name in strangers), "a name always costs the same"
    seen = set().union(*(costs[name] for name in strangers))
    assert seen == {b"04", b"05"}, "unknown names look like the fast user as well as the slow one"


def test_a_password_longer_than_bcrypt_takes_is_refused_not_raised() -> None:
    auth = Authenticator({"prometheus": USERS["prometheus"].encode()})
    assert not auth.check(basic("prometheus", "x" * 73))
    assert not auth.check(basic("nobody", "é" * 40))
    assert auth.check(basic("prometheus", PASSWORD))


def test_a_chunked_body_is_not_read_as_a_second_request(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    start_exporter: Callable[..., Running],
) -> None:
    config = write_config({"api": {"url": fake_api.url}, "groups": ["engineering"]})
    running = start_exporter("--config.file", str(config), "--web.enable-lifecycle")
    address = running.exporter.server.server_address  # type: ignore[union-attr]
    smuggled = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    with socket.create_connection(address[:2], timeout=5) as conn:
        conn.sendall(
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk
        )
        answer = b""
        while data := conn.recv(65536):  # the server closes the connection after its answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nconfig reloaded\n"), "one answer, then the end"
