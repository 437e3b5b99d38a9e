"""windsurf-exporter as it runs in production (`cli.Exporter`), plus the one probe the benchmark
needs: how long each group's poll spends between the upstream response and the published
Snapshot. Run by bench/run.py with the same protocol as bench/baseline.py:

    python bench/ours.py --config.file config.yaml

It prints `{"listen": url}` once serving, then `{"group": g, "seconds": s}` per polled group,
and exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import httpx

from exporter import cli
from exporter.api import Client, Clocks
from exporter.config import Config
from exporter.model import Page
from exporter.poller import Poller

# Each group is polled in a thread of its own, so the probe keeps its clock per thread.
_probe = threading.local()


class TimedClient(Client):
    """Times what follows each response: decoding it into a Page."""

    def _decode(self, response: httpx.Response, content: bytes) -> Page:
        started = time.perf_counter()
        try:
            return super()._decode(response, content)
        finally:
            _probe.spent = getattr(_probe, "spent", 0.0) + time.perf_counter() - started
            _probe.decoded = time.perf_counter()


class TimedPoller(Poller):
    """Adds the time from the last decoded page to the published Snapshot, and reports it."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        def client(config: Config, clocks: Clocks) -> Client:
            return TimedClient(config.api, clocks=clocks, max_connections=config.poll.concurrency)

        super().__init__(config, client_factory=client, **kwargs)

    def _commit(self, group: str, *args: Any) -> None:
        super()._commit(group, *args)
        decoded = getattr(_probe, "decoded", time.perf_counter())
        spent = getattr(_probe, "spent", 0.0) + time.perf_counter() - decoded
        _probe.spent = 0.0
        failure = args[-1]  # the ApiError, if the poll failed
        line = {"group": group, "seconds": spent}
        print(json.dumps(line if failure is None else {**line, "error": str(failure)}), flush=True)


def main() -> None:
    cli.Poller = TimedPoller  # type: ignore[attr-defined,assignment]
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
