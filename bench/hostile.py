"""The README's "hostile network" figures: the real exporter process (default flags) against the
demo's fake API, attacked over loopback. Memory is the process's peak RSS (VmHWM).

    uv run python bench/hostile.py                 # 20,000 users, 50 gzip scrapers, slowloris
    uv run python bench/hostile.py --users 5000

Figures vary with the machine; compare them with the same command before and after a change.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import yaml

from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf, synthetic_team

ROOT = Path(__file__).resolve().parent.parent


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def peak_mib(pid: int) -> float:
    return peak_rss(pid) / 2**20


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in USER_HZ ticks


@contextmanager
def exporter(
    fake: FakeWindsurf, interval: str, *command: str, **extra: Any
) -> Iterator[tuple[int, str, list[str]]]:
    """The exporter as a process (after `command`, e.g. prlimit): pid, URL and its log lines;
    `extra` adds top-level config keys."""
    with tempfile.TemporaryDirectory() as directory:
        key = Path(directory, "key")
        key.write_text(DEMO_SERVICE_KEY)
        config = Path(directory, "config.yaml")
        raw = {
            "api": {"url": fake.url, "service_key_file": str(key), "timeout": "60s"},
            "poll": {"interval": interval},
            "groups": ["engineering"],
            **extra,
        }
        config.write_text(yaml.safe_dump(raw))
        proc = subprocess.Popen(
            [
                *command,
                *(sys.executable, "-m", "exporter", "--config.file", str(config)),
                *("--web.listen-address", "127.0.0.1:0", "--log.level", "debug"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        url = ""
        for line in proc.stdout:
            lines.append(line)
            if match := re.search(r"listen=(http://\S+)", line):
                url = match.group(1)
                break
        threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
        while httpx.get(url + "/-/ready").status_code != 200:
            time.sleep(0.2)
        try:
            yield proc.pid, url, lines
        finally:
            proc.kill()
            proc.wait()


def concurrent(url: str, count: int, **headers: str) -> list[int]:
    """`count` scrapes at once, each read whole; their status codes."""
    codes: list[int] = []
    barrier = threading.Barrier(count)

    def scrape() -> None:
        barrier.wait()
        codes.append(httpx.get(url + "/metrics", headers=headers, timeout=120).status_code)

    threads = [threading.Thread(target=scrape) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def slow_readers(url: str, count: int) -> dict[bytes, int]:
    """`count` clients that ask for plain text, read the status line and stop reading."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    readers = []
    for _ in range(count):
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(10)
        conn.connect((host, int(port)))
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        readers.append(conn)
    answers: dict[bytes, int] = {}
    for conn in readers:
        try:
            status = conn.recv(12)[9:]
        except TimeoutError:
            status = b"waiting"
        answers[status] = answers.get(status, 0) + 1
    for conn in readers:
        conn.close()
    return answers


def memory(users: int) -> None:
    team = synthetic_team(users, groups=("engineering",))
    with FakeWindsurf(team=team) as fake, exporter(fake, "1h") as (pid, url, lines):
        plain = httpx.get(url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=60)
        httpx.get(url + "/metrics", timeout=60)
        print(f"{users} users: exposition {len(plain.content) / 2**20:.1f} MiB plain")
        print(f"  after the first poll and scrapes: peak RSS {peak_mib(pid):.0f} MiB")
        subprocess.run(["kill", "-HUP", str(pid)], check=True)
        while not any("config reloaded" in line for line in lines):
            time.sleep(0.05)
        codes = concurrent(url, 50, **{"Accept-Encoding": "gzip"})
        print(
            f"  reload + 50 concurrent gzip scrapes ({codes.count(200)} x 200):"
            f" peak RSS {peak_mib(pid):.0f} MiB"
        )
        for count in (10, 100):
            answers = slow_readers(url, count)
            print(f"  {count} slow plain-text readers {answers}: peak RSS {peak_mib(pid):.0f} MiB")


def slowloris(held: int, nofile: int) -> None:
    with FakeWindsurf(team=synthetic_team(300, groups=("engineering",))) as fake:
        prlimit = ["prlimit", f"--nofile={nofile}:{nofile}"]
        with exporter(fake, "1s", *prlimit) as (pid, url, lines):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            polls = len(fake.requests_for("engineering"))
            started, cpu = time.monotonic(), cpu_seconds(pid)
            conns = []
            for _ in range(held):
                conn = socket.socket()
                conn.setblocking(False)
                conn.connect_ex((host, int(port)))
                conns.append(conn)
            time.sleep(1)
            for index, conn in enumerate(conns):
                with suppress(OSError):
                    conn.send(b"GET /metrics?held%d HTTP/1.1\r\nHost: x\r\n" % index)
            time.sleep(10)
            busy = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
            done = len(fake.requests_for("engineering")) - polls
            began = time.monotonic()
            try:
                code = str(httpx.get(url + "/metrics", timeout=30).status_code)
            except httpx.TimeoutException:
                code = "timeout"
            waited = time.monotonic() - began
            for conn in conns:
                conn.close()
            time.sleep(5)
            text = "".join(lines)
            print(f"slowloris: {held} half-sent requests, RLIMIT_NOFILE {nofile}, 10 s held:")
            print(
                f"  CPU {busy:.0%} of a core, {done} polls done (1 s interval),"
                f" 'Too many open files' in log: {'Too many open files' in text}"
            )
            print(f"  a scrape during the attack: {code} after {waited:.1f} s")
            print(f"  half-sent requests served after the clients let go: {text.count('?held')}")
            up = 'windsurf_up{group="engineering"} 1' in httpx.get(url + "/metrics").text
            print(f"  afterwards windsurf_up 1: {up}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--held", type=int, default=2000)
    parser.add_argument("--nofile", type=int, default=1024)
    args = parser.parse_args()
    memory(args.users)
    slowloris(args.held, args.nofile)


if __name__ == "__main__":
    main()
