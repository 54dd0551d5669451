"""Partition helpers shared by the sync modes: time windows anchored at `start`, full-mode run keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from wsync_dagster.spec import SyncSettings

RUN_KEY_FORMAT = "%Y%m%dT%H%M%S"


def _anchor(settings: SyncSettings) -> datetime:
    return settings.start or settings.history_start or datetime(2000, 1, 1, tzinfo=UTC)


def last_tick(moment: datetime, frequency: str, anchor: datetime) -> datetime:
    """The last tick of the schedule anchored at `anchor` at or before `moment`."""
    if frequency == "hourly":
        tick = moment.replace(minute=anchor.minute, second=0, microsecond=0)
        return tick if tick <= moment else tick - timedelta(hours=1)
    tick = moment.replace(hour=anchor.hour, minute=anchor.minute, second=0, microsecond=0)
    if tick > moment:
        tick -= timedelta(days=1)
    if frequency == "weekly":
        return tick - timedelta(days=(tick.weekday() - anchor.weekday()) % 7)
    if frequency == "monthly":
        monthly = tick.replace(day=anchor.day)
        if monthly > moment:
            monthly = (monthly.replace(day=1) - timedelta(days=1)).replace(day=anchor.day)
        return monthly
    return tick


def schedule_partitions(settings: SyncSettings, first: datetime) -> TimeWindowPartitionsDefinition:
    """Time windows of `frequency`, anchored at `start`'s time of day (and weekday or day of month)."""
    anchor = _anchor(settings)
    frequency = settings.partition_frequency
    start = last_tick(first, frequency, anchor)
    minute = anchor.minute
    if frequency == "hourly":
        return HourlyPartitionsDefinition(start_date=start, minute_offset=minute)
    if frequency == "daily":
        return DailyPartitionsDefinition(start_date=start, minute_offset=minute, hour_offset=anchor.hour)
    if frequency == "weekly":
        # Dagster counts weekdays from Sunday = 0.
        day = (anchor.weekday() + 1) % 7
        return WeeklyPartitionsDefinition(
            start_date=start, minute_offset=minute, hour_offset=anchor.hour, day_offset=day
        )
    return MonthlyPartitionsDefinition(
        start_date=start, minute_offset=minute, hour_offset=anchor.hour, day_offset=anchor.day
    )


def run_key(moment: datetime) -> str:
    """A compact dynamic partition key for a full-mode run at `moment`."""
    return moment.astimezone(UTC).strftime(RUN_KEY_FORMAT)


def run_key_time(key: str) -> datetime:
    """The moment a full-mode run key stands for."""
    return datetime.strptime(key, RUN_KEY_FORMAT).replace(tzinfo=UTC)
