"""Full mode: every run reads the whole model; runs are dynamic partitions keyed by the moment they start."""

from __future__ import annotations

from datetime import UTC, datetime

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

from wsync_dagster.iterators import epoch_micros
from wsync_dagster.modes.base import ONCE_INTERVAL_S, PlannedRun, RunError, RunScope, SyncJob
from wsync_dagster.modes.partitions import last_tick, run_key, run_key_time
from wsync_dagster.run_environment import cannot_run
from wsync_dagster.run_partitions import Partition
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore

# Delivered run keys Dagster keeps listing per full-mode sync, newest first; every undelivered one stays too.
KEPT_RUN_KEYS = 100


class FullMode:
    """Re-read everything; only rows whose fingerprint changed are applied."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec

    def partitions(self) -> DynamicPartitionsDefinition:
        """One dynamic partition per run, keyed YYYYMMDDTHHMMSS."""
        return DynamicPartitionsDefinition(name=f"{self.spec.name}_runs")

    def backfill_policy(self) -> None:
        """Each run key is its own run."""
        return None

    def scope(self, context: AssetExecutionContext) -> RunScope:
        """The run key; its rows describe the moment the table is read, whatever the key says."""
        key = context.partition_key
        try:
            run_key_time(key)
        except ValueError:
            raise ValueError(
                f"{self.spec.name}: partition '{key}' is not a full-mode run key; keys are the run's UTC time "
                f"as YYYYMMDDTHHMMSS, e.g. 20241115T190000"
            ) from None
        return RunScope(key, [Partition(key)], None, epoch_micros(datetime.now(UTC)))

    def trigger(self, job: SyncJob) -> SensorDefinition | None:
        """A sensor that adds a run key at each tick of the frequency (or once), then requests it."""
        settings = self.spec.sync
        if settings.schedule == "on_demand":
            return None
        start: datetime = settings.start  # type: ignore[assignment]

        @sensor(
            name=f"{self.spec.name}_sensor",
            job=job,
            # A once sensor only skips after its run: a short interval costs nothing.
            minimum_interval_seconds=ONCE_INTERVAL_S if settings.schedule == "once" else 60,
            default_status=DefaultSensorStatus.STOPPED if settings.paused else DefaultSensorStatus.RUNNING,
            description=f"{self.spec.name}: {settings.schedule} run from {start.isoformat()}",
        )
        def run_sensor(context: SensorEvaluationContext):
            # Every run would fail on it: the tick says so instead (in the UI's tick history).
            if unrunnable := cannot_run(self.spec):
                return SkipReason(unrunnable)
            now = datetime.now(UTC)
            if now < start:
                return SkipReason(f"the first run is due at {start.isoformat()}")
            if settings.schedule == "once" and context.cursor:
                return SkipReason(f"ran once at {context.cursor}")
            due = now if settings.schedule == "once" else last_tick(now, settings.partition_frequency, start)
            key = run_key(due)
            if context.cursor == key:
                return SkipReason(f"run {key} already requested")
            return SensorResult(
                run_requests=[RunRequest(run_key=key, partition_key=key)],
                dynamic_partitions_requests=[self.partitions().build_add_request([key])],
                cursor=key,
            )

        return run_sensor

    def planned_runs(
        self, store: ProfileStore, instance: DagsterInstance, partition: str | None, now: datetime
    ) -> list[PlannedRun]:
        """One run, keyed by now (or by --partition, a run key)."""
        key = partition or run_key(now)
        try:
            run_key_time(key)
        except ValueError:
            raise RunError(
                f"{self.spec.name}: --partition {key} is not a full-mode run key (YYYYMMDDTHHMMSS)"
            ) from None
        instance.add_dynamic_partitions(self.partitions().name, [key])
        return [PlannedRun(key, {"partition_key": key})]

    def prune_partitions(self, instance: DagsterInstance, store: ProfileStore) -> list[str]:
        """Delivered run keys older than the newest KEPT_RUN_KEYS, deleted: a run adds one key, never removes
        one, and Dagster's partition list would grow with every run."""
        name = self.partitions().name
        older = sorted(instance.get_dynamic_partitions(name))[:-KEPT_RUN_KEYS]
        delivered = set(store.delivered_partitions(self.spec.name, self.spec.sync.environment))
        stale = [key for key in older if key in delivered]
        for key in stale:
            instance.delete_dynamic_partition(name, key)
        return stale
