"""A run's mapping step: read the model (or a cdc table's changes), map it, write batch files and rejects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa

from wsync_dagster.batches import VERSION, BatchFile, remove_stale_files
from wsync_dagster.changes import VersionWindow
from wsync_dagster.iterators import Window
from wsync_dagster.mapping import BatchMapper
from wsync_dagster.progress import Meter, Progress, report
from wsync_dagster.read_plan import OpenReader, change_read, model_read, open_reader_of
from wsync_dagster.run_partitions import Partition, partition_of_rows
from wsync_dagster.spec import SyncSpec
from wsync_dagster.unchanged_rows import StoredFingerprints, compared_read

# Warehouse rows read and mapped at a time: each batch is held by the reader, the mapper's DuckDB and its
# result at once (1M events mapped: 581 MB peak RSS at 100,000 rows a batch, 533 MB at 50,000, same time).
READ_BATCH_ROWS = 50_000


@dataclass
class MapCounts:
    """What the mapping of one partition read, mapped and rejected."""

    rows_read: int = 0
    rows_mapped: int = 0
    rows_rejected: int = 0
    rows_unchanged: int = (
        0  # of those read: found unchanged by the warehouse, so neither mapped nor delivered
    )

    @property
    def reject_rate(self) -> float:
        """Rejected share of the rows read."""
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return asdict(self)


def map_partition(
    spec: SyncSpec,
    window: Window | VersionWindow | None,
    batch_file: BatchFile,
    *,
    run_version: int = 0,
    progress: Progress | None = None,
    open_reader: OpenReader | None = None,
    stored: StoredFingerprints | None = None,
) -> MapCounts:
    """Read the model (one iterator window, or all of it) and write mapped batches and rejects.

    `open_reader` opens the warehouse (a run's resource); by default it is opened from the spec. `stored`
    reads the store's fingerprints of the sync: a full-mode re-read on a warehouse that can compare them
    leaves the unchanged rows out (unchanged_rows.py), counted in the mapped file.
    """
    if removed := remove_stale_files(batch_file.directory):
        report(progress, f"{spec.name}: removed {len(removed)} stale batch files")
    counts = MapCounts()
    if isinstance(window, VersionWindow):
        warehouse, plan, query, params = change_read(spec, window, open_reader)
    else:
        warehouse = open_reader_of(spec, open_reader)
    try:
        if not isinstance(window, VersionWindow):
            plan, query, params = model_read(spec, warehouse, window)
        compared = None
        if window is None:
            compared = compared_read(plan, warehouse, query, run_version, stored, mirror=spec.sync.mirror)
        if compared is not None:
            query = compared.sql
        mapper = BatchMapper(plan, run_version=run_version)
        # The warehouse does not say how many rows the model returns before it has sent them: a rate, no end.
        meter = Meter(progress)
        with batch_file.writer() as writer:
            for batch in warehouse.read_batches(query, params, READ_BATCH_ROWS):
                counts.rows_read += batch.num_rows
                if not batch.num_rows:
                    continue
                mapped, rejects = mapper.map(batch)
                writer.write(mapped, rejects)
                counts.rows_mapped += mapped.num_rows
                counts.rows_rejected += rejects.num_rows
                meter.update(counts.rows_read, lambda pace: _read_line(spec, counts, pace))
            if not counts.rows_read:
                # The file's schema, which a mapped batch gives (mapping none costs a query of its own).
                writer.set_schema(mapper.empty().schema)
            if compared is not None:
                # The warehouse sent only the rows to map: the others of the model were read unchanged.
                counts.rows_unchanged = writer.unchanged_rows = compared.model_rows - counts.rows_read
                counts.rows_read = compared.model_rows
        meter.finish()
        mapper.close()
    finally:
        warehouse.close()
    # Arrow's allocator keeps freed pages for reuse: the delivery that may follow in this process starts low.
    pa.default_memory_pool().release_unused()
    return counts


def _read_line(spec: SyncSpec, counts: MapCounts, pace: str) -> str:
    """`crm_users: read 120,000 rows, 3 rejected (…)`."""
    return f"{spec.name}: read {counts.rows_read:,} rows, {counts.rows_rejected:,} rejected{pace}"


def map_counts_by_partition(batch_file: BatchFile, partitions: Sequence[Partition]) -> dict[str, MapCounts]:
    """Rows mapped and rejected per partition of a run, from its batch files."""
    mapped = partition_of_rows(batch_file.column(VERSION), partitions)
    rejected = partition_of_rows(batch_file.rejects().column(VERSION).combine_chunks(), partitions)
    counts = {}
    for index, partition in enumerate(partitions):
        rows_mapped, rows_rejected = int((mapped == index).sum()), int((rejected == index).sum())
        counts[partition.key] = MapCounts(rows_mapped + rows_rejected, rows_mapped, rows_rejected)
    return counts
