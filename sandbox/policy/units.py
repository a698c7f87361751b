"""Sizes and durations as people write them in policies: "512MiB", "64k", "10m", "500ms".

Sizes: a plain integer is bytes. IEC suffixes (KiB MiB GiB TiB) are powers of 1024, SI
suffixes (kB MB GB TB) powers of 1000, and a bare letter (k M G T) is a power of 1024, as
in systemd, Docker and dd(1). Suffixes are case-insensitive; fractions are allowed
("1.5GiB") and rounded down to whole bytes.

Durations: a plain number is seconds. Units: ms, s, m (or min), h, d; several may be
concatenated ("1h30m", "1m 30s"), as in systemd.

Errors are UnitError (a ValueError) whose message says what was expected.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_PATTERN",
    "SIZE_PATTERN",
    "UnitError",
    "parse_duration",
    "parse_size",
]

# Largest value we accept: what fits a signed 64-bit rlimit/cgroup value.
_MAX_SIZE = 2**63 - 1
# A year; anything longer in a sandbox policy is a typo, and float seconds stay exact.
_MAX_DURATION = 366 * 24 * 3600.0

SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}

DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "sec": Decimal(1),
    "m": Decimal(60),
    "min": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# Matched against text stripped of surrounding whitespace, so that the only whitespace run
# a pattern meets is the one between a number and its unit: two adjacent \s* around an
# optional part made the regex backtrack quadratically (17 s at 60,000 spaces).
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([a-zA-Z]*)")
_DURATION_PART_RE = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]+)")
_PLAIN_NUMBER_RE = re.compile(_NUMBER)
# Digits of a number before and after its point: more than any limit can use, so longer
# numbers are refused before they are converted (Decimal of a megabyte of digits is slow,
# and a size past 2**63 is refused anyway).
_MAX_DIGITS = 30

# For the JSON Schema (sandbox/schema.json): the same grammar as the parsers, for editors.
# Written so that a backtracking engine stays linear: no two whitespace runs can share the
# same spaces (the unit and its trailing spaces are one optional group).
SIZE_PATTERN = (
    r"^\s*[0-9]+(\.[0-9]+)?\s*"
    r"(([bB]|[kKmMgGtT]|[kKmMgGtT][iI][bB]|[kKmMgGtT][bB])\s*)?$"
)
DURATION_PATTERN = (
    r"^\s*[0-9]+(\.[0-9]+)?\s*$"
    r"|^(\s*[0-9]+(\.[0-9]+)?\s*([mM][sS]|[sS]|[sS][eE][cC]|[mM]|[mM][iI][nN]|[hH]|[dD]))+\s*$"
)

_SIZE_HELP = (
    "a number of bytes with an optional unit (B, k, M, G, KiB, MiB, GiB, kB, MB, GB), e.g. 512MiB"
)
_DURATION_HELP = "a number of seconds or a number with a unit (ms, s, m, h, d), e.g. 10s, 5m, 1h30m"


class UnitError(ValueError):
    """A malformed size or duration; the message says what was expected."""


def _shown(value: object) -> str:
    """`value` as an error message quotes it: at most 40 characters (a policy may hold a
    megabyte in one value; the message names it, it does not repeat it)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}...{text[-1]}"


def _number(text: str, value: object, what: str) -> Decimal:
    whole, _, fraction = text.partition(".")
    if len(whole.lstrip("0")) > _MAX_DIGITS:
        raise UnitError(f"{_shown(value)} is too large for a {what}")
    if len(fraction) > _MAX_DIGITS:
        raise UnitError(f"{_shown(value)} has more than {_MAX_DIGITS} decimals")
    return Decimal(text)


def parse_size(value: str | int) -> int:
    """Bytes in `value`: an int (bytes) or a string such as "512MiB", "64k", "1GB"."""
    if isinstance(value, bool):  # bool is an int subclass; True bytes is a mistake
        raise UnitError(f"{value!r} is not a size: expected {_SIZE_HELP}")
    if isinstance(value, int):
        if value > _MAX_SIZE:
            raise UnitError(f"{_shown(value)} is too large: the limit is {_MAX_SIZE} bytes")
        number = Decimal(value)
        unit = ""
    else:
        match = _SIZE_RE.fullmatch(value.strip())
        if match is None:
            raise UnitError(f"{_shown(value)} is not a size: expected {_SIZE_HELP}")
        number = _number(match.group(1), value, "size")
        unit = match.group(2)
    multiplier = SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise UnitError(
            f"{_shown(value)} has an unknown size unit {_shown(unit)}: expected {_SIZE_HELP}"
        )
    if number < 0:
        raise UnitError(f"{_shown(value)} is negative: a size must be 0 or more")
    result = int(number * multiplier)  # int() of a Decimal rounds toward zero
    if result > _MAX_SIZE:
        raise UnitError(f"{_shown(value)} is too large: the limit is {_MAX_SIZE} bytes")
    return result


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a number (seconds) or a string such as "10s", "500ms", "1h30m"."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration: expected {_DURATION_HELP}")
    if isinstance(value, int) and value > _MAX_DURATION:
        raise UnitError(f"{_shown(value)} is too long: the limit is 366 days")
    if isinstance(value, int | float):
        try:
            total = Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - Decimal accepts every float
            raise UnitError(f"{value!r} is not a duration: expected {_DURATION_HELP}") from exc
        if not total.is_finite():
            raise UnitError(f"{value!r} is not a duration: expected {_DURATION_HELP}")
    else:
        total = _parse_duration_text(value)
    if total < 0:
        raise UnitError(f"{_shown(value)} is negative: a duration must be 0 or more")
    if total > Decimal(_MAX_DURATION):
        raise UnitError(f"{_shown(value)} is too long: the limit is 366 days")
    return float(total)


def _parse_duration_text(text: str) -> Decimal:
    stripped = text.strip()
    if _PLAIN_NUMBER_RE.fullmatch(stripped) is not None:
        return _number(stripped, text, "duration")
    total = Decimal(0)
    pos = 0
    if not stripped:
        raise UnitError(f"{_shown(text)} is not a duration: expected {_DURATION_HELP}")
    while pos < len(stripped):
        part = _DURATION_PART_RE.match(stripped, pos)
        if part is None:
            raise UnitError(f"{_shown(text)} is not a duration: expected {_DURATION_HELP}")
        unit = part.group(2)
        multiplier = DURATION_UNITS.get(unit.lower())
        if multiplier is None:
            raise UnitError(
                f"{_shown(text)} has an unknown duration unit {_shown(unit)}: "
                f"expected {_DURATION_HELP}"
            )
        total += _number(part.group(1), text, "duration") * multiplier
        if total > _MAX_DURATION:  # a megabyte of "9999999d" parts stops at the first
            raise UnitError(f"{_shown(text)} is too long: the limit is 366 days")
        pos = part.end()
    return total
