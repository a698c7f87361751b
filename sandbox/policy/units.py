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
_SIZE_RE = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*")
_DURATION_PART_RE = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]+)")
_PLAIN_NUMBER_RE = re.compile(rf"\s*({_NUMBER})\s*")

# For the JSON Schema (sandbox/schema.json): the same grammar as the parsers, for editors.
SIZE_PATTERN = (
    r"^\s*[0-9]+(\.[0-9]+)?\s*"
    r"([bB]|[kKmMgGtT]|[kKmMgGtT][iI][bB]|[kKmMgGtT][bB])?\s*$"
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


def parse_size(value: str | int) -> int:
    """Bytes in `value`: an int (bytes) or a string such as "512MiB", "64k", "1GB"."""
    if isinstance(value, bool):  # bool is an int subclass; True bytes is a mistake
        raise UnitError(f"{value!r} is not a size: expected {_SIZE_HELP}")
    if isinstance(value, int):
        number = Decimal(value)
        unit = ""
    else:
        match = _SIZE_RE.fullmatch(value)
        if match is None:
            raise UnitError(f"{value!r} is not a size: expected {_SIZE_HELP}")
        number = Decimal(match.group(1))
        unit = match.group(2)
    multiplier = SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise UnitError(f"{value!r} has an unknown size unit {unit!r}: expected {_SIZE_HELP}")
    if number < 0:
        raise UnitError(f"{value!r} is negative: a size must be 0 or more")
    result = int(number * multiplier)  # int() of a Decimal rounds toward zero
    if result > _MAX_SIZE:
        raise UnitError(f"{value!r} is too large: the limit is {_MAX_SIZE} bytes")
    return result


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a number (seconds) or a string such as "10s", "500ms", "1h30m"."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration: expected {_DURATION_HELP}")
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
        raise UnitError(f"{value!r} is negative: a duration must be 0 or more")
    if total > Decimal(_MAX_DURATION):
        raise UnitError(f"{value!r} is too long: the limit is 366 days")
    return float(total)


def _parse_duration_text(text: str) -> Decimal:
    plain = _PLAIN_NUMBER_RE.fullmatch(text)
    if plain is not None:
        return Decimal(plain.group(1))
    total = Decimal(0)
    pos = 0
    stripped = text.rstrip()
    if not stripped.strip():
        raise UnitError(f"{text!r} is not a duration: expected {_DURATION_HELP}")
    while pos < len(stripped):
        part = _DURATION_PART_RE.match(stripped, pos)
        if part is None:
            raise UnitError(f"{text!r} is not a duration: expected {_DURATION_HELP}")
        unit = part.group(2)
        multiplier = DURATION_UNITS.get(unit.lower())
        if multiplier is None:
            raise UnitError(
                f"{text!r} has an unknown duration unit {unit!r}: expected {_DURATION_HELP}"
            )
        total += Decimal(part.group(1)) * multiplier
        pos = part.end()
    return total
