"""Text exposition primitives shared by every family: content types, HELP/TYPE headers, label
escaping, numbers, lines whose value is an age at scrape time, and a body whose static head is
compressed once. Nothing here knows about Windsurf."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import AnyStr

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """A metric family's name, HELP text and type (gauge, counter or info)."""

    name: str
    help: str
    type: str = "gauge"

    def header(self, openmetrics: bool) -> str:
        """HELP and TYPE lines; OpenMetrics names counters and infos without their suffix."""
        if not openmetrics:
            kind = "gauge" if self.type == "info" else self.type
            return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {kind}\n"
        name = self.name.removesuffix({"counter": "_total", "info": "_info"}.get(self.type, ""))
        return f"# HELP {name} {self.help}\n# TYPE {name} {self.type}\n"


def escape(value: str) -> str:
    """A label value as the exposition formats need it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join([f'{k}="{escape(v)}"' for k, v in pairs]) + "}"


def number(value: float) -> str:
    """Integers without a fraction, other floats as shortest round-trip repr."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def utf8(text: str) -> bytes:
    # JSON can carry lone surrogates; one bad name must not make every scrape fail.
    return text.encode("utf-8", "replace")


def family_lines(header: AnyStr, chunks: list[AnyStr]) -> list[AnyStr]:
    """A family's header and its targets' lines; nothing when no target has any."""
    if not any(chunks):
        return []
    out = [header]
    out.extend(chunks)
    return out


class Ages:
    """Lines whose value is `now - t` at scrape time, clamped at 0 so clock skew reads as 0.

    Kept as [text before the value, a slot for it, newline] per line: a scrape only formats the
    numbers into a copy and joins it, the hot loop of every scrape.
    """

    __slots__ = ("_parts", "_times")

    def __init__(self, lines: Iterable[tuple[str, float]]) -> None:
        self._parts: list[str] = []
        self._times: list[float] = []
        for prefix, t in lines:
            self._parts += (prefix, "", "\n")
            self._times.append(t)

    def render(self, now: float) -> str:
        parts = self._parts.copy()  # scrapes may run concurrently: each fills its own copy
        parts[1::3] = [f"{now - t if t < now else 0.0:.3f}" for t in self._times]
        return "".join(parts)


@dataclass
class StaticBody:
    """The part of a body that only a new poll changes, as pieces (shared, not copied), and
    once a scrape asks for gzip, the pieces compressed with the compressor's state after them,
    so each gzip scrape compresses only what follows."""

    pieces: list[bytes]
    _gzip: zlib._Compress | None = None
    _gzip_head: bytes = b""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def compress(self) -> zlib._Compress:
        """The compressor after the pieces (compressed now if no one did yet), to copy."""
        with self._lock:
            if self._gzip is None:
                compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
                head = [compressor.compress(piece) for piece in self.pieces]
                self._gzip_head = b"".join([*head, compressor.flush(zlib.Z_SYNC_FLUSH)])
                self._gzip = compressor
            return self._gzip

    def body(self, tail: bytes, gzip: bool) -> bytes:
        """The pieces then `tail`, gzip-compressed when asked."""
        if not gzip:
            return b"".join([*self.pieces, tail])
        compressor = self.compress().copy()
        return self._gzip_head + compressor.compress(tail) + compressor.flush()
