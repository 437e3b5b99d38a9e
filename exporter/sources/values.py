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
from datetime import date
from typing import Any, TypeVar

from exporter.state import MalformedResponse

# Unambiguous, so a match is linear: `[0-9]+\.?[0-9]*` backtracked quadratically over long digits.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")
_EPOCH_DAY = date(1970, 1, 1).toordinal()
# The seconds each part of an RFC 3339 time adds to (or, the offset, takes from) the epoch's,
# by its text with the separator after it: the parts a reply's times share are read once and
# looked up after, the dates and offsets as they come (at most MEMO of each), every `hh:mm:`
# and `ss` (60: a leap second, the next second's start) up front.
_DAYS: dict[str, int] = {}
_ZONES: dict[str, int] = {"Z": 0, "z": 0}
_CLOCKS = {f"{h:02}:{m:02}:": h * 3600 + m * 60 for h in range(24) for m in range(60)}
_SECONDS = {f"{s:02}": s for s in range(61)}
# Longer than any number or RFC 3339 time the API writes (a double's repr fits in 24, a time
# with 9 fraction digits and an offset in 35): refused before any regex or parser sees them.
MAX_NUMBER_TEXT = 64
# Distinct values a reply's reader keeps once, whatever the reply holds (the time reader: of
# each part of a time, whatever the process reads).
MEMO = 4096
K = TypeVar("K")
MAX_TIME_TEXT = 64


def parse_time(value: Any) -> float | None:
    """RFC 3339 -> Unix seconds; None for missing, malformed, or the zero time meaning 'never'."""
    seconds = _seconds(value)
    return seconds if seconds is not None and seconds > 0 else None


def _seconds(value: Any) -> float | None:
    """RFC 3339 -> Unix seconds, the epoch and before included; None when malformed.

    Each part is checked and read on its own (dates, `hh:mm`, seconds and offsets mostly
    looked up), so forms ISO 8601 has and RFC 3339 does not (no offset, basic format, week
    dates, hours only, more fraction digits) are refused.
    """
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        return None
    text = value.strip()
    if len(text) < 20 or not text.isascii():
        return None
    day = _DAYS.get(text[:11])
    clock = _CLOCKS.get(text[11:17])
    second = _SECONDS.get(text[17:19])
    if clock is None or second is None or (day is None and (day := _day(text[:11])) is None):
        return None
    if text[19] == ".":
        rest = text[20:].lstrip("0123456789")
        end = len(text) - len(rest)
        if not 21 <= end <= 29:  # 1 to 9 digits
            return None
        fraction = float(text[19:end])  # = int(digits) / 10**digits, both rounded right
    else:
        rest, fraction = text[19:], 0.0
    zone = _ZONES.get(rest)
    if zone is None and (zone := _zone(rest)) is None:
        return None
    whole = float(day + clock + second - zone)
    return whole + fraction if fraction else whole


def _day(text: str) -> int | None:
    """`yyyy-mm-ddT` -> the seconds from the epoch to its start, kept; None for no such date."""
    if not _DATE.fullmatch(text):
        return None
    try:
        day = date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_DAY
    except ValueError:  # no such day, month, or year 0
        return None
    return _kept(_DAYS, text, day * 86400)


def _zone(text: str) -> int | None:
    """`+hh:mm` or `+hhmm` (hours below 24) -> seconds east of UTC, kept; None otherwise."""
    hours, minutes = text[1:3], text[-2:]
    if (
        len(text) - (text[3:4] == ":") != 5
        or text[0] not in "+-"
        or not (hours + minutes).isdigit()
        or hours > "23"
        or minutes > "59"
    ):
        return None
    seconds = int(hours) * 3600 + int(minutes) * 60
    return _kept(_ZONES, text, seconds if text[0] == "+" else -seconds)


def _kept(memo: dict[str, int], text: str, seconds: int) -> int:
    if len(memo) < MEMO:
        memo[text] = seconds
    return seconds


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
