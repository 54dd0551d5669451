"""A run's progress lines: to the caller (a run's log) and to the `wsync` logger, which the CLI prints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

Progress = Callable[[str], None]
logger = logging.getLogger("wsync")


# Set on a record that repeats a delivery's totals: `wsync run` prints them once when the run ends.
TOTALS = "wsync_totals"
# Set on a record that says how far a run has got (a step's pace, which run of several): `wsync run --brief`
# leaves them out; lines saying why nothing moves (a wait for a lock or a pool) have no such flag.
PROGRESS = "wsync_progress"
# A long step says where it is this often at first: every batch would be a line per 65,536 rows. Then
# less often, a third of the time it has taken so far (a six-hour read: a few dozen lines, not 2,000),
# but at least every ten minutes.
EVERY_S = 10.0
AT_LEAST_EVERY_S = 600.0


def report(progress: Progress | None, message: str, *, totals: bool = False) -> None:
    """Say one progress line to the caller, if any, and to the `wsync` logger."""
    logger.info(message, extra={TOTALS: totals, PROGRESS: True})
    if progress is not None:
        progress(message)


def duration(seconds: float) -> str:
    """A rough duration for people: `40 s`, `3 min`, `2 h 05 min`."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def pace(done: float, total: float | None, elapsed_s: float, unit: str) -> str:
    """`12,000 rows/s, about 3 min left`: the rate so far and, with a total, the time left at that rate."""
    if elapsed_s <= 0 or done <= 0:
        return ""
    rate = done / elapsed_s
    said = f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate * 60:,.1f} {unit}/min"
    if total is not None and total > done:
        said += f", about {duration((total - done) / rate)} left"
    return said


class Meter:
    """Where a long step stands: its first batch (the step has begun), then a line every `every_s` or a
    third of the time so far, whichever is longer (at most ten minutes), and its last; each with the rate
    so far and, with a total, the time left."""

    def __init__(
        self,
        progress: Progress | None,
        *,
        total: int | None = None,
        unit: str = "rows",
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.progress, self.total, self.unit, self.every_s, self.clock = progress, total, unit, every_s, clock
        self.started = clock()
        self.said: float | None = None
        self.unsaid: Callable[[str], str] | None = None
        self.done = 0

    def update(self, done: int, line: Callable[[str], str]) -> None:
        """`done` units so far; `line` makes the line from the pace (` (…/s, about … left)` or empty)."""
        self.done, self.unsaid = done, line
        now = self.clock()
        wait = min(AT_LEAST_EVERY_S, max(self.every_s, (now - self.started) / 3))
        if self.said is None or now - self.said >= wait:
            self._say(now)

    def finish(self) -> None:
        """Say the last line, unless it was just said."""
        if self.unsaid is not None:
            self._say(self.clock())

    def _say(self, now: float) -> None:
        elapsed = now - self.started
        # Under a second the rate says nothing a user can use.
        said = pace(self.done, self.total, elapsed, self.unit) if elapsed >= 1 else ""
        assert self.unsaid is not None
        report(self.progress, self.unsaid(f" ({said})" if said else ""))
        self.said, self.unsaid = now, None
