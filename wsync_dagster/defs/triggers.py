"""What starts a sync: a schedule at its frequency, a sensor for dynamic partitions, or nothing (on demand)."""

from datetime import UTC, datetime
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindowPartitionsDefinition,
    schedule,
    sensor,
)

from wsync_dagster.defs.partitions import last_tick, run_key, sync_partitions
from wsync_dagster.defs.tags import partition_range_tags
from wsync_dagster.spec import SyncSpec

# What define_asset_job returns; Dagster does not export its class.
SyncJob = Any


def build_trigger(spec: SyncSpec, job: SyncJob) -> ScheduleDefinition | SensorDefinition | None:
    """The schedule or sensor of a sync, stopped when the sync is paused; None for on_demand."""
    settings = spec.sync
    if settings.schedule == "on_demand":
        return None
    partitions = sync_partitions(spec)
    if settings.schedule == "interval" and isinstance(partitions, TimeWindowPartitionsDefinition):
        return _interval_schedule(spec, job, partitions)
    return _run_sensor(spec, job, partitions)


def _interval_schedule(
    spec: SyncSpec, job: SyncJob, partitions: TimeWindowPartitionsDefinition
) -> ScheduleDefinition:
    """At each tick from `start`, the window that just ended; history before it is loaded by backfill."""
    start: datetime = spec.sync.start  # type: ignore[assignment]

    @schedule(
        name=f"{spec.name}_schedule",
        job=job,
        cron_schedule=partitions.get_cron_schedule(),
        execution_timezone=partitions.timezone,
        default_status=DefaultScheduleStatus.STOPPED if spec.sync.paused else DefaultScheduleStatus.RUNNING,
        description=f"{spec.name} every {spec.sync.frequency} from {start.isoformat()}",
    )
    def interval_schedule(context: ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        if tick is None or tick < start:
            return SkipReason(f"the first run is due at {start.isoformat()}; load history with a backfill")
        keys = partitions.get_partition_keys(current_time=tick)
        if not keys:
            return SkipReason("no complete partition yet")
        return RunRequest(run_key=keys[-1], partition_key=keys[-1])

    return interval_schedule


def _run_sensor(spec: SyncSpec, job: SyncJob, partitions) -> SensorDefinition:
    """A sensor for what a cron schedule cannot express: full-mode ticks that add a run key, and `once`."""
    settings = spec.sync

    @sensor(
        name=f"{spec.name}_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED if settings.paused else DefaultSensorStatus.RUNNING,
        description=f"{spec.name}: {settings.schedule} run from {settings.start.isoformat()}",  # type: ignore[union-attr]
    )
    def run_sensor(context: SensorEvaluationContext):
        now = datetime.now(UTC)
        if now < settings.start:  # type: ignore[operator]
            return SkipReason(f"the first run is due at {settings.start.isoformat()}")  # type: ignore[union-attr]
        if settings.schedule == "once" and context.cursor:
            return SkipReason(f"ran once at {context.cursor}")
        due = (
            now
            if settings.schedule == "once"
            else last_tick(now, settings.partition_frequency, settings.start)
        )
        key = run_key(due)  # type: ignore[arg-type]
        if context.cursor == key:
            return SkipReason(f"run {key} already requested")
        if isinstance(partitions, DynamicPartitionsDefinition):
            return SensorResult(
                run_requests=[RunRequest(run_key=key, partition_key=key)],
                dynamic_partitions_requests=[partitions.build_add_request([key])],
                cursor=key,
            )
        # `once` on time partitions: one run over every complete window up to now.
        keys = partitions.get_partition_keys(current_time=now)
        if not keys:
            return SkipReason("no complete partition yet")
        return SensorResult(
            run_requests=[RunRequest(run_key=key, tags=partition_range_tags(keys[0], keys[-1]))],
            cursor=key,
        )

    return run_sensor
