"""Text exposition primitives shared by every family: content types, HELP/TYPE headers, label
escaping, numbers, lines whose value is an age at scrape time, and a body whose static head is
compressed once. Nothing here knows about Windsurf."""

from __future__ import annotations

import functools
import math
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from isal import isal_zlib

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
    if type(value) is not float:
        value = float(value)
    if value.is_integer() and -1e15 < value < 1e15:
        return str(int(value))
    return repr(value)


def utf8(text: str) -> bytes:
    # JSON can carry lone surrogates; one bad name must not make every scrape fail.
    return text.encode("utf-8", "replace")


T = TypeVar("T", str, bytes, "Piece")


def family_lines(header: T, chunks: Sequence[T]) -> list[T]:
    """A family's header and its targets' lines; nothing when no target has any."""
    if not any(chunks):
        return []
    out = [header]
    out.extend(chunks)
    return out


class Ages:
    """Lines whose value is `now - t` at scrape time, clamped at 0 so clock skew reads as 0.

    Kept as %-templates of the lines (UTF-8, a chunk each of about CHUNK bytes, compressed:
    a tenth of the size, inflated again in a fraction of the time it takes to format them)
    and their times as doubles: a scrape formats each chunk's numbers in one call, the hot
    loop of every scrape, and hands the chunks on one at a time, never the whole text at once.
    """

    __slots__ = ("_chunks", "_latest")

    def __init__(self, prefixes: Sequence[str], times: Sequence[float]) -> None:
        """`prefixes[i]` is the line before its value, `times[i]` the time it is the age of."""
        # Each chunk is compressed by the pool while the next one is made.
        soon = []
        step = max(1, CHUNK // 128)  # lines of a chunk: a line is about a hundred bytes
        for start in range(0, len(prefixes), step):
            template = _template(prefixes[start : start + step])
            soon.append((_soon(_packed, template), len(template)))
        self._chunks = [
            (packed.result(), size, array("d", times[i * step : (i + 1) * step]))
            for i, (packed, size) in enumerate(soon)
        ]
        self._latest = max(times, default=-math.inf)

    def render(self, now: float) -> Iterator[bytes]:
        """The lines at `now`, a chunk at a time."""
        clamp = self._latest >= now  # else no time is ahead of the clock
        for packed, size, times in self._chunks:
            template = isal_zlib.decompress(packed, -15, size)
            if clamp:
                yield template % tuple([now - t if t < now else 0.0 for t in times])
            else:
                yield template % tuple([now - t for t in times])


def _template(prefixes: Sequence[str]) -> bytes:
    """The lines as a %-template with a `%.3f` for each value."""
    if "%" in "".join(prefixes):
        prefixes = [p.replace("%", "%%") for p in prefixes]
    return utf8("%.3f\n".join(prefixes) + "%.3f\n")


def _packed(template: bytes) -> bytes:
    return isal_zlib.compress(template, 1, -15)


# A gzip member's header (RFC 1952): deflate, no name, no time, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# The last block of a deflate stream: final, fixed Huffman codes, empty.
_FINAL_BLOCK = b"\x03\x00"
# Text compressed at scrape time goes to ISA-L in pieces of at least this many bytes.
CHUNK = 1 << 18


def deflated(piece: bytes) -> bytes:
    """`piece` as raw deflate blocks ending on a byte boundary, not final: such blocks of
    separately compressed pieces, concatenated, are one valid deflate stream. ISA-L's level 1,
    not zlib's: 4x as fast on exposition text, a little smaller, any inflater reads it."""
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    return compressor.compress(piece) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)


class Piece(bytes):
    """A piece of exposition text kept only compressed: its raw deflate blocks (`deflated`),
    with the CRC-32 and length of the text, all a gzip body needs of it."""

    crc: int
    size: int


def piece(text: str) -> Piece:
    """A source's lines that only a new poll changes, compressed once when rendered."""
    raw = utf8(text)
    out = Piece(deflated(raw) if raw else b"")
    out.crc = isal_zlib.crc32(raw)
    out.size = len(raw)
    return out


def piece_soon(text: str) -> Future[Piece]:
    """`piece(text)`, made by the pool while the caller formats what follows (ISA-L lets go
    of the GIL): a render's compressing runs on a second core beside its formatting."""
    return _soon(piece, text)


@functools.cache
def header_piece(family: Family, openmetrics: bool) -> Piece:
    return piece(family.header(openmetrics))


def crc32_combine(crc: int, following: int, length: int) -> int:
    """The CRC-32 of A + B from A's, B's (`following`) and B's length, without A or B.

    CRC-32 is affine: crc(A + B) = Z(crc(A)) ^ crc(B), where Z, the register's update by
    `length` zero bytes, is linear: the product of the updates by the powers of two that make
    up `length`, each applied through four byte tables, so it costs a few lookups rather than
    a pass over `length` bytes."""
    register = crc
    power = 0
    while length:
        if length & 1:
            register = _shifted(power, register)
        length >>= 1
        power += 1
    return register ^ following


def _shifted(power: int, register: int) -> int:
    """The register after 2**power zero bytes."""
    t0, t1, t2, t3 = _zeros(power)
    return (
        t0[register & 255] ^ t1[register >> 8 & 255] ^ t2[register >> 16 & 255] ^ t3[register >> 24]
    )


@functools.cache
def _zeros(power: int) -> tuple[array[int], ...]:
    """The update by 2**power zero bytes as a table per byte of the register: linear, so the
    update of a byte's value is the XOR of the updates of its bits (its matrix's columns).
    isal_zlib.crc32 gives the update of one zero byte (without its pre- and post-inversion);
    each next power is the one before applied twice."""
    if power == 0:
        columns = [
            isal_zlib.crc32(b"\0", (1 << bit) ^ 0xFFFFFFFF) ^ 0xFFFFFFFF for bit in range(32)
        ]
    else:
        columns = [_shifted(power - 1, _shifted(power - 1, 1 << bit)) for bit in range(32)]
    tables = []
    for byte in range(4):
        table = array("I", bytes(4 * 256))
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ columns[8 * byte + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def batched(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks in order, the small ones joined up to at least `size` bytes."""
    held: list[bytes] = []
    length = 0
    for chunk in chunks:
        held.append(chunk)
        length += len(chunk)
        if length >= size:
            yield b"".join(held) if len(held) > 1 else chunk
            held, length = [], 0
    if held:
        yield b"".join(held)


# Compresses what a render or a scrape makes while the next of it is formatted (ISA-L lets go
# of the GIL while it works); its threads start with the first render.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deflate")
A = TypeVar("A")
R = TypeVar("R")


def _soon(work: Callable[[A], R], data: A) -> Future[R]:
    """`work(data)` by the pool; done at once when the pool no longer takes work (the
    interpreter is exiting while a poll renders or a scrape is served)."""
    try:
        return _POOL.submit(work, data)
    except RuntimeError:
        done: Future[R] = Future()
        done.set_result(work(data))
        return done


class StaticBody:
    """The part of a body that only a new poll changes, as compressed pieces (shared, not
    copied: a piece is compressed once, when its source renders it) and the CRC-32 and
    length of their text: a gzip scrape compresses only what follows."""

    __slots__ = ("_crc", "_size", "pieces")

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self._crc = 0
        self._size = 0
        for p in pieces:
            self._crc = crc32_combine(self._crc, p.crc, p.size)
            self._size += p.size

    def body(self, tail: Iterable[bytes], gzip: bool) -> bytes:
        """The pieces then `tail`, gzip-compressed when asked: each chunk of the tail is
        compressed while the next one is made. Uncompressed (rare: Prometheus asks for gzip),
        it is the gzip body inflated into one buffer of its known size: the text is never
        held twice, as joining inflated pieces would."""
        crc, size = self._crc, self._size
        blocks = []
        for chunk in batched(tail, CHUNK):
            blocks.append(_soon(deflated, chunk))
            crc = isal_zlib.crc32(chunk, crc)
            size += len(chunk)
        trailer = struct.pack("<II", crc, size % 2**32)
        packed = b"".join(
            [_GZIP_HEADER, *self.pieces, *[b.result() for b in blocks], _FINAL_BLOCK, trailer]
        )
        return packed if gzip else isal_zlib.decompress(packed, 31, size)
