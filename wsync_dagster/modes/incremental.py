"""Incremental mode on a time iterator: time-window partitions of the frequency, each read by its window."""

from __future__ import annotations

from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    PartitionKeyRange,
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

from wsync_dagster.iterators import epoch_micros, iterator_window
from wsync_dagster.modes.base import ONCE_INTERVAL_S, PlannedRun, RunError, RunScope, SyncJob
from wsync_dagster.modes.partitions import run_key, schedule_partitions
from wsync_dagster.run_environment import cannot_run
from wsync_dagster.run_partitions import Partition
from wsync_dagster.run_tags import partition_range_tags
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore


class TimeWindows:
    """Partitions are windows of the iterator's time; history is loaded by backfills or `wsync run`."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec

    def partitions(self) -> TimeWindowPartitionsDefinition:
        """Windows of `frequency` from historical_start, anchored at `start`."""
        return schedule_partitions(self.spec.sync, self.spec.sync.history_start)

    def backfill_policy(self) -> BackfillPolicy:
        """One run may cover many windows (backfills, catching up): the model is read once for the span."""
        return BackfillPolicy.single_run()

    def scope(self, context: AssetExecutionContext) -> RunScope:
        """The run's windows and the one read that covers them (reaching back by lookback)."""
        partitions_def = context.assets_def.partitions_def
        assert isinstance(partitions_def, TimeWindowPartitionsDefinition)
        keys = context.partition_key_range
        label = keys.start if keys.start == keys.end else f"{keys.start}..{keys.end}"
        windows = [partitions_def.time_window_for_partition_key(key) for key in context.partition_keys]
        partitions = [
            Partition(key, (epoch_micros(window.start), epoch_micros(window.end)))
            for key, window in zip(context.partition_keys, windows, strict=True)
        ]
        span = context.partition_time_window
        # The window before the run's first: what the default lookback reads again.
        before = partitions_def.get_prev_partition_window(span.start, respect_bounds=False)
        previous_start = before.start if before is not None else span.start
        return RunScope(
            label, partitions, iterator_window(self.spec.sync, span.start, span.end, previous_start)
        )

    def trigger(self, job: SyncJob) -> ScheduleDefinition | SensorDefinition | None:
        """`interval`: a schedule from `start`; `once`: a sensor for one run over every complete window."""
        settings = self.spec.sync
        if settings.schedule == "on_demand":
            return None
        if settings.schedule == "interval":
            return self._interval_schedule(job)
        return self._once_sensor(job)

    def _interval_schedule(self, job: SyncJob) -> ScheduleDefinition:
        """At each tick from `start`, the window that just ended; history before it is loaded by backfill."""
        spec, partitions = self.spec, self.partitions()
        start: datetime = spec.sync.start  # type: ignore[assignment]

        @schedule(
            name=f"{spec.name}_schedule",
            job=job,
            cron_schedule=partitions.get_cron_schedule(),
            execution_timezone=partitions.timezone,
            default_status=DefaultScheduleStatus.STOPPED
            if spec.sync.paused
            else DefaultScheduleStatus.RUNNING,
            description=f"{spec.name} every {spec.sync.frequency} from {start.isoformat()}",
        )
        def interval_schedule(context: ScheduleEvaluationContext):
            # Every run would fail on it: the tick says so instead (in the UI's tick history).
            if unrunnable := cannot_run(self.spec):
                return SkipReason(unrunnable)
            tick = context.scheduled_execution_time
            if tick is None or tick < start:
                return SkipReason(
                    f"the first run is due at {start.isoformat()}; load history with a backfill"
                )
            keys = partitions.get_partition_keys(current_time=tick)
            if not keys:
                return SkipReason("no complete partition yet")
            return RunRequest(run_key=keys[-1], partition_key=keys[-1])

        return interval_schedule

    def _once_sensor(self, job: SyncJob) -> SensorDefinition:
        """One run, at or after `start`, over every complete window up to then."""
        spec, partitions = self.spec, self.partitions()
        settings = spec.sync
        start: datetime = settings.start  # type: ignore[assignment]

        @sensor(
            name=f"{spec.name}_sensor",
            job=job,
            minimum_interval_seconds=ONCE_INTERVAL_S,
            default_status=DefaultSensorStatus.STOPPED if settings.paused else DefaultSensorStatus.RUNNING,
            description=f"{spec.name}: once run from {start.isoformat()}",
        )
        def once_sensor(context: SensorEvaluationContext):
            # Every run would fail on it: the tick says so instead (in the UI's tick history).
            if unrunnable := cannot_run(self.spec):
                return SkipReason(unrunnable)
            now = datetime.now(UTC)
            if now < start:
                return SkipReason(f"the first run is due at {start.isoformat()}")
            if context.cursor:
                return SkipReason(f"ran once at {context.cursor}")
            keys = partitions.get_partition_keys(current_time=now)
            if not keys:
                return SkipReason("no complete partition yet")
            key = run_key(now)
            return SensorResult(
                run_requests=[RunRequest(run_key=key, tags=partition_range_tags(keys[0], keys[-1]))],
                cursor=key,
            )

        return once_sensor

    def due(self, store: ProfileStore, now: datetime) -> list[str]:
        """Every complete window up to now that has not been delivered, gaps included."""
        keys = self.partitions().get_partition_keys(current_time=now)
        delivered = set(store.delivered_partitions(self.spec.name, self.spec.sync.environment))
        return [key for key in keys if key not in delivered]

    def prune_partitions(self, instance: DagsterInstance, store: ProfileStore) -> list[str]:
        """Nothing: time windows are fixed by the schedule, not added per run."""
        return []

    def planned_runs(
        self, store: ProfileStore, instance: DagsterInstance, partition: str | None, now: datetime
    ) -> list[PlannedRun]:
        """`--partition KEY` or `FIRST..LAST` as one run; else one run per stretch of undelivered windows."""
        if partition:
            first, last = self._range(partition)
            covered = len(self.partitions().get_partition_keys_in_range(PartitionKeyRange(first, last)))
            return [PlannedRun(_label(first, last), {"tags": partition_range_tags(first, last)}, covered)]
        keys = self.partitions().get_partition_keys(current_time=now)
        place = {key: index for index, key in enumerate(keys)}
        return [
            PlannedRun(
                _label(first, last),
                {"tags": partition_range_tags(first, last)},
                place[last] - place[first] + 1,
            )
            for first, last in _stretches(keys, set(self.due(store, now)))
        ]

    def _range(self, partition: str) -> tuple[str, str]:
        """A partition key or `FIRST..LAST`, checked against the sync's partitions."""
        first, _, last = partition.partition("..")
        last = last or first
        partitions = self.partitions()
        for key in (first, last):
            if not partitions.has_partition_key(key):
                if (not_over := self._not_over(key)) is not None:
                    raise RunError(not_over)
                example = partitions.get_first_partition_key()
                raise RunError(
                    f"{self.spec.name}: --partition {key} is not a partition of this sync (keys look like {example})"
                )
        if last < first:
            raise RunError(
                f"{self.spec.name}: --partition {partition} is reversed: write the earlier partition first "
                f"({last}..{first})"
            )
        return first, last

    def current_window(self, now: datetime) -> RunScope:
        """The window under way at `now`, read up to now: [its start, now), reaching back by lookback."""
        partitions = self.partitions()
        key = partitions.get_partition_key_for_timestamp(now.timestamp())
        window = partitions.time_window_for_partition_key(key)
        before = partitions.get_prev_partition_window(window.start, respect_bounds=False)
        previous_start = before.start if before is not None else window.start
        return RunScope(
            f"{key} (up to {now.isoformat(timespec='seconds')})",
            [Partition(key, (epoch_micros(window.start), epoch_micros(now)))],
            iterator_window(self.spec.sync, window.start, now, previous_start),
        )

    def _not_over(self, key: str) -> str | None:
        """Why a well-formed key that is no partition yet cannot run: its window is not over; else None."""
        partitions = self.partitions()
        try:
            window = partitions.time_window_for_partition_key(key)
        except ValueError:
            return None
        now = datetime.now(UTC)
        if window.end <= now:
            return None
        current = partitions.time_window_for_partition_key(
            partitions.get_partition_key_for_timestamp(now.timestamp())
        )
        name, end = self.spec.name, current.end.isoformat()
        when = (
            f"is not over: it completes at {end}"
            if window.start <= now
            else f"has not begun: the next window completes at {end}"
        )
        return (
            f"{name}: --partition {key} {when}; to deliver what the warehouse holds up to now, "
            f"run `wsync run {name} --now`"
        )


def _label(first: str, last: str) -> str:
    """A run's partitions as `wsync run` prints them: `KEY` or `FIRST..LAST`."""
    return first if first == last else f"{first}..{last}"


def _stretches(keys: list[str], due: set[str]) -> list[tuple[str, str]]:
    """(first, last) of each run of consecutive keys that are due."""
    spans: list[tuple[str, str]] = []
    previous_due = False
    for key in keys:
        if key in due and previous_due:
            spans[-1] = (spans[-1][0], key)
        elif key in due:
            spans.append((key, key))
        previous_due = key in due
    return spans
