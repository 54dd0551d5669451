"""Progress lines of long steps: a rate, the time left when the total is known, and not a line per batch.

The clock is a list of readings, so what a line says follows from the rows and the seconds given."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

from wsync_dagster.backfill import Progress as BackfillProgress
from wsync_dagster.progress import Meter


def clock(*readings: float):
    """A clock that returns these readings in turn (seconds)."""
    times: Iterator[float] = iter(readings)
    return lambda: next(times)


def test_a_step_with_a_known_total_says_its_rate_and_the_time_left_every_ten_seconds():
    lines: list[str] = []
    # Started at 0; batches at 4 s (the first: said), 9 s (not yet), 14 s (10 s since the last line: said),
    # 20 s (not yet) and the last at 22 s.
    meter = Meter(lines.append, total=200_000, clock=clock(0, 4, 9, 14, 20, 22, 22))
    for done, staged in ((20_000, "20,000"), (45_000, "45,000"), (70_000, "70,000"), (190_000, "190,000")):
        meter.update(done, lambda pace, staged=staged: f"staged {staged} of 200,000{pace}")
    meter.update(200_000, lambda pace: f"staged 200,000 of 200,000{pace}")
    meter.finish()
    assert lines == [
        "staged 20,000 of 200,000 (5,000 rows/s, about 36 s left)",
        "staged 70,000 of 200,000 (5,000 rows/s, about 26 s left)",
        "staged 200,000 of 200,000 (9,091 rows/s)",
    ]


def test_a_long_step_says_less_and_less_often_but_at_least_every_ten_minutes():
    lines: list[str] = []
    hours = 6
    # A batch every second for six hours.
    seconds = list(range(hours * 3600 + 1))
    meter = Meter(lines.append, clock=clock(0, *seconds[1:]))
    for second in seconds[1:]:
        meter.update(second * 1_000, lambda pace, second=second: f"{second}")
    said = [int(line) for line in lines]
    # Every ten seconds at first, then a third of the time so far: 32 s is 11 s after 21 s.
    assert said[:8] == [1, 11, 21, 32, 48, 72, 108, 162]
    assert len(said) == 46
    assert max(later - earlier for earlier, later in pairwise(said)) == 600


def test_a_step_without_a_total_says_its_rate_only():
    lines: list[str] = []
    meter = Meter(lines.append, clock=clock(0, 30))
    meter.update(1_500_000, lambda pace: f"read 1,500,000 rows{pace}")
    assert lines == ["read 1,500,000 rows (50,000 rows/s)"]


def test_hours_left_are_said_in_hours_and_minutes():
    lines: list[str] = []
    meter = Meter(lines.append, total=1_000_000, clock=clock(0, 100))
    meter.update(10_000, lambda pace: f"staged{pace}")
    assert lines == ["staged (100 rows/s, about 2 h 45 min left)"]


def test_a_short_step_says_its_first_and_last_batch_without_a_rate():
    lines: list[str] = []
    meter = Meter(lines.append, total=3, clock=clock(0, 0.01, 0.02, 0.03, 0.03))
    for done in (1, 2, 3):
        meter.update(done, lambda pace, done=done: f"staged {done} of 3{pace}")
    meter.finish()
    assert lines == ["staged 1 of 3", "staged 3 of 3"]


def test_a_one_batch_step_says_one_line():
    lines: list[str] = []
    meter = Meter(lines.append, total=2, clock=clock(0, 0.01))
    meter.update(2, lambda pace: f"staged 2 of 2{pace}")
    meter.finish()
    assert lines == ["staged 2 of 2"]


def test_a_backfill_estimates_the_time_left_from_its_delivered_partitions():
    progress = BackfillProgress(
        "REQUESTED",
        {
            "crm_users/mapped_batches": {"targeted": 40, "materialized": 12, "in_progress": 1, "failed": 0},
            "crm_users/delivery": {"targeted": 40, "materialized": 9, "in_progress": 1, "failed": 1},
        },
    )
    # 10 of 40 partitions ended in 5 minutes: 2 a minute, 30 to go.
    assert progress.estimate(300) == "2.0 partitions/min, about 15 min left"
    assert BackfillProgress("REQUESTED", {}).estimate(300) == ""
