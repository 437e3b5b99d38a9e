"""Upstream JSON values -> Python values, forgiving about what the Windsurf API really sends.

Any field may be missing or null, 64-bit numbers may arrive as strings (protobuf JSON), times are
RFC 3339 with 0-9 fraction digits and any offset. Every source reads its fields with these;
the work per value is bounded whatever its length, and the `*_field` readers also say when a
value is unusable (malformed or impossible), so a source can count it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from exporter.state import MalformedResponse

# Unambiguous, so a match is linear: `[0-9]+\.?[0-9]*` backtracked quadratically over long digits.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UTC = "+00:00"
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}")
_fromisoformat = datetime.fromisoformat  # looked up once: it reads every time of every row
_TENS = tuple(10**n for n in range(10))  # 10**digits of a fraction
# Longer than any number or RFC 3339 time the API writes (a double's repr fits in 24, a time
# with 9 fraction digits and an offset in 35): refused before any regex or parser sees them.
MAX_NUMBER_TEXT = 64
# Distinct values a reply's reader keeps once, whatever the reply holds.
MEMO = 4096
K = TypeVar("K")
MAX_TIME_TEXT = 64


def parse_time(value: Any) -> float | None:
    """RFC 3339 -> Unix seconds; None for missing, malformed, or the zero time meaning 'never'."""
    seconds = _seconds(value)
    return seconds if seconds is not None and seconds > 0 else None


def _seconds(value: Any) -> float | None:
    """RFC 3339 -> Unix seconds, the epoch and before included; None when malformed.

    `datetime.fromisoformat` does the calendar; it also takes forms RFC 3339 does not (no
    offset, basic format, hours only, more fraction digits), so the shape is checked first.
    """
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        return None
    text = value.strip()
    if len(text) < 20 or not text.isascii() or text[10] not in "Tt " or text[19] not in ".Zz+-":
        return None
    head = text[:19]
    if not _DATE_TIME.fullmatch(head):  # fromisoformat also takes week dates, basic times
        return None
    if text[19] == ".":
        rest = text[20:].lstrip("0123456789")
        digits = len(text) - len(rest) - 20
        if not 1 <= digits <= 9:
            return None
        fraction = int(text[20 : 20 + digits]) / _TENS[digits]
    else:
        rest, fraction = text[19:], 0.0
    offset = _UTC if rest in ("Z", "z") else _offset(rest)
    if offset is None:
        return None
    try:
        if head[17:] == "60":  # a leap second is the next second's start
            whole = _fromisoformat(head[:17] + "59" + offset).timestamp() + 1
        else:
            whole = _fromisoformat(head + offset).timestamp()
    except ValueError:
        return None
    return whole + fraction if fraction else whole


def _offset(text: str) -> str | None:
    """`Z`, `+hh:mm` or `+hhmm` -> `+hh:mm` (fromisoformat checks the hours); None otherwise."""
    if text in ("Z", "z"):
        return _UTC
    if len(text) == 5:
        text = text[:3] + ":" + text[3:]
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":" or not text[4:].isdigit():
        return None
    return text if text[4:] < "60" else None


def parse_number(value: Any) -> float | None:
    """A JSON number or a numeric string -> float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and (
        len(value) > MAX_NUMBER_TEXT or not _NUMBER.fullmatch(value.strip())
    ):
        return None  # float() would also take "1_000", "inf" spelled out, or non-ASCII digits
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):  # OverflowError: a JSON integer beyond a double
        return None
    return number if math.isfinite(number) else None


# The field readers below say, besides the value, whether the upstream sent one that is not
# usable (malformed or impossible): read as unknown and counted, never exported as data.


def time_field(value: Any, latest: float) -> tuple[float | None, bool]:
    """A time that cannot be after `latest` (when it was asked, plus clock skew): (time or
    None, unusable?). Absent, null, or the zero time (at or before 1970) mean never."""
    if value is None or value == "":
        return None, False
    seconds = _seconds(value)
    if seconds is None or seconds > latest:
        return None, True
    return (seconds, False) if seconds > 0 else (None, False)


def count_field(value: Any, maximum: float) -> tuple[float | None, bool]:
    """A count in [0, maximum]: (count or None, unusable?); absent or null is 0, since
    protobuf JSON omits zero-valued fields."""
    if type(value) is str and len(value) <= MAX_NUMBER_TEXT and value.isascii() and value.isdigit():
        value = float(value)  # the usual form, read as parse_number reads it, only faster
    if (type(value) is int or type(value) is float) and 0 <= value <= maximum:
        return float(value), False
    if value is None:
        return 0.0, False
    number = parse_number(value)
    if number is None or not 0 <= number <= maximum:
        return None, True
    return number, False


def bool_field(value: Any) -> tuple[bool, bool]:
    """true/false (any case, also as strings) or a number: (flag, unusable?); absent is false."""
    if value is None or isinstance(value, bool):
        return bool(value), False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true", False
    number = parse_number(value)
    return number is not None and number != 0, number is None


def text_field(value: Any) -> tuple[str, bool]:
    """A string field: (text, unusable?); absent or null is empty, anything else unusable."""
    if value is None:
        return "", False
    return (value, False) if isinstance(value, str) else ("", True)


def json_object(document: Any) -> Mapping[str, Any]:
    """A reply's top level, a JSON object for every method; MalformedResponse otherwise."""
    if not isinstance(document, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(document).__name__}")
    return document


def json_list(document: Mapping[str, Any], key: str) -> list[Any]:
    """A repeated field: absent or null is empty (protobuf JSON leaves an empty list out);
    MalformedResponse when it is not a list."""
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedResponse(f"{key} is not a list")
    return value


def fresh(text: str) -> str:
    """A copy of `text` in memory of its own, for a string kept from a decoded reply: the
    reply's own string would keep the allocator's arena it shares with the reply's freed
    values resident as long as it lives (33 MB for a reply of 50,000 rows)."""
    return "".join((text, ""))


def kept_once(seen: dict[K, K], value: K) -> K:
    """The first value equal to `value` a reply's reader saw (of at most MEMO kept): the many
    rows repeating a value share one object."""
    return seen.setdefault(value, value) if len(seen) < MEMO else seen.get(value, value)
