"""Run one sync through Dagster from the command line: one partition, or everything that is due."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dagster import (
    AssetCheckSeverity,
    DagsterExecutionInterruptedError,
    DagsterInstance,
)

from wsync_dagster.cancellation import QueryStopped
from wsync_dagster.code_location import job_origins, runs_on_the_jobs_page
from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.defs.assets import (
    PROFILE_STORE_POOL,
    RUN_TOTALS_PREFIX,
    delivery_key,
    forward_key,
    mapped_key,
)
from wsync_dagster.defs.pools import warehouse_pool
from wsync_dagster.destinations.forwarding import forward
from wsync_dagster.modes import RunError, sync_mode
from wsync_dagster.modes.incremental import TimeWindows
from wsync_dagster.progress import PROGRESS, logger, pace
from wsync_dagster.read_plan import check_mapping
from wsync_dagster.recovery import process_tags, recover_abandoned_runs, wait_for_pool, watch_pool
from wsync_dagster.run_lock import one_run_at_a_time
from wsync_dagster.run_tags import ALLOW_MASS_REMOVAL
from wsync_dagster.settings import lock_timeout
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore
from wsync_dagster.sync_now import NowBlocked, deliver_window_under_way

# A failed step's stack trace stays in the run's logs; the command prints one line per failure.
_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# The daemon must not re-run a run behind the back of the terminal that started it (and saw it fail).
MAX_RETRIES_TAG = "dagster/max_retries"
# A step that failed with one of these was interrupted (a stop signal), not broken.
_INTERRUPTS = {DagsterExecutionInterruptedError.__name__, KeyboardInterrupt.__name__, QueryStopped.__name__}


class DeliveryBlocked(RunError):
    """A blocking check (checks.block_on_reject_rate) failed: the run delivered nothing."""


class RunInterrupted(KeyboardInterrupt):
    """The interrupt (SIGINT or SIGTERM) that stopped a run, saying what it left: a delivery is all or nothing."""


@dataclass
class RunReport:
    """What one `wsync run` did."""

    partitions: str
    partition_count: int = 0
    run_id: str | None = None
    metadata: dict[str, dict] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # checks of severity WARN that did not pass


def run_sync(
    spec: SyncSpec,
    store: ProfileStore,
    instance: DagsterInstance,
    *,
    partition: str | None = None,
    store_url: str | None = None,
    now: datetime | None = None,
    allow_mass_removal: bool = False,
    up_to_now: bool = False,
) -> RunReport:
    """Check the mapping, then materialize the sync's job for one partition or all that are due; a run of the
    same sync under way (another process) is waited for first. `up_to_now`: then also deliver a time-window
    sync's window under way, read up to now (other modes read up to now anyway)."""
    with one_run_at_a_time(spec.name, spec.sync.environment, lock_timeout(), logger.info):
        report = _run_sync(spec, store, instance, partition, store_url, now, allow_mass_removal)
        mode = sync_mode(spec)
        if up_to_now and isinstance(mode, TimeWindows):
            _add_window_under_way(report, spec, store, mode.current_window(now or datetime.now(UTC)))
        return report


def _add_window_under_way(report: RunReport, spec: SyncSpec, store: ProfileStore, scope) -> None:
    """Deliver the window under way and add it, its counts and a failed check to the report."""
    try:
        done = deliver_window_under_way(spec, store, scope)
    except NowBlocked as blocked:
        raise DeliveryBlocked(f"{blocked}; the window under way delivered nothing") from None
    report.partitions = ", ".join(part for part in (report.partitions, done.label) if part)
    report.partition_count += 1
    report.run_id = done.run_id if report.run_id is None else f"{report.run_id}, {done.run_id}"
    counts = {
        mapped_key(spec).to_user_string(): done.mapped.as_dict(),
        delivery_key(spec).to_user_string(): done.delivered.totals.as_dict(),
    }
    # No Dagster run, so no forward asset: the window's changes are forwarded here, as a run's would be.
    for destination in spec.destinations:
        sent = forward(spec, destination, store, progress=logger.info)
        counts[forward_key(spec, destination.name).to_user_string()] = sent.as_metadata()
    for asset_key, found in counts.items():
        totals = report.metadata.setdefault(asset_key, {})
        for name, value in found.items():
            totals[name] = totals.get(name, 0) + value
    if done.failed_check:
        report.failed_checks.append(f"{mapped_key(spec).to_user_string()}:reject_rate {done.failed_check}")


def _runs_done(number: int, runs: list, done: int, total: int, started: float) -> str:
    """` (run 2 of 3: 40 of 100 partitions done, …)` when `wsync run` makes several runs; else nothing."""
    if len(runs) == 1:
        return ""
    said = pace(done, total, time.monotonic() - started, "partitions")
    return f" (run {number} of {len(runs)}: {done} of {total} partitions done{', ' + said if said else ''})"


def _run_sync(
    spec: SyncSpec,
    store: ProfileStore,
    instance: DagsterInstance,
    partition: str | None,
    store_url: str | None,
    now: datetime | None,
    allow_mass_removal: bool,
) -> RunReport:
    for abandoned in recover_abandoned_runs(instance):
        logger.info(str(abandoned))
    check_mapping(spec)
    runs = sync_mode(spec).planned_runs(store, instance, partition, now or datetime.now(UTC))
    if not runs:
        return RunReport(partitions="")
    job = build_definitions([spec], store_url=store_url).resolve_job_def(sync_job_name(spec))
    started, done, total = time.monotonic(), 0, sum(run.partitions for run in runs)
    report = RunReport(partitions=", ".join(run.label for run in runs), partition_count=total)
    delivered_before = set(store.delivered_partitions(spec.name, spec.sync.environment))
    origins = job_origins(spec, instance)
    for number, run in enumerate(runs, 1):
        label, options = run.label, dict(run.options)
        logger.info(
            f"{spec.name}: one Dagster run for partitions {label}{_runs_done(number, runs, done, total, started)}",
            extra={PROGRESS: True},
        )
        done += run.partitions
        if allow_mass_removal:
            options["tags"] = {**options.get("tags", {}), ALLOW_MASS_REMOVAL: "true"}
        with runs_on_the_jobs_page(instance, origins):
            result = _execute(job, instance, options, warehouse_pool(spec))
        if not result.success:
            if _interrupted(result):
                delivered = set(store.delivered_partitions(spec.name, spec.sync.environment))
                raise _interruption(
                    spec, label, result.run_id, label.split("..")[-1] in delivered - delivered_before
                )
            if blocked := _blocking_failures(result):
                raise DeliveryBlocked(
                    f"{spec.name}: {blocked}; fix the rows or the mapping (or raise checks.max_reject_rate), "
                    f"then run again (run {result.run_id})"
                )
            raise RunError(f"{spec.name}: run {result.run_id} failed: {_failure(result)}")
        _add_result(report, result)
    return report


def _execute(job, instance: DagsterInstance, options: dict, read_pool: str):
    """Wait for a profile-store slot, then run the job here, saying who holds a pool its steps wait for."""
    try:
        wait_for_pool(instance, PROFILE_STORE_POOL, logger.info)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted while waiting for pool {PROFILE_STORE_POOL}; nothing ran"
        ) from None
    run_id = str(uuid.uuid4())
    tags = {**options.pop("tags", {}), **process_tags(), MAX_RETRIES_TAG: "0"}
    with (
        watch_pool(instance, read_pool, run_id, logger.info),
        watch_pool(instance, PROFILE_STORE_POOL, run_id, logger.info),
    ):
        return job.execute_in_process(
            instance=instance,
            run_config=_QUIET_LOGS,
            raise_on_error=False,
            run_id=run_id,
            tags=tags,
            **options,
        )


def _interrupted(result) -> bool:
    return any(
        event.is_step_failure
        and event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name in _INTERRUPTS
        for event in result.all_events
    )


def _interruption(spec: SyncSpec, label: str, run_id: str, committed: bool) -> RunInterrupted:
    """What an interrupted run left: its delivery committed whole, or nothing of it."""
    if committed:
        return RunInterrupted(
            f"{spec.name}: interrupted after the delivery of {label} committed: the profile store holds it; "
            f"run {run_id} marked failed"
        )
    return RunInterrupted(
        f"{spec.name}: interrupted before the delivery of {label} committed: nothing of it is in the profile "
        f"store; run {run_id} marked failed and its {PROFILE_STORE_POOL} slot freed"
    )


def _add_result(report: RunReport, result) -> None:
    """Add one Dagster run's counts and failed checks to the report."""
    report.run_id = result.run_id if report.run_id is None else f"{report.run_id}, {result.run_id}"
    for event in result.get_asset_materialization_events():
        # Each partition carries its own counts: the report adds them up (a profile changed in several
        # partitions is counted in each; the run log's "delivered" line counts it once).
        materialization = event.step_materialization_data.materialization
        totals = report.metadata.setdefault(materialization.asset_key.to_user_string(), {})
        for name, entry in materialization.metadata.items():
            if name.startswith(RUN_TOTALS_PREFIX):  # the run's totals, which the partitions add up to
                continue
            value = entry.value
            totals[name] = totals.get(name, 0) + value if isinstance(value, int) else value
    for event in result.get_asset_check_evaluations():
        if not event.passed:
            line = f"{event.asset_key.to_user_string()}:{event.check_name} {event.description or ''}"
            warned = event.severity == AssetCheckSeverity.WARN
            (report.warnings if warned else report.failed_checks).append(line)


def _blocking_failures(result) -> str:
    """What the run's failed blocking checks say, or "" when none failed."""
    return "; ".join(
        event.description or f"check {event.check_name} failed"
        for event in result.get_asset_check_evaluations()
        if event.blocking and not event.passed and event.severity == AssetCheckSeverity.ERROR
    )


def _failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause
            # Dagster's message opens with the exception's dotted class name: the line says what, not which class.
            message = error.message.strip()
            return re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name)}: ", "", message)
    return "see the run's logs"
