"""windsurf-exporter as it runs in production (`cli.Exporter`), plus the one probe the benchmark
needs: how long each group's poll spends between the upstream's JSON and the published Snapshot.
The probe uses the Poller's public seams (its client factory and `on_published`). Run by
bench/run.py with the same protocol as bench/baseline.py:

    python bench/ours.py --config.file config.yaml

It prints `{"listen": url}` once serving, then `{"source": s, "group": g, "seconds": s}` per
polled target (with the time its replies' JSON took to decode, apart), and exits when stdin
closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from exporter import api, cli
from exporter.api import Client, Clocks, KeyLimit
from exporter.config import Config
from exporter.poller import Poller, Published
from exporter.sources import Request

T = TypeVar("T")
# Each group is polled in a thread of its own, so the probe keeps its clock per thread.
_probe = threading.local()
_printing = threading.Lock()  # polls publish from several threads: one line at a time


class TimedClient(Client):
    """Times what follows each reply: parsing it, and from the last one on."""

    def call(
        self,
        request: Request,
        parse: Callable[[Any], T],
        on_attempt: Callable[[str], None] = lambda outcome: None,
    ) -> T:
        def timed(document: Any) -> T:
            started = time.perf_counter()
            try:
                return parse(document)
            finally:
                _probe.spent = getattr(_probe, "spent", 0.0) + time.perf_counter() - started

        record = super().call(request, timed, on_attempt)
        _probe.parsed = time.perf_counter()
        return record


def timed_json(
    content: bytearray, hook: Callable[[], Callable[[dict[str, Any]], Any]] | None = None
) -> Any:
    """The reply's JSON decoding (with a source's object hook, if any), timed apart: the
    poll -> data figure starts from the decoded JSON, as the baselines' does."""
    started = time.perf_counter()
    try:
        return _json(content, hook)
    finally:
        _probe.decoded = getattr(_probe, "decoded", 0.0) + time.perf_counter() - started


_json = api._json


def timed_client(config: Config, clocks: Clocks, limit: KeyLimit) -> Client:
    return TimedClient(
        config.api, clocks=clocks, max_connections=config.poll.concurrency, limit=limit
    )


def report(published: Published, rendered: float) -> None:
    """Adds the time from the last parsed reply to the data ready to scrape, and prints it
    with the part of it the exporter's hook spent rendering."""
    parsed = getattr(_probe, "parsed", time.perf_counter())
    spent = getattr(_probe, "spent", 0.0) + time.perf_counter() - parsed
    decoded = getattr(_probe, "decoded", 0.0)
    _probe.spent = _probe.decoded = 0.0
    failure = published.result.failure
    after = published.after
    line = {
        "source": after.source,
        "group": after.name,
        "seconds": spent,
        "render": rendered,
        "decode": decoded,
    }
    with _printing:
        print(json.dumps(line if failure is None else {**line, "error": str(failure)}), flush=True)


def probed(config: Config, clocks: Clocks, on_published: Callable[[Published], None]) -> Poller:
    """The exporter's Poller, timed: the probe hears of a poll after the exporter's own hook
    (which renders the new Snapshot), so its time is until the data is ready to scrape."""

    def both(published: Published) -> None:
        started = time.perf_counter()
        on_published(published)
        report(published, time.perf_counter() - started)

    return Poller(config, client_factory=timed_client, clocks=clocks, on_published=both)


def main() -> None:
    cli.Poller = probed  # type: ignore[attr-defined,assignment]
    api._json = timed_json
    args = cli.build_parser().parse_args(sys.argv[1:])
    cli.setup_logging(args.log_level, args.log_format, list)
    exporter = cli.Exporter(args)
    exporter.start()
    assert exporter.server is not None
    print(json.dumps({"listen": exporter.server.url}), flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    exporter.stop()


if __name__ == "__main__":
    main()
