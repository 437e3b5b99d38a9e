"""The README's "hostile upstream" figures: the real exporter process (default limits) against
the demo's fake API serving hand-written hostile replies over loopback. Memory is the process's
peak RSS (VmHWM).

    uv run python bench/upstream.py

Figures vary with the machine; compare them with the same command before and after a change.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from hostile import exporter, peak_mib

from exporter.demo import FakeWindsurf, synthetic_team
from exporter.sources.values import parse_number

GROUP = "engineering"


def served(rows: list[dict[str, Any]], **config: Any) -> tuple[float, float, float, int, int]:
    """Poll `rows` every second for 3 s: the last poll's duration, the slowest /-/healthy
    meanwhile, peak RSS (MiB), plain exposition bytes and series."""
    with FakeWindsurf(team=synthetic_team(3, groups=(GROUP,))) as fake:
        fake.overrides[GROUP] = rows
        slowest = [0.0]
        done = threading.Event()
        with exporter(fake, "1s", **config) as (pid, url, _):

            def probe() -> None:
                while not done.is_set():
                    began = time.monotonic()
                    httpx.get(url + "/-/healthy", timeout=120)
                    slowest[0] = max(slowest[0], time.monotonic() - began)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            time.sleep(3)
            body = httpx.get(url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=300)
            done.set()
            prober.join()
            lines = [line for line in body.text.split("\n") if line and line[0] != "#"]
            duration = next(
                float(line.rpartition(" ")[2])
                for line in lines
                if line.startswith("windsurf_exporter_last_poll_duration_seconds")
            )
            return duration, slowest[0], peak_mib(pid), len(body.content), len(lines)


def main() -> None:
    digits = "9" * 30_000 + "x"
    began = time.perf_counter()
    parse_number(digits)
    one = time.perf_counter() - began
    began = time.perf_counter()
    parse_number("12500")
    plain = time.perf_counter() - began
    print(f"30,000 digits + a letter: parse_number {one * 1e6:.1f} us ({one / plain:.1f}x '12500')")
    duration, healthy, rss, size, count = served(
        [{"email": "a@example.com", "promptCreditsUsed": digits}]
    )
    print(f"  in a reply: poll {duration:.3f} s, slowest /-/healthy {healthy * 1000:.0f} ms")

    rows = [{"email": f"u{i}@x.io"} for i in range(1_000_000)]
    duration, healthy, rss, size, count = served(rows)
    print(
        f"1,000,000 minimal rows: peak RSS {rss:.0f} MiB, poll {duration:.1f} s,"
        f" exposition {size / 2**20:.1f} MiB, {count} series,"
        f" slowest /-/healthy {healthy * 1000:.0f} ms"
    )

    mb = "a" * 1_000_000
    rows = [{"email": f"{mb}{i}@x.io", "name": mb} for i in range(60)]
    duration, healthy, rss, size, count = served(rows)
    print(f"60 emails of 1 MB: exposition {size / 2**10:.0f} KiB, peak RSS {rss:.0f} MiB")

    rows = [
        {"email": f"u{i}@x.io", "role": f"role-{i}", "teamStatus": f"STATUS_{i}"}
        for i in range(100_000)
    ]
    duration, healthy, rss, size, count = served(rows, per_user=False)
    print(f"100,000 distinct roles and statuses, per_user: false: {count} series")


if __name__ == "__main__":
    main()
