"""Durations and sizes as people write them in fluxgate.yaml.

Both parsers take what YAML produced (a number or a string) and return seconds (float) or
bytes (int). They raise ``ValueError`` with a message meant for the user; the loader adds
the key path and line.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Lower-case only: "5M" would be ambiguous between minutes and months, so it is refused
# rather than guessed.
_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
# One or more <number><unit> parts, Go style: "90s", "1h30m", "1.5s", "500ms".
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")

# Units are matched case-insensitively ("kb" == "KB"). SI prefixes are powers of 1000 and
# IEC prefixes powers of 1024, as their standards say; a bare "k"/"m"/"g" is ambiguous
# between the two (nginx means 1024, many tools 1000), so it is refused.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")


def parse_duration(value: object) -> float:
    """Return the duration ``value`` in seconds.

    Accepts a non-negative number (seconds) or a string such as ``"60s"``, ``"5m"``,
    ``"24h"``, ``"90d"``, ``"500ms"``, ``"1h30m"`` or ``"30"``. Raises ``ValueError``.
    """
    if isinstance(value, bool):  # bool is an int subclass; "true" is never a duration
        raise ValueError(f"expected a duration such as 30s, got {str(value).lower()}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"duration must be a finite number >= 0, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s, got {_kind(value)}")
    text = value.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(Decimal(text))
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or a number with a unit "
            "(ms, s, m, h, d), e.g. 500ms, 60s, 5m, 24h, 90d"
        )
    total = sum(Decimal(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(text))
    return float(total)


def parse_size(value: object) -> int:
    """Return the size ``value`` in bytes.

    Accepts a non-negative integer or a string such as ``"16384"``, ``"16KiB"``, ``"10MiB"``,
    ``"1GiB"``, ``"10MB"`` or ``"64kb"`` (SI units are 1000-based, IEC units 1024-based).
    The result must be a whole number of bytes. Raises ``ValueError``.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 16KiB, got {str(value).lower()}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must be >= 0, got {value}")
        return value
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise ValueError(f"size must be a whole number of bytes >= 0, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 16KiB, got {_kind(value)}")
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use a number of bytes or a number with a unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 16KiB, 10MiB, 10MB"
        )
    try:
        amount = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid size {value!r}") from exc
    if amount != amount.to_integral_value():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(amount)


def _kind(value: object) -> str:
    """Name a YAML value's type the way a config author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# Quota rates: "<count>/<window>", fixed UTC windows of one second, minute, hour or day.
RATE_WINDOWS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RATE_LIMIT = 2**32 - 2  # the quota counters' 32-bit count (one value is reserved)
_RATE = re.compile(r"([0-9]+)\s*/\s*([smhd])")


def parse_rate(value: object) -> tuple[int, int]:
    """Return ``(limit, window_seconds)`` for a quota such as ``"1000/m"`` or ``"50000/d"``.

    The window is one of ``s``, ``m``, ``h``, ``d`` (fixed UTC windows: a day quota resets at
    00:00 UTC); the limit is a whole number from 1 to 4294967294. Raises ``ValueError``.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a quota such as 1000/m, got {_kind(value)}")
    match = _RATE.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"invalid quota {value!r}: use <count>/<window> with a window of s, m, h or d, "
            "e.g. 1000/m or 50000/d"
        )
    limit = int(match.group(1))
    if not 1 <= limit <= MAX_RATE_LIMIT:
        raise ValueError(f"invalid quota {value!r}: the count must be between 1 and {MAX_RATE_LIMIT}")
    return limit, RATE_WINDOWS[match.group(2)]


def format_rate(limit: int, window: int) -> str:
    """``(1000, 60)`` → ``"1000/m"`` (the inverse of ``parse_rate``)."""
    unit = next((u for u, s in RATE_WINDOWS.items() if s == window), None)
    return f"{limit}/{unit}" if unit else f"{limit}/{window}s"
