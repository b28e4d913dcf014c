"""Durations as users write them: `90s`, `10m`, `1h30m`, `250ms`, or plain seconds; and
timestamps, ISO 8601 with a time zone."""

from __future__ import annotations

import math
import re
from datetime import datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from a Go-style duration string. Negative and empty values are errors."""
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        if not _WHOLE.fullmatch(value):
            raise ValueError(
                f"invalid duration {text!r}: use e.g. 250ms, 10s, 5m, 1h30m or plain seconds"
            ) from None
        return sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"duration must be a non-negative number: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest string that parse_duration reads back to the same value (to the ms)."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 timestamp that says its time zone: a bare local time is ambiguous."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp: {exc}") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} needs a time zone, e.g. 2026-01-01T12:00:00+00:00")
    return value
