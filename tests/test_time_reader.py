"""The RFC 3339 reader against the one it replaced (a regex for the shape, then
`datetime.fromisoformat`), over generated and hostile strings: the same accept/refuse decision
and the same float for every one."""

from __future__ import annotations

import random
import re
import string
from datetime import datetime
from typing import Any

import pytest

from exporter.sources.values import _seconds

_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}")
_TENS = tuple(10**n for n in range(10))


def replaced(value: Any) -> float | None:
    """The reader before the parts were looked up, as it was."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    if len(text) < 20 or not text.isascii() or text[10] not in "Tt " or text[19] not in ".Zz+-":
        return None
    head = text[:19]
    if not _DATE_TIME.fullmatch(head):
        return None
    if text[19] == ".":
        rest = text[20:].lstrip("0123456789")
        digits = len(text) - len(rest) - 20
        if not 1 <= digits <= 9:
            return None
        fraction = int(text[20 : 20 + digits]) / _TENS[digits]
    else:
        rest, fraction = text[19:], 0.0
    offset = "+00:00" if rest in ("Z", "z") else _offset(rest)
    if offset is None:
        return None
    try:
        if head[17:] == "60":
            whole = datetime.fromisoformat(head[:17] + "59" + offset).timestamp() + 1
        else:
            whole = datetime.fromisoformat(head + offset).timestamp()
    except ValueError:
        return None
    return whole + fraction if fraction else whole


def _offset(text: str) -> str | None:
    if text in ("Z", "z"):
        return "+00:00"
    if len(text) == 5:
        text = text[:3] + ":" + text[3:]
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":" or not text[4:].isdigit():
        return None
    return text if text[4:] < "60" else None


def _two(rng: random.Random, low: int, high: int) -> str:
    """Two digits, mostly within [low, high], else just past a bound or odd."""
    if rng.random() < 0.95:
        return f"{rng.randint(low, high):02}"
    return rng.choice([f"{low - 1:02}", f"{high + 1:02}", "99", "-1", "1", "\u0661\u0662"])


def _zone(rng: random.Random) -> str:
    hours, minutes = _two(rng, 0, 23), _two(rng, 0, 59)
    if rng.random() < 0.9:
        return rng.choice(
            ["Z", "z", f"+{hours}:{minutes}", f"-{hours}:{minutes}", f"+{hours}{minutes}"]
        )
    return rng.choice(["", f"+{hours}", f"{hours}:{minutes}", f"+{hours}:{minutes}:00", "+0:00"])


def generated(rng: random.Random) -> str:
    """A time made of parts that are each valid or just not: years 0 to 9999, days past their
    month's end (leap years included), hours 24, leap seconds, 0 to 11 fraction digits."""
    year = rng.choice([rng.randrange(10000), 0, 1, 1969, 1970, 2000, 2024, 2100, 9999])
    digits = rng.choice([0, 0, 1, 3, 6, 9, rng.randrange(12)])
    fraction = "." + "".join(rng.choices(string.digits, k=digits)) if digits else ""
    return (
        f"{year:04}-{_two(rng, 1, 12)}-{_two(rng, 1, 31)}{rng.choice('TTTTTtt _')}"
        f"{_two(rng, 0, 23)}:{_two(rng, 0, 59)}:{_two(rng, 0, 60)}"
        f"{rng.choice([fraction] * 9 + ['.', ','])}{_zone(rng)}"
    )


NASTY = "0123456789-:.TtZz+- ,_\t\n\x0b\x1c\x85\u00a0\u0660\u0661\u0662\u0969\U0001d7ce\ud800é"


def mutated(rng: random.Random, text: str) -> str:
    """A time with characters replaced, inserted or dropped, or padded."""
    chars = list(text)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(chars) + 1)
        action = rng.randrange(4)
        if action == 0 and where < len(chars):
            chars[where] = rng.choice(NASTY)
        elif action == 1:
            chars.insert(where, rng.choice(NASTY))
        elif action == 2 and where < len(chars):
            del chars[where]
        else:
            chars = [rng.choice(" \t\n\x85\u2028"), *chars, rng.choice(" \r\x1f")]
    return "".join(chars)


def same(value: Any) -> None:
    expected, got = replaced(value), _seconds(value)
    assert (type(got), got) == (type(expected), expected), repr(value)


@pytest.mark.parametrize("seed", range(8))
def test_generated_times_read_as_before(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(5000):
        text = generated(rng)
        same(text)
        same(mutated(rng, text))
        accepted += replaced(text) is not None
    assert 500 < accepted < 4500  # both decisions are exercised


@pytest.mark.parametrize(
    "value",
    [
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.999999999-23:59",
        "9999-12-31T23:59:60.5+00:00",
        "0001-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00-23:59",
        "0000-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999999Z",
        "1970-01-01T00:00:00Z",
        "2024-02-29t12:00:00z",
        "2024-02-29 12:00:00+0530",
        "2024-02-30T12:00:00Z",
        "2024-10-10T24:00:00Z",
        "2024-10-10T23:60:00Z",
        "2024-10-10T23:59:61Z",
        "2024-10-10T22:56:10+24:00",
        "2024-10-10T22:56:10+2a:00",
        "2024-10-10T22:56:10+ 5:00",
        "2024-10-10T22:56:10+-5:00",
        "2024-10-10T22:56:10+05:3",
        "2024-10-10T22:56:10+05::3",
        "2024-10-10T22:56:10.Z",
        "2024-10-10T22:56:10.1234567890Z",
        "2024-W41-4T22:56:10Z",
        "+002024-10-10T22:56:10Z",
        "2024-10-10T22:56:10.5",
        "20241010T225610Z",
        "  2024-10-10T22:56:10Z \n",
        "\x852024-10-10T22:56:10Z",
        "2024-10-10T22:56:10Z" + " " * 44,
        "2024-10-10T22:56:10Z" + " " * 45,
        "2024-1O-10T22:56:10Z",
        "2024-10-10T2\uff12:56:10Z",
        "",
        "Z",
        None,
        1728600970,
        1728600970.5,
        True,
        ["2024-10-10T22:56:10Z"],
        {"t": "2024-10-10T22:56:10Z"},
    ],
)
def test_edge_times_read_as_before(value: Any) -> None:
    same(value)
