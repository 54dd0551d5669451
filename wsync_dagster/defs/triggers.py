"""What starts a sync: a schedule at its frequency, a sensor for dynamic partitions, or nothing (on demand)."""

from datetime import UTC, datetime

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindowPartitionsDefinition,
    build_schedule_from_partitioned_job,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from wsync_dagster.defs.partitions import last_tick, run_key, sync_partitions
from wsync_dagster.spec import SyncSpec


def build_trigger(
    spec: SyncSpec, job: UnresolvedAssetJobDefinition
) -> ScheduleDefinition | SensorDefinition | None:
    """The schedule or sensor of a sync, stopped when the sync is paused; None for on_demand."""
    settings = spec.sync
    if settings.schedule == "on_demand":
        return None
    partitions = sync_partitions(spec)
    if settings.schedule == "interval" and isinstance(partitions, TimeWindowPartitionsDefinition):
        return build_schedule_from_partitioned_job(
            job,
            name=f"{spec.name}_schedule",
            description=f"{spec.name} every {settings.frequency} from {settings.start.isoformat()}",  # type: ignore[union-attr]
            default_status=DefaultScheduleStatus.STOPPED
            if settings.paused
            else DefaultScheduleStatus.RUNNING,
        )
    return _run_sensor(spec, job, partitions)


def _run_sensor(spec: SyncSpec, job: UnresolvedAssetJobDefinition, partitions) -> SensorDefinition:
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
            run_requests=[
                RunRequest(
                    run_key=key,
                    tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
                )
            ],
            cursor=key,
        )

    return run_sensor
