"""Durations as sync files and variables write them: a whole number and a unit, e.g. 30s, 30m, 6h, 1d, 1w."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_EXAMPLES = "a duration such as 0s, 30m, 2h, 1d or 1w"
_DURATION = re.compile(r"(\d+)\s*([smhdw])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """The span a duration names; ValueError with the allowed form when it is none."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(DURATION_EXAMPLES)
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"{DURATION_EXAMPLES}, of at most 999999999d") from None


def describe_duration(span: timedelta) -> str:
    """A span in the largest unit that writes it whole: 21600 s is 6h, 90 s is 90s."""
    seconds = int(span.total_seconds())
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
