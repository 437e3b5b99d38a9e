"""Text exposition primitives shared by every family: content types, HELP/TYPE headers, label
escaping, numbers, lines whose value is an age at scrape time, and a body whose static head is
compressed once. Nothing here knows about Windsurf."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
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

    Kept as one %-template of all the lines and their times: a scrape formats the numbers into
    it in one call, the hot loop of every scrape, and the lines cost one string, not one each.
    """

    __slots__ = ("_template", "_times")

    def __init__(self, lines: Iterable[tuple[str, float]]) -> None:
        prefixes: list[str] = []
        self._times: list[float] = []
        for prefix, t in lines:
            prefixes.append(prefix.replace("%", "%%"))
            self._times.append(t)
        self._template = "".join([f"{prefix}%.3f\n" for prefix in prefixes])

    def render(self, now: float) -> str:
        return self._template % tuple([now - t if t < now else 0.0 for t in self._times])


# A gzip member's header (RFC 1952): deflate, no name, no time, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def deflated(piece: bytes) -> bytes:
    """`piece` as raw deflate blocks ending on a byte boundary, not final: such blocks of
    separately compressed pieces, concatenated, are one valid deflate stream."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    return compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)


class StaticBody:
    """The part of a body that only a new poll changes, as pieces (shared, not copied), and
    their raw deflate blocks, made once per piece and shared by every body holding the same
    piece object (`shared`, e.g. both formats): a gzip scrape compresses only what follows."""

    __slots__ = ("_crc", "_deflated", "_size", "pieces")

    def __init__(self, pieces: list[bytes], shared: dict[int, tuple[bytes, bytes]]) -> None:
        self.pieces = pieces
        self._deflated: list[bytes] = []
        self._crc = 0
        self._size = 0
        for piece in pieces:
            if id(piece) not in shared:  # the piece is kept with it, so its id stays its own
                shared[id(piece)] = (piece, deflated(piece))
            self._deflated.append(shared[id(piece)][1])
            self._crc = zlib.crc32(piece, self._crc)
            self._size += len(piece)

    def body(self, tail: bytes, gzip: bool) -> bytes:
        """The pieces then `tail`, gzip-compressed when asked."""
        if not gzip:
            return b"".join([*self.pieces, tail])
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
        end = compressor.compress(tail) + compressor.flush()
        trailer = struct.pack("<II", zlib.crc32(tail, self._crc), (self._size + len(tail)) % 2**32)
        return b"".join([_GZIP_HEADER, *self._deflated, end, trailer])
