"""CDC mode: a table's change feed, read from the last processed version; partitions are version ranges."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DynamicPartitionsDefinition,
    SensorDefinition,
)

from wsync_dagster.changes import ChangeFeedError, VersionWindow, change_feed
from wsync_dagster.modes.base import PlannedRun, RunError, RunScope, SyncJob
from wsync_dagster.modes.ranges import parse_range_key, range_key, range_sensor
from wsync_dagster.read_plan import OpenReader
from wsync_dagster.run_partitions import Partition
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore


class ChangeCapture:
    """The first run reads the table's snapshot (range 0..N); each later run the versions above the last."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec

    def partitions(self) -> DynamicPartitionsDefinition:
        """One dynamic partition per range of table versions, FIRST_LAST zero-padded."""
        return DynamicPartitionsDefinition(name=f"{self.spec.name}_versions")

    def backfill_policy(self) -> None:
        """Each range is its own run."""
        return None

    def scope(self, context: AssetExecutionContext) -> RunScope:
        """The run's range of versions."""
        window = self._window(context.partition_key, "partition")
        return RunScope(context.partition_key, [Partition(context.partition_key, window.micros)], window)

    def next_range(
        self, instance: DagsterInstance, delivered: Iterable[str] = (), open_reader: OpenReader | None = None
    ) -> str | None:
        """The versions above every known range up to the table's newest (at first: its snapshot)."""
        with change_feed(self.spec, open_reader) as feed:
            latest = feed.latest_version()
        known = [*instance.get_dynamic_partitions(self.partitions().name), *delivered]
        ends = [parsed[1] for key in known if (parsed := parse_range_key(key))]
        if not ends:
            return range_key(0, latest)
        if latest < max(ends):
            raise ChangeFeedError(
                f"{self.spec.name}: the table is at version {latest}, below version {max(ends)} this sync has "
                "read: it was re-created; start the sync again (a new name) or use mode incremental"
            )
        return range_key(max(ends) + 1, latest) if latest > max(ends) else None

    def trigger(self, job: SyncJob) -> SensorDefinition | None:
        """A sensor that looks at the table's newest version, adds the next range and requests it."""
        return range_sensor(
            self.spec,
            job,
            self.partitions(),
            self.next_range,
            reads="the table's changes since the last version read",
            unit="table version",
        )

    def prune_partitions(self, instance: DagsterInstance, store: ProfileStore) -> list[str]:
        """Nothing: the next version range is found from the ranges Dagster lists."""
        return []

    def planned_runs(
        self, store: ProfileStore, instance: DagsterInstance, partition: str | None, now: datetime
    ) -> list[PlannedRun]:
        """`--partition FIRST_LAST`, or every added range not yet delivered and then the next one."""
        name = self.partitions().name
        if partition:
            self._window(partition, "--partition")
            keys = [partition]
        else:
            delivered = set(store.delivered_partitions(self.spec.name, self.spec.sync.environment))
            keys = [key for key in instance.get_dynamic_partitions(name) if key not in delivered]
            try:
                if (key := self.next_range(instance, delivered)) is not None:
                    keys.append(key)
            except ChangeFeedError as error:
                raise RunError(str(error)) from None
        known = set(instance.get_dynamic_partitions(name))
        instance.add_dynamic_partitions(name, [key for key in keys if key not in known])
        return [PlannedRun(key, {"partition_key": key}) for key in keys]

    def _window(self, key: str, what: str) -> VersionWindow:
        parsed = parse_range_key(key)
        if parsed is None or parsed[0] < 0:
            raise RunError(
                f"{self.spec.name}: {what} {key} is not a range of table versions; keys are FIRST_LAST, both "
                f"included, e.g. {range_key(4, 9)} (0_N: the snapshot at version N)"
            )
        # Snowflake's versions are moments: the UI shows them as such.
        return VersionWindow(*parsed, moments=self.spec.connection.type == "snowflake")
