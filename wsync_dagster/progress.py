"""A run's progress lines: to the caller (a run's log) and to the `wsync` logger, which the CLI prints."""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[str], None]
logger = logging.getLogger("wsync")


# Set on a record that repeats a delivery's totals: `wsync run` prints them once when the run ends.
TOTALS = "wsync_totals"


def report(progress: Progress | None, message: str, *, totals: bool = False) -> None:
    """Say one progress line to the caller, if any, and to the `wsync` logger."""
    logger.info(message, extra={TOTALS: totals})
    if progress is not None:
        progress(message)
