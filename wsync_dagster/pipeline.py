"""One partition of a sync, end to end: read the model, map it to batch files, deliver them to the store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from wsync_dagster import batches as b
from wsync_dagster.batches import BatchFile, remove_stale_files
from wsync_dagster.data_model import limited_sql, windowed_sql
from wsync_dagster.iterators import IteratorWindow
from wsync_dagster.mapping import BatchMapper, MappingPlan, build_plan
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import DeliveryCounts, ProfileStore
from wsync_dagster.warehouses import open_warehouse

Progress = Callable[[str], None]
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
    """Probe the model's columns in the warehouse and check the mapping against them."""
    warehouse = open_warehouse(spec)
    try:
        return build_plan(spec, warehouse.columns(spec.data_model.sql))
    finally:
        warehouse.close()


def map_partition(
    spec: SyncSpec,
    window: IteratorWindow | None,
    batch_file: BatchFile,
    *,
    run_version: int = 0,
    progress: Progress | None = None,
) -> MapCounts:
    """Read the model (one iterator window, or all of it) and write mapped batches and rejects."""
    if removed := remove_stale_files(batch_file.directory):
        _report(progress, f"{spec.name}: removed {len(removed)} stale batch files")
    counts = MapCounts()
    warehouse = open_warehouse(spec)
    try:
        plan = build_plan(spec, warehouse.columns(spec.data_model.sql))
        mapper = BatchMapper(plan, run_version=run_version)
        if window is None:
            query, params = spec.data_model.sql, ()
        else:
            query = windowed_sql(spec.data_model.sql, plan.iterator, warehouse.dialect)  # type: ignore[arg-type]
            params = window.bounds(plan.iterator_type)  # type: ignore[arg-type]
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


def deliver_partition(
    spec: SyncSpec,
    batch_file: BatchFile,
    store: ProfileStore,
    partition: str,
    window: IteratorWindow | None,
    *,
    progress: Progress | None = None,
) -> tuple[DeliveryCounts, list[dict]]:
    """Apply a partition's mapped batches in one store transaction, then remove them; counts and a preview."""
    settings = spec.sync
    with store.delivery(
        sync=spec.name,
        environment=settings.environment,
        partition=partition,
        input_protection=settings.input_protection,
        window=window.micros if window else (None, None),
    ) as delivery:
        for batch in batch_file.mapped_batches():
            delivery.apply_batch(batch)
            _report(progress, f"{spec.name}: applied {delivery.counts.rows:,} rows")
        delivery.replace_rejects(batch_file.rejects())
        touched = list(delivery.profile_ids_touched)
    # Only after the commit: until then a retry of the delivery needs them.
    batch_file.remove()
    return delivery.counts, store.profiles_by_id(touched[:3])


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
