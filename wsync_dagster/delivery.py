"""A run's delivery step: its mapped batches applied to the profile store, each row counted in its partition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from wsync_dagster.batches import REJECT_SCHEMA, VERSION, BatchFile
from wsync_dagster.progress import Meter, Progress, report
from wsync_dagster.run_partitions import Partition, partition_of_rows
from wsync_dagster.run_tags import ALLOW_MASS_REMOVAL
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import DeliveryCounts, ProfileStore
from wsync_dagster.store.counts import MirrorHold

# Rows applied at a time. A batch's working set (its identities resolved as Python objects, its attribute
# rows, the Arrow arrays between) grows with it: at 1M users, 50,000 rows a batch peaked at 630 MB of RSS,
# 25,000 at 560 MB, in about the same time (the store's statements work a batch's rows as one set).
DELIVERY_BATCH_ROWS = 25_000


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
    run_id: str | None = None,
    recorded: bool = True,
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
        run_id=run_id,
        recorded=recorded,
        destinations=[destination.name for destination in spec.destinations],
    ) as delivery:
        meter = Meter(progress, total=batch_file.mapped_rows())
        for batch in batch_file.mapped_batches(DELIVERY_BATCH_ROWS):
            index = partition_of_rows(batch.column(VERSION), partitions)
            for part in np.unique(index):
                delivery.apply_batch(batch.filter(pa.array(index == part)), keys[part])
            # Not "applied": until the commit, a failure (a full disk) rolls all of it back.
            staged = delivery.counts.rows
            meter.update(staged, lambda pace, staged=staged: _staged_line(spec, staged, meter.total, pace))
        meter.finish()
        if unchanged := batch_file.unchanged_rows():
            # Left out by the warehouse only when the run reads all of the model: one partition.
            delivery.add_unchanged(unchanged, keys[0])
        for key in keys:
            delivery.replace_rejects(REJECT_SCHEMA.empty_table(), key)
        for rejects in batch_file.reject_batches():
            index = partition_of_rows(rejects.column(VERSION), partitions)
            for part in np.unique(index):
                delivery.add_rejects(
                    pa.Table.from_batches([rejects.filter(pa.array(index == part))]), keys[part]
                )
        touched = list(delivery.profile_ids_touched)
    # Only after the commit: until then a retry of the delivery needs them.
    batch_file.remove()
    totals = delivery.counts
    report(
        progress,
        f"{spec.name}: delivered {len(keys)} partition{'s' if len(keys) > 1 else ''}: "
        + ", ".join(f"{name}={value:,}" for name, value in totals.as_dict().items()),
        totals=True,
    )
    result = DeliveryReport(totals, delivery.partition_counts, store.profiles_by_id(touched[:3]))
    if (hold := delivery.mirror_hold) is not None:
        result.mirror_hold, result.mirror_held_back = mirror_hold_message(spec, hold), hold.profiles
        report(progress, f"warning: {result.mirror_hold}")
    return result


def _staged_line(spec: SyncSpec, staged: int, total: int | None, pace: str) -> str:
    """`crm_users: 65,536 of 100,000 rows staged, committed together at the end (…)`."""
    of = f" of {total:,}" if total else ""
    return f"{spec.name}: {staged:,}{of} rows staged, committed together at the end{pace}"


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
