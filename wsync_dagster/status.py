"""One sync at a glance, as a sync page shows it: active or paused, when it delivered, what is next, how far
behind the warehouse it is, and what its last run did; and the pause/resume toggle of its schedule or sensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.definitions.partitions.definition import DynamicPartitionsDefinition
from dagster._core.remote_representation.external import RemoteSchedule, RemoteSensor
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from dagster._utils.schedules import cron_string_iterator

from wsync_dagster.code_location import remote_repository
from wsync_dagster.defs import sync_job_name
from wsync_dagster.defs.assets import delivery_key
from wsync_dagster.modes import sync_mode
from wsync_dagster.modes.incremental import TimeWindows
from wsync_dagster.modes.partitions import schedule_partitions
from wsync_dagster.modes.ranges import parse_range_key
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore

# Partitions listed by key in the status; beyond, only their number and the first and last.
LISTED = 20


class StatusError(RuntimeError):
    """A status or toggle that cannot be given; the message names the sync and what to do."""


@dataclass
class SyncStatus:
    """What a sync's page shows."""

    sync: str
    state: str  # active, paused, or on demand (no schedule or sensor)
    trigger: str | None  # the schedule's or sensor's name
    trigger_kind: str | None  # schedule or sensor
    mode: str
    iterator: str | None  # "updated_at (timestamp)"; None for full and cdc
    schedule: str
    frequency: str | None
    environment: str
    last_delivery: dict[str, Any] | None = None  # partitions, first, last, delivered_at, counts
    rejects: dict[str, int] | None = None  # of the last delivery: rejected rows, identity conflicts
    last_run: dict[str, Any] | None = None  # the newest Dagster run of the sync's job
    next_run: str | None = None
    next_run_note: str = ""
    warehouse: dict[str, Any] | None = None  # newest value or version, delivered through, lag
    warehouse_error: str | None = None
    missing: dict[str, Any] = field(default_factory=dict)  # count, first, last, keys (up to LISTED)
    failed: list[str] = field(default_factory=list)
    # Per destination: its type, the profiles it has yet to receive, and pending deletions of erased people.
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, for `--json`."""
        return asdict(self)


def _remote_trigger(spec: SyncSpec, instance: DagsterInstance) -> RemoteSchedule | RemoteSensor | None:
    """The sync's schedule or sensor as the UI sees it (same location, repository and name); None for on_demand."""
    if spec.sync.schedule == "on_demand":
        return None
    remote = remote_repository(spec, instance)
    if remote.has_schedule(f"{spec.name}_schedule"):
        return remote.get_schedule(f"{spec.name}_schedule")
    return remote.get_sensor(f"{spec.name}_sensor")


def _kind(remote: RemoteSchedule | RemoteSensor) -> str:
    return "schedule" if isinstance(remote, RemoteSchedule) else "sensor"


def _is_running(remote: RemoteSchedule | RemoteSensor, instance: DagsterInstance) -> bool:
    stored = instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
    return remote.get_current_instigator_state(stored).is_running


def set_paused(spec: SyncSpec, instance: DagsterInstance, paused: bool) -> str:
    """Stop (pause) or start (resume) the sync's schedule or sensor in the instance, as the UI's toggle does;
    a line saying what changed."""
    remote = _remote_trigger(spec, instance)
    if remote is None:
        raise StatusError(
            f"{spec.name}: schedule on_demand has no schedule or sensor to {'pause' if paused else 'resume'};"
            " it runs only by `wsync run` or the UI's Materialize"
        )
    if instance.is_ephemeral or instance.scheduler is None:
        raise StatusError(
            f"{spec.name}: set DAGSTER_HOME to the instance the UI and its daemon use: the {_kind(remote)}'s "
            "state is kept there"
        )
    kind, was_running = _kind(remote), _is_running(remote, instance)
    if paused and not was_running:
        return f"{spec.name}: already paused ({kind} {remote.name} is stopped)"
    if not paused and was_running:
        return f"{spec.name}: already active ({kind} {remote.name} is running)"
    if isinstance(remote, RemoteSchedule):
        if paused:
            instance.stop_schedule(remote.get_remote_origin_id(), remote.selector_id, remote)
        else:
            instance.start_schedule(remote)
    elif paused:
        instance.stop_sensor(remote.get_remote_origin_id(), remote.selector_id, remote)
    else:
        instance.start_sensor(remote)
    if paused:
        return (
            f"{spec.name}: paused ({kind} {remote.name} stopped; `wsync resume {spec.name}` starts it again)"
        )
    return f"{spec.name}: active ({kind} {remote.name} running)"


def sync_status(
    spec: SyncSpec, store: ProfileStore, instance: DagsterInstance, now: datetime | None = None
) -> SyncStatus:
    """What the sync's page shows now; a warehouse that cannot be read is said, not raised."""
    now = now or datetime.now(UTC)
    settings = spec.sync
    remote = _remote_trigger(spec, instance)
    if remote is None:
        state = "on demand"
    elif instance.is_ephemeral:
        state = "paused" if settings.paused else "active"
    else:
        state = "active" if _is_running(remote, instance) else "paused"
    status = SyncStatus(
        sync=spec.name,
        state=state,
        trigger=remote.name if remote is not None else None,
        trigger_kind=_kind(remote) if remote is not None else None,
        mode=settings.mode,
        iterator=f"{settings.iterator} ({settings.iterator_type})" if settings.iterator else None,
        schedule=settings.schedule,
        frequency=settings.frequency,
        environment=settings.environment,
    )
    if instance.is_ephemeral:
        status.notes.append("DAGSTER_HOME is not set: no runs and no paused state are recorded")
    deliveries = store.deliveries(spec.name, settings.environment)
    delivered = {row["partition"] for row in deliveries}
    _last_delivery(status, deliveries)
    _last_run(status, spec, instance)
    _next_run(status, spec, state, bool(deliveries), now)
    _lag(status, spec, deliveries)
    _missing(status, spec, store, instance, delivered, now)
    for destination in spec.destinations:
        status.destinations[destination.name] = {
            "type": destination.type,
            "pending_profiles": store.pending_profiles(spec.name, destination.name),
            "pending_erasures": store.pending_erasures(spec.name, destination.name),
        }
    return status


def _last_delivery(status: SyncStatus, deliveries: list[dict[str, Any]]) -> None:
    """The newest delivery (all the partitions one run delivered together), its counts and rejects."""
    if not deliveries:
        return
    newest = deliveries[-1]["seq"]
    last = [row for row in deliveries if row["seq"] == newest]
    counts: dict[str, int] = {}
    for row in last:
        for name, value in row["counts"].items():
            counts[name] = counts.get(name, 0) + value
    keys = [row["partition"] for row in last]
    status.last_delivery = {
        "partitions": len(keys),
        "first": keys[0],
        "last": keys[-1],
        "delivered_at": max(row["delivered_at"] for row in last),
        "counts": counts,
    }
    status.rejects = {
        "rejected_rows": counts.get("rejects", 0),
        "identity_conflicts": counts.get("identity_conflicts", 0),
    }


def _last_run(status: SyncStatus, spec: SyncSpec, instance: DagsterInstance) -> None:
    """The newest Dagster run of the sync's job: its outcome and when."""
    runs = instance.get_run_records(RunsFilter(job_name=sync_job_name(spec)), limit=1)
    if not runs:
        return
    record = runs[0]
    run = record.dagster_run
    status.last_run = {
        "run_id": run.run_id,
        "outcome": run.status.value,
        "started_at": _iso(record.start_time),
        "ended_at": _iso(record.end_time),
    }
    if run.status == DagsterRunStatus.FAILURE:
        status.notes.append(f"the last run failed: see run {run.run_id} in the UI (Runs)")


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _next_run(status: SyncStatus, spec: SyncSpec, state: str, ran: bool, now: datetime) -> None:
    """When the schedule or sensor starts the next run, or why none is due."""
    settings = spec.sync
    if state == "on demand":
        status.next_run_note = "on demand: `wsync run` or the UI's Materialize"
        return
    if state == "paused":
        status.next_run_note = f"none while paused (`wsync resume {spec.name}`)"
        return
    start: datetime = settings.start  # type: ignore[assignment]
    if settings.schedule == "once":
        if now < start:
            status.next_run = start.isoformat()
        else:
            status.next_run_note = "ran once" if ran else "due now: the sensor starts it at its next check"
        return
    if (settings.mode == "incremental" and settings.iterator_type == "integer") or settings.mode == "cdc":
        status.next_run_note = (
            f"when new {'versions' if settings.mode == 'cdc' else 'values'} arrive "
            f"(the sensor looks {settings.frequency})"
        )
        if now < start:
            status.next_run = start.isoformat()
        return
    # Windows are run as they end (time windows' schedule, full mode's sensor): the cron of the windows.
    partitions = schedule_partitions(settings, settings.history_start)
    after = max(now, start - timedelta(seconds=1))
    ticks = cron_string_iterator(after.timestamp(), partitions.get_cron_schedule(), partitions.timezone)
    status.next_run = (
        next(tick for tick in ticks if tick.timestamp() > after.timestamp()).astimezone(UTC).isoformat()
    )


def _lag(status: SyncStatus, spec: SyncSpec, deliveries: list[dict[str, Any]]) -> None:
    """The warehouse's newest iterator value (or table version) against what has been delivered."""
    settings = spec.sync
    if settings.mode == "full":
        status.warehouse = {"note": "full mode reads the whole model each run"}
        return
    keys = [row["partition"] for row in deliveries]
    try:
        if settings.mode == "cdc":
            from wsync_dagster.changes import change_feed

            with change_feed(spec) as feed:
                newest: Any = feed.latest_version()
            _range_lag(status, newest, keys, "versions")
        elif settings.iterator_type == "integer":
            from wsync_dagster.iterator_extent import iterator_extent

            extent = iterator_extent(spec)
            _range_lag(status, None if extent is None else extent[1], keys, "values")
        else:
            from wsync_dagster.iterator_extent import newest_iterator

            _time_lag(status, spec, newest_iterator(spec), keys)
    except Exception as error:  # any warehouse's failure is one line on the page, and the rest still shows
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        status.warehouse_error = f"cannot read the warehouse: {lines[0] if lines else type(error).__name__}"


def _range_lag(status: SyncStatus, newest: int | None, keys: list[str], unit: str) -> None:
    ends = [parsed[1] for key in keys if (parsed := parse_range_key(key))]
    through = max(ends) if ends else None
    behind = None if newest is None or through is None else newest - through
    status.warehouse = {
        "newest": newest,
        "delivered_through": through,
        "behind": max(behind, 0) if behind is not None else None,
        "unit": unit,
    }


def _time_lag(status: SyncStatus, spec: SyncSpec, newest: datetime | None, keys: list[str]) -> None:
    partitions = TimeWindows(spec).partitions()
    ends = [
        partitions.time_window_for_partition_key(key).end for key in keys if partitions.has_partition_key(key)
    ]
    through = max(ends) if ends else None
    behind = None
    if newest is not None:
        behind = max(newest - through, timedelta(0)) if through is not None else None
    status.warehouse = {
        "newest": newest.isoformat() if newest else None,
        "delivered_through": through.astimezone(UTC).isoformat() if through else None,
        "behind_seconds": int(behind.total_seconds()) if behind is not None else None,
        "behind": _duration(behind) if behind is not None else None,
        "unit": "time",
    }


def _duration(span: timedelta) -> str:
    """'0s', '45m', '9h', '3d 4h': the two largest units."""
    seconds = int(span.total_seconds())
    parts = [
        (seconds // 86400, "d"),
        (seconds % 86400 // 3600, "h"),
        (seconds % 3600 // 60, "m"),
        (seconds % 60, "s"),
    ]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def _missing(
    status: SyncStatus,
    spec: SyncSpec,
    store: ProfileStore,
    instance: DagsterInstance,
    delivered: set[str],
    now: datetime,
) -> None:
    """Partitions due (or known to Dagster) but not delivered, and those of them whose last run failed."""
    mode = sync_mode(spec)
    partitions = mode.partitions()
    if isinstance(mode, TimeWindows):
        missing = mode.due(store, now)
    else:
        assert isinstance(partitions, DynamicPartitionsDefinition)
        missing = [key for key in instance.get_dynamic_partitions(partitions.name) if key not in delivered]
    status.missing = {
        "count": len(missing),
        "first": missing[0] if missing else None,
        "last": missing[-1] if missing else None,
        "keys": missing[:LISTED],
    }
    if not missing or instance.is_ephemeral:
        return
    try:
        by_partition = instance.get_status_by_partition(delivery_key(spec), missing, partitions) or {}
    except Exception as error:  # Dagster's partition cache: a status without it still tells the rest
        status.notes.append(f"failed partitions unknown: {error}")
        return
    status.failed = [key for key, value in by_partition.items() if value == AssetPartitionStatus.FAILED]


def render(status: SyncStatus) -> list[str]:
    """The status as lines for a terminal."""
    trigger = f" ({status.trigger_kind} {status.trigger})" if status.trigger else ""
    lines = [f"{status.sync}: {status.state}{trigger}"]
    every = f", {status.frequency}" if status.frequency else ""
    on = f" on {status.iterator}" if status.iterator else ""
    lines.append(
        f"  mode        {status.mode}{on}, {status.schedule.replace('_', ' ')}{every} ({status.environment})"
    )
    if status.last_delivery is None:
        lines.append("  delivered   never run: nothing delivered yet")
    else:
        last = status.last_delivery
        keys = (
            last["first"]
            if last["partitions"] == 1
            else f"{last['first']}..{last['last']} ({last['partitions']} partitions)"
        )
        lines.append(f"  delivered   {keys} at {last['delivered_at']}")
        counts = ", ".join(f"{name}={value}" for name, value in last["counts"].items() if value)
        lines.append(f"  counts      {counts or 'nothing read'}")
        rejects = status.rejects or {}
        lines.append(
            f"  rejects     {_count(rejects.get('rejected_rows', 0), 'rejected row')}, "
            f"{_count(rejects.get('identity_conflicts', 0), 'identity conflict')} in the last delivery"
            + (f" (`wsync rejects {status.sync}`)" if any(rejects.values()) else "")
        )
    if status.last_run is None:
        lines.append("  last run    none recorded")
    else:
        run = status.last_run
        lines.append(
            f"  last run    {_OUTCOMES.get(run['outcome'], run['outcome'].lower())}, started {run['started_at'] or '-'}"
            + (f", ended {run['ended_at']}" if run["ended_at"] else "")
            + f" (run {run['run_id']})"
        )
    lines.append(
        f"  next run    {status.next_run or ''}{' — ' if status.next_run and status.next_run_note else ''}{status.next_run_note}"
    )
    lines.append(f"  warehouse   {_render_lag(status)}")
    missing = status.missing
    if missing.get("count"):
        span = missing["first"] if missing["count"] == 1 else f"{missing['first']} … {missing['last']}"
        lines.append(f"  missing     {_count(missing['count'], 'partition')} not delivered: {span}")
    else:
        lines.append("  missing     none")
    if status.failed:
        shown = ", ".join(status.failed[:LISTED]) + (" …" if len(status.failed) > LISTED else "")
        lines.append(
            f"  failed      {_count(len(status.failed), 'partition')} whose last run failed: {shown}"
        )
    for name, outbox in status.destinations.items():
        pending = outbox["pending_profiles"]
        erasures = outbox["pending_erasures"]
        lines.append(
            f"  forward     {name} ({outbox['type']}): "
            + (
                f"{_count(pending, 'profile')} pending (`wsync forward {status.sync}`)"
                if pending
                else "up to date"
            )
            + (
                f"; {_count(erasures, 'deletion request')} of erased people pending (`wsync forward {status.sync}`)"
                if erasures
                else ""
            )
        )
    lines.extend(f"  note        {note}" for note in status.notes)
    return lines


# A Dagster run's status as the page says it.
_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "CANCELED": "canceled", "STARTED": "under way"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _render_lag(status: SyncStatus) -> str:
    if status.warehouse_error:
        return status.warehouse_error
    lag = status.warehouse or {}
    if "note" in lag:
        return lag["note"]
    if lag.get("newest") is None:
        return "the model has no rows yet"
    if lag["delivered_through"] is None:
        return f"newest {lag['newest']}; nothing delivered yet"
    if lag["unit"] == "time":
        behind = "up to date" if lag["behind_seconds"] == 0 else f"{lag['behind']} behind"
    else:
        behind = "up to date" if lag["behind"] == 0 else f"{lag['behind']} {lag['unit']} behind"
    return f"newest {lag['newest']}, delivered through {lag['delivered_through']}: {behind}"


def print_status(statuses: list[SyncStatus]) -> None:
    """Each sync's lines, a blank line between syncs."""
    for n, status in enumerate(statuses):
        if n:
            print()
        print("\n".join(render(status)))
