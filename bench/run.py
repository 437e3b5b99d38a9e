"""Benchmark: windsurf-exporter against the obvious prometheus_client exporter, side by side.

    uv run python bench/run.py                       # 1k, 10k, 20k and 50k users
    uv run python bench/run.py --quick               # 1k and 10k users, fewer scrapes
    uv run python bench/run.py --sizes 1000,10000,50000
    uv run python bench/run.py --sizes 20000 --exporters ours,ours+team,ours+all,floor

For each team size it serves a synthetic team over 10 groups from the demo's fake API, then runs
each exporter in a process of its own against it: bench/ours.py with the group polls only
(`ours`, as the baselines poll), with the team poll (`ours+team`), with the Cascade source
(`ours+cascade`), and with both as a default config runs (`ours+all`); bench/baseline.py with
Gauges, and with a custom collector of GaugeMetricFamily rendered by generate_latest;
bench/floor.py, which only sends ours' last gzip body from memory. It measures: the time from
upstream response to data ready to scrape for the first poll (for ours, rendered in the poll's
thread; how much of it is shown apart), the first scrape after the polls, the median /metrics
scrape as Prometheus asks for it (gzip; text and OpenMetrics Accept headers) both to the last
byte and to the last byte gunzipped (Prometheus reads the body through a gzip reader inside its
scrape, so its scrape_duration_seconds includes that), the resident memory after the first poll
and one gzip scrape, and the peak RSS. Numbers are only comparable within one run on one
machine, hence the ratios.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from exporter import cli
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, synthetic_team

HERE = Path(__file__).resolve().parent
GROUPS = tuple(f"group-{i:02d}" for i in range(10))
# Prometheus 2.x's default Accept (OpenMetrics preferred), and one for a text-only scrape.
ACCEPT = {
    "text": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    "openmetrics": "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
OURS = [str(HERE / "ours.py"), "--web.listen-address", "127.0.0.1:0", "--log.level", "warn"]
# Ours with which sources: (team poll, Cascade). `ours+all` is what a default config polls.
VARIANTS = {
    "ours": (False, False),
    "ours+team": (True, False),
    "ours+cascade": (False, True),
    "ours+all": (True, True),
}
EXPORTERS = {
    **{name: OURS for name in VARIANTS},
    "floor": [str(HERE / "floor.py"), "--body"],  # + the body ours served last, from memory
    "baseline": [str(HERE / "baseline.py")],
    "collector": [str(HERE / "baseline.py"), "--style", "collector"],
}
HISTORY = 10  # scrapes at each end of the run compared to show cost does not grow


@dataclass
class Result:
    exporter: str
    users: int
    series: int = 0
    gzip_bytes: int = 0
    poll_seconds: float = 0.0  # summed over the groups: response -> data ready to scrape
    render_seconds: float = 0.0  # of which rendering it (ours renders in the poll's thread)
    decode_seconds: float = 0.0  # before it, decoding the replies' JSON (ours only)
    cold_ms: float = 0.0  # the first scrape after the poll
    scrapes: dict[str, list[float]] = field(default_factory=dict)  # format -> ms, in order
    gunzip: dict[str, list[float]] = field(default_factory=dict)  # format -> ms, the same + gunzip
    rss_mb: float = 0.0  # resident after the first poll and one gzip scrape
    peak_rss_mb: float = 0.0

    def median(self, fmt: str, part: slice = slice(None)) -> float:
        return statistics.median(self.scrapes[fmt][part])

    def median_gunzip(self, fmt: str) -> float:
        return statistics.median(self.gunzip[fmt])


def config_file(directory: Path, url: str, team: bool = False, cascade: bool = False) -> Path:
    """The config the exporters read: every group, polled once, one group at a time."""
    key = directory / "service-key"
    key.write_text(DEMO_SERVICE_KEY)
    path = directory / f"config-{int(team)}{int(cascade)}.yaml"
    raw = {
        # The team's CascadeAnalytics reply passes the default 64 MiB beyond ~40,000 users.
        "api": {
            "url": url,
            "service_key_file": str(key),
            "timeout": "5m",
            "max_response_size": "512MiB",
        },
        # One poll at start-up and none during the scrapes; one group at a time, so a group's
        # timing is not inflated by others competing for the GIL.
        "poll": {"interval": "24h", "max_staleness": "48h", "concurrency": 1},
        "groups": list(GROUPS),
        "active_days_windows": ["7d", "30d"],
        # Per-group polls, as the baselines make them; or the team poll, which ours may add.
        "team": team,
        "collectors": {"cascade": {"enabled": cascade}},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


@contextmanager
def exporter_process(
    command: list[str], config: Path
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[dict[str, Any] | None]]]:
    """The exporter in its own process (so its RSS is its own); its JSON lines on a queue."""
    proc = subprocess.Popen(
        [sys.executable, *command, "--config.file", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield proc, lines
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the exporter's cue to stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def next_line(lines: queue.Queue[dict[str, Any] | None], timeout: float) -> dict[str, Any]:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise SystemExit(f"no word from the exporter within {timeout:g}s") from None
    if line is None:
        raise SystemExit("the exporter exited early")
    return line


def scrape(url: str, fmt: str) -> tuple[float, float, bytes]:
    """One /metrics request as Prometheus makes it: ms until the last byte, ms until it is also
    gunzipped (as Prometheus' scrape reads it), and the gzip body."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept": ACCEPT[fmt], "Accept-Encoding": "gzip"})
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status == 200:
            zlib.decompress(body, 31)
        gunzipped = (time.perf_counter() - started) * 1000
    finally:
        conn.close()
    if response.status != 200 or response.getheader("Content-Encoding") != "gzip":
        raise SystemExit(f"{url}: HTTP {response.status}, {response.getheader('Content-Encoding')}")
    return elapsed, gunzipped, body


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def expected(name: str) -> set[tuple[str, str]]:
    """The (source, target) polls an exporter reports before it is measured."""
    if name == "floor":
        return set()
    team, cascade = VARIANTS.get(name, (False, False))
    groups = {("user_page", g) for g in GROUPS}
    if not name.startswith("ours"):
        return {("", g) for g in GROUPS}  # the baselines name no source
    targets = groups | ({("team", "")} if team else set())
    if cascade:
        targets |= {("cascade", g) for g in GROUPS} | ({("cascade", "")} if team else set())
    return targets


def measure(
    name: str, users: int, config: Path, rounds: int, budget: float, floor_body: Path
) -> tuple[Result, bytes]:
    """Start one exporter, wait for its poll, scrape it `rounds` times (both formats each round;
    fewer once `budget` seconds are spent, but at least HISTORY), and read its peak RSS; and
    the last (OpenMetrics) body it served."""
    result = Result(
        name, users, scrapes={fmt: [] for fmt in ACCEPT}, gunzip={f: [] for f in ACCEPT}
    )
    command = [*EXPORTERS[name], str(floor_body)] if name == "floor" else EXPORTERS[name]
    targets = expected(name)
    with exporter_process(command, config) as (proc, lines):
        url = ""
        polled: set[tuple[str, str]] = set()
        while not url or polled < targets:
            line = next_line(lines, timeout=1800)
            if "error" in line:
                raise SystemExit(f"{name}: poll of {line['group']} failed: {line['error']}")
            if "listen" in line:
                url = line["listen"]
            else:
                polled.add((line.get("source", ""), line["group"]))
                result.poll_seconds += line["seconds"]
                result.render_seconds += line.get("render", 0.0)
                result.decode_seconds += line.get("decode", 0.0)
        result.cold_ms, _, _ = scrape(url, "text")
        result.rss_mb = rss_mb(proc.pid, "VmRSS")
        scrape(url, "openmetrics")
        started = time.monotonic()
        for done in range(rounds):
            for fmt, times in result.scrapes.items():
                elapsed, gunzipped, body = scrape(url, fmt)
                times.append(elapsed)
                result.gunzip[fmt].append(gunzipped)
            if done + 1 >= HISTORY and time.monotonic() - started > budget:
                break
        result.peak_rss_mb = rss_mb(proc.pid)
    text = gzip.decompress(body).decode()
    result.gzip_bytes = len(body)
    result.series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return result, body


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{cpu}, {os.cpu_count()} cores, {int(memory) / 1024**2:.0f} GiB RAM; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"prometheus_client {version('prometheus-client')}"
    )


def table(results: list[Result]) -> str:
    header = (
        "| users | exporter | series | gzip MB | scrape text ms | scrape OpenMetrics ms"
        " | OpenMetrics + gunzip ms | first scrape ms | poll -> data s (render)"
        " | JSON decode s | RSS after MB | peak RSS MB |"
    )
    rows = [header, "|---" * 12 + "|"]
    for r in results:
        n = len(r.scrapes["text"])
        rows.append(
            f"| {r.users:,} | {r.exporter} | {r.series:,} | {r.gzip_bytes / 1e6:.1f}"
            f" | {r.median('text'):.1f} (n={n}) | {r.median('openmetrics'):.1f}"
            f" | {r.median_gunzip('openmetrics'):.1f} | {r.cold_ms:.0f}"
            f" | {r.poll_seconds:.2f} ({r.render_seconds:.2f}) | {r.decode_seconds:.2f}"
            f" | {r.rss_mb:.0f} | {r.peak_rss_mb:.0f} |"
        )
    return "\n".join(rows)


def ratios(results: list[Result]) -> str:
    lines = []
    by = {(r.users, r.exporter): r for r in results}
    for users in sorted({r.users for r in results}):
        ours = by.get((users, "ours"))
        for name in ("baseline", "collector"):
            base = by.get((users, name))
            if ours is None or base is None:
                continue
            lines.append(
                f"{users:>6,} users, vs {name}: scrape"
                f" {base.median('text') / ours.median('text'):.0f}x faster (text),"
                f" {base.median('openmetrics') / ours.median('openmetrics'):.0f}x (OpenMetrics);"
                f" RSS after {ours.rss_mb / base.rss_mb:.2f} of its,"
                f" peak {ours.peak_rss_mb / base.peak_rss_mb:.2f};"
                f" poll -> data {base.poll_seconds / ours.poll_seconds:.1f}x faster"
            )
    for users in sorted({r.users for r in results}):
        floor = by.get((users, "floor"))
        for name in VARIANTS:
            ours = by.get((users, name))
            if ours is None:
                continue
            warm = ours.median("text")
            gunzip = "openmetrics"
            lines.append(
                f"{users:>6,} users, {name}: first scrape {ours.cold_ms / warm:.2f}x a warm one"
                + (
                    f"; warm scrape {warm / floor.median('text'):.2f}x the floor (text),"
                    f" {ours.median('openmetrics') / floor.median('openmetrics'):.2f}x"
                    " (OpenMetrics), with gunzip"
                    f" {ours.median_gunzip(gunzip) / floor.median_gunzip(gunzip):.2f}x"
                    if floor is not None
                    else ""
                )
            )
    for r in results:
        n = len(r.scrapes["text"])
        if r.exporter.startswith("ours") and n >= 2 * HISTORY:
            first, last = slice(0, HISTORY), slice(n - HISTORY, n)
            lines.append(
                f"{r.users:>6,} users, {r.exporter}: median scrape of rounds 1-{HISTORY} vs"
                f" {n - HISTORY + 1}-{n}: text {r.median('text', first):.1f} vs"
                f" {r.median('text', last):.1f} ms, OpenMetrics"
                f" {r.median('openmetrics', first):.1f} vs {r.median('openmetrics', last):.1f} ms"
            )
    return "\n".join(lines)


def steady_heap() -> None:
    """Gunzipping a body allocates its whole text at once. glibc maps such a block fresh (page
    faults: 53 ms to gunzip 20,000 users' body) until a larger free raises its threshold, then
    takes it from the heap (31 ms), so which one a scrape got hung on the bench's own history:
    the floor's "+ gunzip" moved between 34 and 56 ms from run to run. Fixed thresholds make it
    the same for every exporter and every run, and warm, as Prometheus' pooled scrape buffers
    are: blocks up to glibc's most (32 MiB) from the heap, freed pages kept."""
    mallopt = cli._MALLOPT  # None under another C library than glibc
    if mallopt is not None:
        mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="", help="team sizes, e.g. 1000,10000,50000")
    parser.add_argument("--quick", action="store_true", help="1k and 10k users, fewer scrapes")
    parser.add_argument("--rounds", type=int, default=0, help="scrape rounds per exporter")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="which to run")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    steady_heap()
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [1000, 10000] if args.quick else [1000, 10000, 20000, 50000]
    )
    rounds = args.rounds or (20 if args.quick else 100)
    # The baseline takes seconds per scrape at scale: stop its scrapes after this long.
    budget = 10.0 if args.quick else 60.0
    print(f"Machine: {machine()}", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.gz"  # what the floor serves: ours' last body of the size
        for users in sizes:
            with FakeWindsurf(team=synthetic_team(users, groups=GROUPS)) as fake:
                for name in args.exporters.split(","):
                    print(f"{users:,} users: {name}...", file=sys.stderr, flush=True)
                    team, cascade = VARIANTS.get(name, (False, False))
                    config = config_file(Path(tmp), fake.url, team=team, cascade=cascade)
                    limit = float("inf") if name.startswith("ours") else budget
                    result, served = measure(name, users, config, rounds, limit, body)
                    if name == "ours":
                        body.write_bytes(served)
                    results.append(result)
                    print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    print()
    print(ratios(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
