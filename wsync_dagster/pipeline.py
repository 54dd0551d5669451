"""One partition of a sync, end to end: read the model, map it to batch files, deliver them to the store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster import batches as b
from wsync_dagster.batches import BatchFile, remove_stale_files
from wsync_dagster.changes import DELETE, VERSION, ChangeFeed, VersionWindow, change_feed, change_rows_sql
from wsync_dagster.data_model import extent_sql, limited_sql, windowed_sql
from wsync_dagster.identities import priority
from wsync_dagster.iterators import IntegerWindow, Window, iterator_moment, reads_odd_times, time_range_bounds
from wsync_dagster.mapping import BatchMapper, MappingPlan, build_plan
from wsync_dagster.run_tags import ALLOW_MASS_REMOVAL
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import DeliveryCounts, ProfileStore
from wsync_dagster.store.counts import MirrorHold
from wsync_dagster.warehouses import open_warehouse
from wsync_dagster.warehouses.base import Warehouse

Progress = Callable[[str], None]
# Opens the warehouse: a Dagster run's resource; outside a run, the spec's connection.
OpenReader = Callable[[], Warehouse]
logger = logging.getLogger("wsync")


def _report(progress: Progress | None, message: str) -> None:
    """Progress goes to the caller (a run's log) and to the `wsync` logger, which the CLI prints."""
    logger.info(message)
    if progress is not None:
        progress(message)


@dataclass
class MapCounts:
    """What the mapping of one partition read, mapped and rejected."""

    rows_read: int = 0
    rows_mapped: int = 0
    rows_rejected: int = 0

    @property
    def reject_rate(self) -> float:
        """Rejected share of the rows read."""
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return asdict(self)


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


def map_partition(
    spec: SyncSpec,
    window: Window | VersionWindow | None,
    batch_file: BatchFile,
    *,
    run_version: int = 0,
    progress: Progress | None = None,
    open_reader: OpenReader | None = None,
) -> MapCounts:
    """Read the model (one iterator window, or all of it) and write mapped batches and rejects.

    `open_reader` opens the warehouse (a run's resource); by default it is opened from the spec.
    """
    if removed := remove_stale_files(batch_file.directory):
        _report(progress, f"{spec.name}: removed {len(removed)} stale batch files")
    counts = MapCounts()
    if isinstance(window, VersionWindow):
        warehouse, plan, query, params = _change_read(spec, window, open_reader)
    else:
        warehouse = _open(spec, open_reader)
    try:
        if not isinstance(window, VersionWindow):
            plan, query, params = _model_read(spec, warehouse, window)
        mapper = BatchMapper(plan, run_version=run_version)
        with batch_file.writer() as writer:
            writer.set_schema(mapper.empty().schema)
            for batch in warehouse.read_batches(query, params):
                mapped, rejects = mapper.map(batch)
                writer.write(mapped, rejects)
                counts.rows_read += batch.num_rows
                counts.rows_mapped += mapped.num_rows
                counts.rows_rejected += rejects.num_rows
                _report(
                    progress,
                    f"{spec.name}: read {counts.rows_read:,} rows, {counts.rows_rejected:,} rejected",
                )
    finally:
        warehouse.close()
    return counts


def _model_read(
    spec: SyncSpec, warehouse: Warehouse, window: Window | None
) -> tuple[MappingPlan, str, tuple]:
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


def _change_read(
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


@dataclass(frozen=True)
class Partition:
    """One partition of a run: its key, and its iterator window in epoch µs (None, None for full mode)."""

    key: str
    window: tuple[int | None, int | None] = (None, None)


def partition_of_rows(versions: pa.Array, partitions: Sequence[Partition]) -> np.ndarray:
    """Per row, the index of the partition its version falls in; rows read by lookback go to the first."""
    starts = np.array([partition.window[0] for partition in partitions[1:]], dtype=np.int64)
    if not len(starts):
        return np.zeros(len(versions), dtype=np.int64)
    known = pc.fill_null(versions, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)
    return np.searchsorted(starts, known, side="right")


def map_counts_by_partition(batch_file: BatchFile, partitions: Sequence[Partition]) -> dict[str, MapCounts]:
    """Rows mapped and rejected per partition of a run, from its batch files."""
    mapped = partition_of_rows(batch_file.column(b.VERSION), partitions)
    rejected = partition_of_rows(batch_file.rejects().column(b.VERSION).combine_chunks(), partitions)
    counts = {}
    for index, partition in enumerate(partitions):
        rows_mapped, rows_rejected = int((mapped == index).sum()), int((rejected == index).sum())
        counts[partition.key] = MapCounts(rows_mapped + rows_rejected, rows_mapped, rows_rejected)
    return counts


@dataclass
class DeliveryReport:
    """What a delivery did: totals, each partition's own counts, and a few changed profiles."""

    totals: DeliveryCounts
    by_partition: dict[str, DeliveryCounts]
    preview: list[dict]
    mirror_hold: str | None = None  # why a mirror run removed nothing, and how to allow it
    mirror_held_back: int = 0  # the profiles that would have lost this sync's attributes


def deliver_partitions(
    spec: SyncSpec,
    batch_file: BatchFile,
    store: ProfileStore,
    partitions: Sequence[Partition],
    *,
    progress: Progress | None = None,
    allow_mass_removal: bool = False,
) -> DeliveryReport:
    """Apply a run's mapped batches in one store transaction, each row counted in its partition; then remove them."""
    settings = spec.sync
    keys = [partition.key for partition in partitions]
    with store.delivery(
        sync=spec.name,
        environment=settings.environment,
        partitions=keys,
        input_protection=settings.input_protection,
        windows=[partition.window for partition in partitions],
        mirror=settings.mirror,
        mirror_max_removal=settings.mirror_max_removal,
        allow_mass_removal=allow_mass_removal,
    ) as delivery:
        for batch in batch_file.mapped_batches():
            index = partition_of_rows(batch.column(b.VERSION), partitions)
            for part in np.unique(index):
                delivery.apply_batch(batch.filter(pa.array(index == part)), keys[part])
            # Not "applied": until the commit, a failure (a full disk) rolls all of it back.
            _report(
                progress, f"{spec.name}: {delivery.counts.rows:,} rows staged, committed together at the end"
            )
        rejects = batch_file.rejects()
        index = partition_of_rows(rejects.column(b.VERSION).combine_chunks(), partitions)
        for part, key in enumerate(keys):
            delivery.replace_rejects(rejects.filter(pa.array(index == part)), key)
        touched = list(delivery.profile_ids_touched)
    # Only after the commit: until then a retry of the delivery needs them.
    batch_file.remove()
    totals = delivery.counts
    _report(
        progress,
        f"{spec.name}: delivered {len(keys)} partition{'s' if len(keys) > 1 else ''}: "
        + ", ".join(f"{name}={value:,}" for name, value in totals.as_dict().items()),
    )
    report = DeliveryReport(totals, delivery.partition_counts, store.profiles_by_id(touched[:3]))
    if (hold := delivery.mirror_hold) is not None:
        report.mirror_hold, report.mirror_held_back = mirror_hold_message(spec, hold), hold.profiles
        _report(progress, f"warning: {report.mirror_hold}")
    return report


def mirror_hold_message(spec: SyncSpec, hold: MirrorHold) -> str:
    """One line: what a mirror run held back, why, and how to let it through."""
    would = f"{hold.profiles:,} of the {hold.of:,} profiles it set would have lost this sync's attributes"
    if hold.no_rows:
        return (
            f"{spec.name}: mirror removed nothing: the run mapped no rows (an empty model, or every row "
            f"rejected; see `wsync rejects {spec.name}`), and {would}"
        )
    return (
        f"{spec.name}: mirror removal held back: {would} ({hold.share:.0%}, over "
        f"sync.mirror_max_removal {spec.sync.mirror_max_removal:.0%}); nothing was removed. If that is "
        f"right, run `wsync run {spec.name} --allow-mass-removal` (in the UI: tag {ALLOW_MASS_REMOVAL}=true)"
    )


def _open(spec: SyncSpec, open_reader: OpenReader | None) -> Warehouse:
    return open_reader() if open_reader is not None else open_warehouse(spec)


def iterator_extent(spec: SyncSpec, open_reader: OpenReader | None = None) -> tuple[Any, Any] | None:
    """The lowest and the newest iterator value in the whole model; None when the model has no rows."""
    settings = spec.sync
    assert settings.iterator, "only an incremental sync has an iterator"
    warehouse = _open(spec, open_reader)
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


def preview_rows(spec: SyncSpec, limit: int = 5) -> list[dict]:
    """Sample enriched profiles or events from the model; nothing is written."""
    warehouse = open_warehouse(spec)
    try:
        plan = build_plan(spec, warehouse.columns(spec.data_model.sql))
        mapper = BatchMapper(plan)
        rows: list[dict] = []
        for batch in warehouse.read_batches(limited_sql(spec.data_model.sql, limit, warehouse.dialect)):
            mapped, rejects = mapper.map(batch)
            rows.extend(_enriched(row) for row in mapped.to_pylist())
            rows.extend({"rejected": r["reason"], "row": json.loads(r["row"])} for r in rejects.to_pylist())
        return rows
    finally:
        warehouse.close()


def _enriched(row: dict) -> dict:
    identities = {
        k[len(b.IDENTITY_PREFIX) :]: v for k, v in row.items() if k.startswith(b.IDENTITY_PREFIX) and v
    }
    attributes = {
        k[len(b.ATTRIBUTE_PREFIX) :]: json.loads(v) if v is not None else None
        for k, v in row.items()
        if k.startswith(b.ATTRIBUTE_PREFIX)
    }
    enriched: dict = {"identities": identities, "attributes": attributes}
    if b.EVENT_ID in row:
        enriched["event"] = {"event_type": row[b.EVENT_TYPE], "data": json.loads(row[b.EVENT_DATA])}
    return enriched
