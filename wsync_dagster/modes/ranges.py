"""Incremental mode on an integer iterator: dynamic partitions of value ranges, added as new values arrive."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from wsync_dagster.iterator_extent import iterator_extent
from wsync_dagster.iterators import IntegerWindow, integer_window
from wsync_dagster.modes.base import PlannedRun, RunError, RunScope, SyncJob
from wsync_dagster.read_plan import OpenReader
from wsync_dagster.run_environment import cannot_run
from wsync_dagster.run_partitions import Partition
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore
from wsync_dagster.warehouses.resource import WarehouseResource, warehouse_key

# FIRST_LAST, both included, zero-padded so that keys sort as numbers: 00000000000000000001_00000000000000000500.
_WIDTH = 20
_KEY = re.compile(r"(-?\d+)_(-?\d+)\Z")


def range_key(first: int, last: int) -> str:
    """The partition key of the values first..last, both included."""
    return f"{first:0{_WIDTH}d}_{last:0{_WIDTH}d}"


def parse_range_key(key: str) -> tuple[int, int] | None:
    """(first, last) of a range key, or None if it is not one."""
    match = _KEY.match(key)
    if not match or int(match[1]) > int(match[2]):
        return None
    return int(match[1]), int(match[2])


def previous_first(keys: Iterable[str], first: int) -> int | None:
    """Where the range just below `first` starts, among these range keys; None when there is none."""
    below = [parsed for key in keys if (parsed := parse_range_key(key)) and parsed[1] < first]
    return max(below, key=lambda parsed: parsed[1])[0] if below else None


class IntegerRanges:
    """Each run takes the values above the last range's end, up to the newest value, and reads the previous
    range again (or `lookback` ids) for ids that committed out of order below it."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec

    def partitions(self) -> DynamicPartitionsDefinition:
        """One dynamic partition per range of iterator values."""
        return DynamicPartitionsDefinition(name=f"{self.spec.name}_ranges")

    def backfill_policy(self) -> None:
        """Each range is its own run."""
        return None

    def scope(self, context: AssetExecutionContext) -> RunScope:
        """The run's range of values, and the read reaching back by lookback; a row's version is its value."""
        key = context.partition_key
        first, last = self._parse(key, "partition")
        own = IntegerWindow(first, last + 1)
        known = context.instance.get_dynamic_partitions(self.partitions().name)
        read = integer_window(self.spec.sync, first, last, previous_first(known, first))
        return RunScope(key, [Partition(key, own.micros)], read)

    def next_range(
        self, instance: DagsterInstance, delivered: Iterable[str] = (), open_reader: OpenReader | None = None
    ) -> str | None:
        """The key of the values above every known range (the instance's, and those the store delivered),
        up to the model's newest; None when there are none."""
        extent = iterator_extent(self.spec, open_reader)
        if extent is None:
            return None
        lowest, newest = extent
        known = [*instance.get_dynamic_partitions(self.partitions().name), *delivered]
        ends = [parsed[1] for key in known if (parsed := parse_range_key(key))]
        first = max(ends) + 1 if ends else lowest
        return range_key(first, newest) if newest >= first else None

    def trigger(self, job: SyncJob) -> SensorDefinition | None:
        """A sensor that reads the newest value, adds the range above the last one and requests it."""
        settings = self.spec.sync
        return range_sensor(
            self.spec,
            job,
            self.partitions(),
            self.next_range,
            reads=f"the next range of {settings.iterator} values",
            unit=f"{settings.iterator} value",
        )

    def prune_partitions(self, instance: DagsterInstance, store: ProfileStore) -> list[str]:
        """Nothing: the next range is found from the ranges Dagster lists."""
        return []

    def planned_runs(
        self, store: ProfileStore, instance: DagsterInstance, partition: str | None, now: datetime
    ) -> list[PlannedRun]:
        """`--partition FIRST_LAST`, or every added range not yet delivered and then the next one."""
        name = self.partitions().name
        delivered = store.delivered_partitions(self.spec.name, self.spec.sync.environment)
        if partition:
            self._parse(partition, "--partition")
            keys = [partition]
        else:
            keys = [key for key in instance.get_dynamic_partitions(name) if key not in set(delivered)]
            if (key := self.next_range(instance, delivered)) is not None:
                keys.append(key)
        known = set(instance.get_dynamic_partitions(name))
        # Ranges the store delivered are made known too: a run finds the range before its own there.
        ranges = [key for key in delivered if parse_range_key(key)]
        instance.add_dynamic_partitions(
            name, [key for key in dict.fromkeys([*ranges, *keys]) if key not in known]
        )
        return [PlannedRun(key, {"partition_key": key}) for key in keys]

    def _parse(self, key: str, what: str) -> tuple[int, int]:
        parsed = parse_range_key(key)
        if parsed is None:
            raise RunError(
                f"{self.spec.name}: {what} {key} is not a range of {self.spec.sync.iterator} values; keys are "
                f"FIRST_LAST, both included, e.g. {range_key(1, 500)}"
            )
        return parsed


def range_sensor(
    spec: SyncSpec,
    job: SyncJob,
    partitions: DynamicPartitionsDefinition,
    next_range: Callable[..., str | None],
    *,
    reads: str,
    unit: str,
) -> SensorDefinition | None:
    """A sensor that adds the range `next_range` finds above the last one and requests it; None for on_demand.

    `reads` says what each run reads, `unit` what a range holds (for the UI and the skip reasons).
    """
    settings = spec.sync
    if settings.schedule == "on_demand":
        return None
    start: datetime | None = settings.start
    seconds = int(settings.frequency_span.total_seconds()) if settings.schedule == "interval" else 60

    @sensor(
        name=f"{spec.name}_sensor",
        job=job,
        minimum_interval_seconds=seconds,
        default_status=DefaultSensorStatus.STOPPED if settings.paused else DefaultSensorStatus.RUNNING,
        # The connection's resource, as the sync's runs open it: one way to open a warehouse.
        required_resource_keys={warehouse_key(spec)},
        description=f"{spec.name}: {reads}, {settings.schedule}",
    )
    # Called directly (as tests do), Dagster passes the required resources as keywords too.
    def next_range_sensor(context: SensorEvaluationContext, **_resources: object):
        # Every run would fail on it: the tick says so instead (in the UI's tick history).
        if unrunnable := cannot_run(spec):
            return SkipReason(unrunnable)
        if start is not None and datetime.now(UTC) < start:
            return SkipReason(f"the first run is due at {start.isoformat()}")
        if settings.schedule == "once" and context.cursor:
            return SkipReason(f"ran once: {context.cursor}")
        warehouse: WarehouseResource = getattr(context.resources, warehouse_key(spec))
        key = next_range(context.instance, open_reader=partial(warehouse.open, spec.source_file))
        if key is None:
            return SkipReason(f"no {unit} above the last range")
        return SensorResult(
            # The run key holds the range: run keys are deduplicated forever.
            run_requests=[RunRequest(run_key=key, partition_key=key)],
            dynamic_partitions_requests=[partitions.build_add_request([key])],
            cursor=key,
        )

    return next_range_sensor
