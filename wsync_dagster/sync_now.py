"""`wsync run --now`: the window under way, read up to now and delivered without being listed as delivered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial

from wsync_dagster.defs.assets import batch_file, reject_rate_failure
from wsync_dagster.delivery import DeliveryReport, deliver_partitions
from wsync_dagster.mapped_batches import MapCounts, map_partition
from wsync_dagster.modes.base import RunScope
from wsync_dagster.progress import PROGRESS, logger
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore


class NowBlocked(RuntimeError):
    """The window under way rejected more rows than checks.max_reject_rate allows, and blocking is on."""


@dataclass
class NowDelivery:
    """What reading the window under way did: its label, the read's counts, the delivery, a failed check."""

    label: str
    run_id: str
    mapped: MapCounts
    delivered: DeliveryReport
    failed_check: str | None = None


def deliver_window_under_way(spec: SyncSpec, store: ProfileStore, scope: RunScope) -> NowDelivery:
    """Map and deliver the window under way in one store transaction; its partition stays undelivered in the
    store and unmaterialized in Dagster, so its scheduled run reads it again when it completes (versions keep
    the order; unchanged rows are skipped by fingerprint)."""
    # No Dagster run: a materialization would mark the partition done before its window is over.
    run_id = f"now-{uuid.uuid4()}"
    # Its own files: a scheduled run of the same partition may be writing the partition's.
    batches = batch_file(spec, f"{scope.partitions[0].key}.now")
    logger.info(f"{spec.name}: reading the window under way, {scope.label}", extra={PROGRESS: True})
    stored = partial(store.fingerprints, spec.name, spec.sync.environment)
    counts = map_partition(spec, scope.window, batches, stored=stored)
    failed = None
    if counts.reject_rate > spec.checks.max_reject_rate:
        failed = reject_rate_failure(spec, counts, batches)
        if spec.checks.block_on_reject_rate:
            batches.remove()
            raise NowBlocked(f"{spec.name}: {failed}")
    report = deliver_partitions(spec, batches, store, scope.partitions, run_id=run_id, recorded=False)
    return NowDelivery(scope.label, run_id, counts, report, failed)
