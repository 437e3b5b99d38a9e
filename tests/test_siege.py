"""Issue 11's last "Done when": everything holds at the same time on one exporter. One real
process (default hardening flags, --web.enable-lifecycle, a systemd-like low RLIMIT_NOFILE, hash
labels with a salt) polls a fake API whose replies are hostile, while slowloris clients, bursts
of gzip scrapes, slow plain-text readers, malformed requests and a burst of unchanged reloads all
hit it at once. Each attack's own test is in test_hostile_network.py / test_hostile_upstream.py;
this one proves they do not add up to an outage."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from bench.hostile import peak_rss
from exporter.demo import FakeWindsurf, Fault, synthetic_team
from tests.conftest import Process, samples, series, wait_for
from tests.test_hostile_network import NOFILE, address, exchange, half_sent
from tests.test_hostile_upstream import OPENMETRICS, series_of
from tests.test_process import output

SERVICE_KEY = "sk-Siege-7f3a"  # not token-like: only knowing it can keep it out of the text
HEALTHY = ("engineering", "research")
HOSTILE = "hostile"  # up, with every value a reply can get wrong
LIMITED = "limited"  # always 429 with Retry-After
GROUPS = (*HEALTHY, HOSTILE, LIMITED)
INTERVAL = 2.0  # poll.interval, seconds; LIMITED's 429 holds the key 1 s of each
TEAM = 300  # members over the four groups: about 75 in each healthy one
HELD = 150  # slowloris clients kept connected: more than the 64 slots, most of NOFILE
BURST = 24  # gzip scrapes sent at once, per round
READERS = 3  # slow plain-text readers
RELOADS = 30  # unchanged POST /-/reload, four a second
HEALTH_DEADLINE = 5.0  # /-/healthy must answer within this, whatever else goes on
ROLES = 200  # distinct roles in the hostile reply; 20 keep a series of their own
LEAKED_API_KEY = "ak-hostile-0000"  # an apiKey the hostile group's reply carries


def hostile_rows() -> list[dict[str, Any]]:
    """One reply with each thing issue 11 found an upstream can send: counted, never exported."""
    rows: list[dict[str, Any]] = [
        {"email": "digits@example.com", "promptCreditsUsed": "9" * 30_000 + "x"},
        {"email": "\ud800lone@example.com", "name": "\udfff", "apiKey": LEAKED_API_KEY},
        {"email": "neg@example.com", "activeDays": -3, "promptCreditsUsed": "-500"},
        {"email": "huge1@example.com", "promptCreditsUsed": 1e308},
        {"email": "huge2@example.com", "promptCreditsUsed": "1e308"},
        {
            "email": "future@example.com",
            "teamStatus": "USER_TEAM_STATUS_APPROVED",
            "lastChatUsageTime": "9999-12-31T23:59:59Z",
        },
        {"email": "ok@example.com", "activeDays": 3, "promptCreditsUsed": "100"},
    ]
    rows += [{"email": "a" * 100_000 + f"{i}@example.com"} for i in range(3)]
    rows += [{"email": f"r{i}@example.com", "role": f"role-{i}"} for i in range(ROLES)]
    return rows


# What the hostile reply must show up as: unusable values by field, and cuts by limit.
UNPARSABLE = {"promptCreditsUsed": 4, "activeDays": 1, "lastChatUsageTime": 1}
LIMITED_VALUES = {"max_label_length": 3, "max_label_values": ROLES + 1 - 20}


@dataclass
class Seen:
    """What the attackers saw; each list is appended to by one thread only."""

    health: list[float | str] = field(default_factory=list)  # seconds, or what went wrong
    scrapes: list[tuple[str, int, bytes]] = field(default_factory=list)  # kind, status, body
    malformed: list[bytes] = field(default_factory=list)  # status lines
    reloads: list[tuple[int, str]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # slowloris clients replaced, per round


@contextmanager
def attacks(target: Process, seen: Seen) -> Iterator[None]:
    """Every attack in a thread of its own until the block ends; then all stopped and joined."""
    stop = threading.Event()
    url = target.url
    threads = [
        threading.Thread(target=attack, args=(url, seen, stop), name=attack.__name__, daemon=True)
        for attack in (slowloris, probe_health, gzip_bursts, reload_burst)
    ]
    threads.append(threading.Thread(target=malformed, args=(target, seen, stop), daemon=True))
    threads += [
        threading.Thread(target=slow_reader, args=(url, seen, stop), daemon=True)
        for _ in range(READERS)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not [t.name for t in threads if t.is_alive()], "every attacker stopped"


def slowloris(url: str, seen: Seen, stop: threading.Event) -> None:
    """Keep HELD half-sent requests connected, replacing each one the exporter hangs up on."""
    to = address(url)
    held: list[socket.socket] = []
    try:
        while not stop.is_set():
            gone = [conn for conn in held if hung_up(conn)]
            for conn in gone:
                conn.close()
                held.remove(conn)
            seen.held.append(HELD - len(held))
            for index in range(HELD - len(held)):
                with suppress(OSError):
                    conn = half_sent(to, index)
                    conn.setblocking(False)  # hung_up() looks without waiting
                    held.append(conn)
            stop.wait(0.2)
    finally:
        for conn in held:
            conn.close()


def hung_up(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def probe_health(url: str, seen: Seen, stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            code = httpx.get(url + "/-/healthy", timeout=HEALTH_DEADLINE).status_code
            seen.health.append(time.monotonic() - started if code == 200 else f"HTTP {code}")
        except httpx.HTTPError as err:
            seen.health.append(f"{type(err).__name__} after {time.monotonic() - started:.1f}s")
        stop.wait(0.2)


PROMETHEUS = {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"}  # what Prometheus sends


def gzip_bursts(url: str, seen: Seen, stop: threading.Event) -> None:
    """Rounds of BURST scrapes let go at once, as Prometheus asks (OpenMetrics, gzip)."""
    while not stop.is_set():
        barrier = threading.Barrier(BURST)
        answers: list[tuple[str, int, bytes]] = []
        threads = [
            threading.Thread(target=scrape, args=(url, barrier, answers)) for _ in range(BURST)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        seen.scrapes.extend(answers)
        stop.wait(2.0)


def scrape(url: str, barrier: threading.Barrier, answers: list[tuple[str, int, bytes]]) -> None:
    barrier.wait(10)
    try:
        response = httpx.get(url + "/metrics", headers=PROMETHEUS, timeout=30)
        answers.append(("openmetrics", response.status_code, response.content))
    except httpx.HTTPError as err:
        answers.append(("openmetrics", 0, type(err).__name__.encode()))


def slow_reader(url: str, seen: Seen, stop: threading.Event) -> None:
    """Plain text through a small receive window, a pause between reads, until whole."""
    while not stop.is_set():
        with socket.create_connection(address(url), timeout=30) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := conn.recv(4096)):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\nContent-Length: *([0-9]+)", head)
            size = int(length.group(1)) if length else 0
            while len(body) < size and not stop.wait(0.01) and (chunk := conn.recv(32768)):
                body += chunk
            if len(body) == size:  # else stopped while reading
                seen.scrapes.append(("text", int(head[9:12] or 0), body))


MALFORMED = [
    b"POST /-/reload HTTP/1.1\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n",
    b"GET /metrics\r\n\r\n",  # HTTP/0.9
    b"POST /-/reload HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
]


def malformed(target: Process, seen: Seen, stop: threading.Event) -> None:
    while not stop.is_set():
        for data in MALFORMED:
            with suppress(OSError):  # exchange() needs only the `url` a Process has too
                answer = exchange(target, data)  # type: ignore[arg-type]
                seen.malformed.append(answer.partition(b"\r\n")[0])


def reload_burst(url: str, seen: Seen, stop: threading.Event) -> None:
    with httpx.Client(timeout=30) as client:  # one connection, as a deploy script would
        for _ in range(RELOADS):
            if stop.is_set():
                return
            response = client.post(url + "/-/reload")
            seen.reloads.append((response.status_code, response.text.strip()))
            stop.wait(0.25)  # spread over the key's rate-limit waits too


# --- The siege ---


@pytest.fixture
def upstream() -> Iterator[FakeWindsurf]:
    team = synthetic_team(TEAM, groups=GROUPS)
    with FakeWindsurf(team=team, service_key=SERVICE_KEY) as fake:
        fake.overrides[HOSTILE] = hostile_rows()
        fake.set_fault(LIMITED, Fault(status=429, headers={"Retry-After": "1"}))
        yield fake


@pytest.fixture
def besieged(
    upstream: FakeWindsurf,
    write_config: Callable[..., Path],
    exporter_process: Callable[..., Process],
    tmp_path: Path,
) -> Process:
    """The real process, default hardening flags, under NOFILE descriptors, its first polls
    done: every group every INTERVAL, hash labels with a salt, no retries (one request a poll)."""
    salt = tmp_path / "salt"
    salt.write_text("siege pepper\n")
    raw = {
        "api": {"url": upstream.url, "timeout": "5s", "retries": 0},
        "poll": {"interval": f"{INTERVAL:g}s"},
        "groups": list(GROUPS),
        "team": False,
        "labels": {"user": "hash", "hash_salt_file": str(salt)},
    }
    config = write_config(raw, key=SERVICE_KEY)
    process = exporter_process(
        *("--config.file", str(config), "--web.enable-lifecycle", "--log.level", "debug"),
        command=["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "exporter"],
    )
    ready = lambda: httpx.get(process.url + "/-/ready").status_code == 200  # noqa: E731
    wait_for(ready, timeout=20, what="the first polls")
    return process


def metric(metrics: dict[str, float], name: str, group: str, **labels: str) -> float | None:
    return metrics.get(series(name, group=group, **labels))


def polls(metrics: dict[str, float], group: str) -> float:
    return metric(metrics, "windsurf_exporter_polls_total", group) or 0.0


@dataclass
class Siege:
    """What one siege measured, from start to end."""

    seen: Seen
    plain: int  # bytes of the plain-text exposition before the siege
    before: dict[str, float]  # /metrics before the siege
    after: dict[str, float]  # and after it
    final: str  # the text of the last scrape
    sent: dict[str, int]  # UserPageAnalytics requests per group between the two scrapes
    asked: dict[str, int]  # and during the siege itself
    duration: float
    baseline: int  # peak RSS before, bytes
    grown: int  # peak RSS growth during the siege, bytes


def besiege(process: Process, upstream: FakeWindsurf) -> Siege:
    """Every attack at once until each has gone round and the healthy groups polled 5 times."""
    url, pid = process.url, process.proc.pid
    first = httpx.get(url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=10)
    before = samples(first.text)
    sent = {g: len(upstream.requests_for(g)) for g in GROUPS}
    baseline = peak_rss(pid)
    seen = Seen()

    def polled() -> bool:
        now = samples(httpx.get(url + "/metrics", timeout=30).text)
        return all(polls(now, g) >= polls(before, g) + 5 for g in HEALTHY)

    def gone_round() -> bool:
        return (
            len(seen.reloads) == RELOADS
            and len(seen.scrapes) >= 3 * BURST
            and sum(kind == "text" for kind, _, _ in seen.scrapes) >= READERS
            and len(seen.malformed) >= 2 * len(MALFORMED)
        )

    began = time.time()
    with attacks(process, seen):
        wait_for(lambda: gone_round() and polled(), timeout=40, what="the siege to go round")
    ended = time.time()
    grown = peak_rss(pid) - baseline
    final = httpx.get(url + "/metrics", timeout=10).text
    return Siege(
        seen=seen,
        plain=len(first.content),
        before=before,
        after=samples(final),
        final=final,
        sent={g: len(upstream.requests_for(g)) - sent[g] for g in GROUPS},
        asked={g: sum(began <= r.at <= ended for r in upstream.requests_for(g)) for g in GROUPS},
        duration=ended - began,
        baseline=baseline,
        grown=grown,
    )


def test_one_exporter_holds_against_every_attack_at_once(
    upstream: FakeWindsurf, besieged: Process
) -> None:
    siege = besiege(besieged, upstream)
    secrets = [SERVICE_KEY, LEAKED_API_KEY, *(m.api_key for m in upstream.team)]
    held_the_network(siege.seen, secrets)
    counted_the_hostile_upstream(siege.after)
    reloads_cost_nothing(siege)
    # Memory: at most --web.max-requests (8) bodies in use, each at most the plain exposition,
    # plus the one being built and its cached static part, plus what a thread per connection
    # slot (64) holds (its stack's touched pages and share of malloc arenas, ~256 KiB).
    bound = 10 * siege.plain + 64 * 256 * 1024
    assert siege.grown < bound, f"peak RSS grew {siege.grown >> 20} MiB"
    assert [s for s in secrets if s in siege.final] == []
    log = output(besieged)
    assert "Traceback" not in log
    assert [s for s in secrets if s in log] == []
    assert "Too many open files" not in log
    assert "?held" not in log, "a half-sent request was served"
    assert log.count("config reloaded") == RELOADS
    print(
        f"siege {siege.duration:.1f}s: {len(siege.seen.scrapes)} scrapes, /-/healthy within"
        f" {max(h for h in siege.seen.health if isinstance(h, float)):.2f}s,"
        f" {sum(siege.seen.held)} held clients replaced, requests {siege.asked}, peak RSS"
        f" +{siege.grown >> 20} MiB over {siege.baseline >> 20} MiB,"
        f" exposition {siege.plain >> 10} KiB"
    )


def held_the_network(seen: Seen, secrets: list[str]) -> None:
    """/-/healthy in time throughout; every well-formed scrape 200, parsable, no series twice,
    no email (hash mode) and no secret; each malformed request a 400; each reload done."""
    assert len(seen.health) >= 5
    assert [h for h in seen.health if not isinstance(h, float)] == []
    assert Counter(status for _, status, _ in seen.scrapes) == {200: len(seen.scrapes)}
    for kind, body in {(k, b) for k, _, b in seen.scrapes}:  # shared renders: parsed once
        text = body.decode()
        found = series_of(text, parse_openmetrics if kind == "openmetrics" else parse_text)
        assert [s for s, n in Counter(found).items() if n > 1] == []
        assert "example.com" not in text
    assert all(line.startswith(b"HTTP/1.1 400 ") for line in seen.malformed), set(seen.malformed)
    assert seen.reloads == [(200, "config reloaded")] * RELOADS


def counted_the_hostile_upstream(metrics: dict[str, float]) -> None:
    """The healthy groups stayed up, and the hostile one: its bad values counted, not data."""
    assert {g: metric(metrics, "windsurf_up", g) for g in GROUPS} == {
        **dict.fromkeys(HEALTHY, 1),
        HOSTILE: 1,
        LIMITED: 0,
    }
    unparsable = {
        field: metric(metrics, "windsurf_exporter_unparsable_values", HOSTILE, field=field)
        for field in UNPARSABLE
    }
    assert unparsable == UNPARSABLE
    limited = {
        limit: metric(metrics, "windsurf_exporter_limited_values", HOSTILE, limit=limit)
        for limit in LIMITED_VALUES
    }
    assert limited == LIMITED_VALUES
    assert metric(metrics, "windsurf_group_prompt_credits_used", HOSTILE) == 100


def reloads_cost_nothing(siege: Siege) -> None:
    """No request beyond the schedule: polls start INTERVAL apart at least, and one may wait up
    to LIMITED's 1 s Retry-After for the key before asking. And none thrown away: every
    request sent is a poll counted (give or take one in flight at either scrape)."""
    allowed = (siege.duration + 1) / INTERVAL + 1
    assert max(siege.asked.values()) <= allowed, (siege.asked, allowed)
    counted = {g: polls(siege.after, g) - polls(siege.before, g) for g in GROUPS}
    assert all(siege.sent[g] <= counted[g] + 1 for g in GROUPS), (siege.sent, counted)
