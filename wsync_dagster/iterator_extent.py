"""The extent of a model's iterator in the warehouse: its lowest and its newest value."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wsync_dagster.data_model import extent_sql
from wsync_dagster.iterators import iterator_moment, reads_odd_times, time_range_bounds
from wsync_dagster.read_plan import OpenReader, open_reader_of
from wsync_dagster.spec import SyncSpec


def iterator_extent(spec: SyncSpec, open_reader: OpenReader | None = None) -> tuple[Any, Any] | None:
    """The lowest and the newest iterator value in the whole model; None when the model has no rows."""
    settings = spec.sync
    assert settings.iterator, "only an incremental sync has an iterator"
    warehouse = open_reader_of(spec, open_reader)
    try:
        within = reads_odd_times(warehouse.dialect, settings.iterator_type)
        query = extent_sql(spec.data_model.sql, settings.iterator, warehouse.dialect, within=within)
        params: tuple = ()
        if within:  # infinity is nobody's newest time
            params = time_range_bounds(warehouse.columns(spec.data_model.sql).field(settings.iterator).type)
        # By position: a warehouse may fold the column names (Snowflake: to upper case).
        rows = [
            (batch.column(0)[i].as_py(), batch.column(1)[i].as_py())
            for batch in warehouse.read_batches(query, params)
            for i in range(batch.num_rows)
        ]
    finally:
        warehouse.close()
    if not rows or rows[0][1] is None:
        return None
    return rows[0]


def newest_iterator(spec: SyncSpec, open_reader: OpenReader | None = None) -> datetime | None:
    """The newest iterator value in the whole model, as a UTC moment; None when the model has no rows."""
    extent = iterator_extent(spec, open_reader)
    return None if extent is None else iterator_moment(extent[1], spec.sync.iterator_type)  # type: ignore[arg-type]
