"""Incremental iterators: the window a run reads, and the order-safety version of a row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa

from wsync_dagster.spec import SyncSettings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMN_TYPES = {
    "timestamp": (pa.types.is_timestamp,),
    "date": (pa.types.is_date, pa.types.is_timestamp),
    "timestamp_unixtime_ms": (pa.types.is_integer,),
    "timestamp_unixtime_s": (pa.types.is_integer,),
    "integer": (pa.types.is_integer,),
}
_TYPE_WORDS = {
    "timestamp": "a TIMESTAMP",
    "date": "a DATE",
    "timestamp_unixtime_ms": "an integer of epoch milliseconds",
    "timestamp_unixtime_s": "an integer of epoch seconds",
    "integer": "an integer",
}


@dataclass(frozen=True)
class IteratorWindow:
    """The half-open range of iterator values one run reads, in UTC."""

    start: datetime
    end: datetime

    def bounds(self, iterator_type: str, column_type: pa.DataType | None = None) -> tuple[Any, Any]:
        """The window as query parameters of the iterator column's own type, so that every warehouse
        compares like with like (BigQuery refuses DATETIME against TIMESTAMP): a timestamp column without
        time zone gets naive UTC bounds, and a date iterator over a timestamp column gets midnights."""
        if iterator_type == "timestamp_unixtime_ms":
            return epoch_micros(self.start) // 1000, epoch_micros(self.end) // 1000
        if iterator_type == "timestamp_unixtime_s":
            return epoch_micros(self.start) // 1_000_000, epoch_micros(self.end) // 1_000_000
        is_timestamp = column_type is not None and pa.types.is_timestamp(column_type)
        if iterator_type == "date" and not is_timestamp:
            return self.start.date(), self.end.date()
        start, end = self.start, self.end
        if iterator_type == "date":
            start, end = (datetime.combine(moment.date(), time(), moment.tzinfo) for moment in (start, end))
        if is_timestamp and column_type.tz is None:  # type: ignore[union-attr]
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        return start, end

    @property
    def micros(self) -> tuple[int, int]:
        """The window in epoch microseconds, as the store records it."""
        return epoch_micros(self.start), epoch_micros(self.end)

    def describe(self) -> str:
        """The window as the UI shows it."""
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


@dataclass(frozen=True)
class IntegerWindow:
    """The half-open range of integer iterator values one run reads; the values are the rows' versions."""

    start: int
    end: int

    def bounds(self, iterator_type: str, column_type: pa.DataType | None = None) -> tuple[int, int]:
        """The range as query parameters."""
        return self.start, self.end

    @property
    def micros(self) -> tuple[int, int]:
        """The range as the store records windows: an integer iterator's versions are its values."""
        return self.start, self.end

    def describe(self) -> str:
        """The range as the UI shows it."""
        return f"[{self.start}, {self.end})"


Window = IteratorWindow | IntegerWindow


def iterator_window(
    settings: SyncSettings, start: datetime, end: datetime, previous_start: datetime
) -> IteratorWindow:
    """The window for partitions [start, end): reaches back by lookback, by default to previous_start (where
    the window before them starts), never before historical_start."""
    lookback = settings.lookback
    reach = previous_start if lookback is None else start - lookback  # type: ignore[operator]
    lower = max(reach, settings.history_start)
    return IteratorWindow(lower, max(end, lower))


def integer_window(
    settings: SyncSettings, first: int, last: int, previous_first: int | None
) -> IntegerWindow:
    """The values a run of the range first..last reads: reaching back lookback ids, by default to
    previous_first (where the range before it starts), so ids committed out of order below it arrive."""
    if settings.lookback is None:
        lower = first if previous_first is None else min(previous_first, first)
    else:
        lower = first - settings.lookback  # type: ignore[operator]
    return IntegerWindow(lower, last + 1)


def check_iterator_column(settings: SyncSettings, schema: pa.Schema) -> str | None:
    """Why the iterator column does not fit its iterator_type, or None when it does."""
    if settings.mode != "incremental" or not settings.iterator:
        return None
    if settings.iterator not in schema.names:
        return (
            f"sync.iterator: column '{settings.iterator}' is not returned by the data model; "
            f"it returns {', '.join(schema.names)}"
        )
    column_type = schema.field(settings.iterator).type
    if not any(test(column_type) for test in _COLUMN_TYPES[settings.iterator_type]):
        return (
            f"sync.iterator_type: {settings.iterator_type} needs {_TYPE_WORDS[settings.iterator_type]} "
            f"column, but '{settings.iterator}' is {column_type}"
        )
    return None


def version_sql(iterator_type: str, column_sql: str, column_type: pa.DataType) -> str:
    """DuckDB SQL for a row's version: its iterator in epoch microseconds, or an integer iterator's value."""
    if iterator_type == "integer":
        return f"CAST({column_sql} AS BIGINT)"
    if iterator_type == "timestamp_unixtime_ms":
        return f"CAST({column_sql} AS BIGINT) * 1000"
    if iterator_type == "timestamp_unixtime_s":
        return f"CAST({column_sql} AS BIGINT) * 1000000"
    if pa.types.is_date(column_type):
        return f"epoch_us(CAST({column_sql} AS TIMESTAMP))"
    return f"epoch_us({column_sql})"


def iterator_moment(value: Any, iterator_type: str) -> datetime | None:
    """An iterator value as the UTC moment it stands for (a date: its midnight); None for no value."""
    if value is None:
        return None
    if iterator_type in ("timestamp_unixtime_ms", "timestamp_unixtime_s"):
        scale = 1000 if iterator_type == "timestamp_unixtime_ms" else 1
        return datetime.fromtimestamp(int(value) / scale, UTC)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    raise ValueError(f"an iterator value of type {type(value).__name__} is not a {iterator_type}")


def epoch_micros(moment: datetime) -> int:
    """A moment in epoch microseconds (a naive one is UTC): how versions and windows are stored."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def micros_moment(micros: int) -> datetime:
    """The UTC moment of a number of epoch microseconds."""
    return _EPOCH + timedelta(microseconds=micros)


# Warehouses whose times reach past years 1 to 9999 (infinity, -infinity, BC years): rows holding such a time
# in the iterator are read with every window, to be rejected, and left out of the newest value.
ODD_TIME_DIALECTS = ("duckdb", "postgres")


def time_range_bounds(column_type: pa.DataType) -> tuple[Any, Any]:
    """The first and the last time an iterator may hold (years 1 to 9999), in the column's own type."""
    if pa.types.is_date(column_type):
        return date.min, date.max
    if getattr(column_type, "tz", None) is None:
        return datetime.min, datetime.max
    return datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def reads_odd_times(dialect: str, iterator_type: str | None) -> bool:
    """True when a time or date iterator of this warehouse may hold infinity or a year outside 1 to 9999."""
    return dialect in ODD_TIME_DIALECTS and iterator_type in ("timestamp", "date")
