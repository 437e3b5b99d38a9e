"""The benchmark's floor: a server that only sends a fixed gzip body from memory, the least any
exporter can cost per scrape for a body of that size. Run by bench/run.py with the same protocol
as the exporters, on the body ours served in the same run:

    python bench/floor.py --body body.gz

It prints `{"listen": url}` once serving and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", type=Path, required=True, help="the gzip body to serve")
    parser.add_argument("--config.file", help="ignored: the exporters' protocol")
    body = parser.parse_args().body.read_bytes()

    class Fixed(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"listen": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
