"""The gzip body's primitives: pieces kept only compressed, the CRC-32 of a whole body from its
pieces', scrape-time lines in chunks, and bodies that decompress to exactly their text."""

from __future__ import annotations

import gzip
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from exporter import exposition
from exporter.exposition import (
    CHUNK,
    Ages,
    StaticBody,
    batched,
    crc32_combine,
    piece,
    piece_soon,
)
from tests.conftest import inflated

NOW = 1_750_000_000.25
# Lengths around the zero buffer's size and the chunk size, where an off-by-one would hide.
LENGTHS = (0, 1, 7, 65_535, 65_536, 65_537, CHUNK - 1, CHUNK + 1, 300_001, 2**22 + 2**21 + 3)


def text_of(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice('abcdefgh{}=," 0123456789\n%é') for _ in range(length))


@pytest.mark.parametrize("length", LENGTHS)
def test_the_crc_of_two_texts_joined_comes_from_their_crcs_and_the_second_ones_length(
    length: int,
) -> None:
    first, second = random.Random(length).randbytes(1000), random.Random(-length).randbytes(length)
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)
    # From an empty start, as a body's first piece is combined.
    assert crc32_combine(0, zlib.crc32(second), len(second)) == zlib.crc32(second)


def test_a_piece_holds_its_text_compressed_with_the_text_crc_and_utf8_length() -> None:
    text = 'windsurf_user_info{user="zoë"} 1\n' * 1000
    p = piece(text)
    assert len(p) < len(text) // 10
    assert p.size == len(text.encode())
    assert p.crc == zlib.crc32(text.encode())
    assert inflated([p]) == text.encode()


def test_an_empty_piece_is_empty_so_a_family_without_lines_has_no_header() -> None:
    empty = piece("")
    assert (bytes(empty), empty.size, empty.crc) == (b"", 0, 0)
    assert not empty


def test_a_lone_surrogate_of_a_json_name_does_not_fail_the_piece() -> None:
    assert inflated([piece('a{user="\ud800"} 1\n')]) == b'a{user="?"} 1\n'


def test_pieces_compressed_apart_inflate_in_order_to_their_texts_joined() -> None:
    texts = [text_of(n, n) for n in LENGTHS]
    assert inflated([piece(t) for t in texts]) == "".join(texts).encode()


def test_a_gzip_body_is_its_pieces_then_its_tail_whatever_the_chunks() -> None:
    texts = [text_of(n, n) for n in (10, 70_000, 0, 5)]
    body = StaticBody([piece(t) for t in texts])
    # Small chunks joined, a chunk of exactly CHUNK, one larger, an empty one, a last small one.
    tail = [b"x" * 10, b"y" * 20, b"z" * CHUNK, b"w" * (CHUNK * 2 + 3), b"", b"end\n"]
    expected = "".join(texts).encode() + b"".join(tail)
    assert gzip.decompress(body.body(iter(tail), gzip=True)) == expected
    assert body.body(iter(tail), gzip=False) == expected
    assert gzip.decompress(body.body(iter([]), gzip=True)) == "".join(texts).encode()
    assert gzip.decompress(StaticBody([]).body(iter([]), gzip=True)) == b""


def test_batched_keeps_order_and_bytes_and_joins_small_chunks_up_to_the_size() -> None:
    chunks = [bytes([65 + i]) * n for i, n in enumerate((3, 4, 10, 1, 1, 2))]
    out = list(batched(chunks, 8))
    assert b"".join(out) == b"".join(chunks)
    assert [len(c) for c in out] == [17, 4]


def test_ages_in_many_chunks_read_as_each_line_formatted_alone() -> None:
    rng = random.Random(1)
    lines = [
        (f'age{{user="u{i}%",feature="f"}} ', NOW - rng.uniform(0, 9e7)) for i in range(20_000)
    ]
    lines[15_000] = ("skewed ", NOW + 30)  # one time ahead of the clock, in a later chunk
    ages = Ages([p for p, _ in lines], [t for _, t in lines])
    chunks = list(ages.render(NOW))
    assert len(chunks) > 2
    assert (
        b"".join(chunks)
        == "".join(
            f"{prefix}{now_minus:.3f}\n"
            for prefix, now_minus in ((p, NOW - t if t < NOW else 0.0) for p, t in lines)
        ).encode()
    )
    # Every time in the past: the unclamped path gives the same text as the clamped one.
    later = NOW + 60
    assert (
        b"".join(ages.render(later)) == "".join(f"{p}{later - t:.3f}\n" for p, t in lines).encode()
    )


def test_compressing_still_works_once_the_pool_takes_no_more_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As while the interpreter exits: a poll rendering or a scrape being served must finish.
    closed = ThreadPoolExecutor(max_workers=1)
    closed.shutdown()
    monkeypatch.setattr(exposition, "_POOL", closed)
    text = 'a{user="x"} 1\n' * 100
    assert inflated([piece_soon(text).result()]) == text.encode()
    ages = Ages(["b "], [NOW - 2.0])
    assert b"".join(ages.render(NOW)) == b"b 2.000\n"
    body = StaticBody([piece(text)]).body(iter([b"c 1\n"]), gzip=True)
    assert zlib.decompress(body, 31) == text.encode() + b"c 1\n"
