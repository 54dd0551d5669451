"""What a partition reads: the mapping plan, and the query of the model or of a cdc table's changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pyarrow as pa

from wsync_dagster.changes import DELETE, VERSION, ChangeFeed, VersionWindow, change_feed, change_rows_sql
from wsync_dagster.data_model import windowed_sql
from wsync_dagster.identities import priority
from wsync_dagster.iterators import IntegerWindow, Window, reads_odd_times, time_range_bounds
from wsync_dagster.mapping import MappingPlan, build_plan
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses import open_warehouse
from wsync_dagster.warehouses.base import Warehouse

# Opens the warehouse: a Dagster run's resource; outside a run, the spec's connection.
OpenReader = Callable[[], Warehouse]


def open_reader_of(spec: SyncSpec, open_reader: OpenReader | None) -> Warehouse:
    """The warehouse `open_reader` opens, or by default the spec's connection."""
    return open_reader() if open_reader is not None else open_warehouse(spec)


def check_mapping(spec: SyncSpec) -> MappingPlan:
    """Probe the model's columns in the warehouse and check the mapping against them (and a cdc table's feed)."""
    if spec.sync.mode == "cdc":
        with change_feed(spec) as feed:
            feed.check()
    warehouse = open_warehouse(spec)
    try:
        return build_plan(spec, warehouse.columns(spec.data_model.sql))
    finally:
        warehouse.close()


def model_read(spec: SyncSpec, warehouse: Warehouse, window: Window | None) -> tuple[MappingPlan, str, tuple]:
    """The mapping plan and the query of the model: all of it, or one iterator window."""
    columns = warehouse.columns(spec.data_model.sql)
    plan = build_plan(spec, columns)
    if window is None:
        return plan, spec.data_model.sql, ()
    # Integer iterators have no time to wait for: a row without a value is rejected in every range.
    with_nulls = isinstance(window, IntegerWindow)
    column_type = columns.field(plan.iterator).type  # type: ignore[arg-type]
    # Infinity or a BC time belongs to no window: read with every one, and rejected.
    outside = reads_odd_times(warehouse.dialect, plan.iterator_type)
    query = windowed_sql(
        spec.data_model.sql,
        plan.iterator,  # type: ignore[arg-type]
        warehouse.dialect,
        with_nulls=with_nulls,
        outside=outside,
    )
    bounds = window.bounds(plan.iterator_type, column_type)  # type: ignore[arg-type]
    return plan, query, (*bounds, *(time_range_bounds(column_type) if outside else ()))


def change_read(
    spec: SyncSpec, window: VersionWindow, open_reader: OpenReader | None
) -> tuple[Warehouse, MappingPlan, str, tuple]:
    """A reader over the table's snapshot or changes, and the plan whose version is each row's commit."""
    with change_feed(spec, open_reader) as feed:
        warehouse, model = _checked_reader(feed, window)
    try:
        schema = warehouse.columns(model)
        columns = [name for name in schema.names if not name.startswith("_wsync")]
        plan = build_plan(spec, pa.schema([schema.field(name) for name in columns]))
        query, added = model, [pa.field(VERSION, pa.int64())]
        if not window.snapshot:
            events = plan.data_type == "event"
            # In priority order: netting takes a customer to be its highest-priority identity.
            identities = [plan.identities[kind] for kind in sorted(plan.identities, key=priority)]
            query = change_rows_sql(model, columns, identities, events=events, dialect=warehouse.dialect)
            added += [] if events else [pa.field(DELETE, pa.bool_())]
        read = pa.schema([*(schema.field(name) for name in columns), *added])
        plan = replace(
            plan,
            schema=read,
            iterator=VERSION,
            iterator_type="integer",
            ignored=(*plan.ignored, *(field.name for field in added)),
            delete_column=DELETE if len(added) > 1 else None,
        )
    except BaseException:
        warehouse.close()
        raise
    return warehouse, plan, query, ()


def _checked_reader(feed: ChangeFeed, window: VersionWindow) -> tuple[Warehouse, str]:
    """The feed's reader for the window, once the feed is on and the range is readable row by row."""
    feed.check()
    if not window.snapshot:
        feed.check_history(window)
    return feed.reader(window)
