"""Runs whose process is gone: each run names its process, and later processes fail it and free its pool slots."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import HIDDEN_TAG_PREFIX

# Hidden tags (Dagster's prefix): kept with the run for recovery, left out of the UI's tag lists, where a
# run shows what it delivered instead.
HOST_TAG = f"{HIDDEN_TAG_PREFIX}wsync/host"
PID_TAG = f"{HIDDEN_TAG_PREFIX}wsync/pid"
PROCESS_STARTED_TAG = f"{HIDDEN_TAG_PREFIX}wsync/process_started"
POLL_SECONDS = 1.0

# A run killed before Dagster marked it started is left NOT_STARTED or STARTING; either may hold a claim.
_UNFINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
# psutil reads a start time in clock ticks; the same process reads back within a tick.
_START_TIME_TOLERANCE_S = 1.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class AbandonedRun:
    """A run whose process had ended without finishing it: now marked failed, its pool slots freed."""

    run_id: str
    job_name: str
    pid: str

    def __str__(self) -> str:
        return (
            f"run {self.run_id} ({self.job_name}) was left unfinished by process {self.pid}, which is gone: "
            "marked it failed and freed its pool slots"
        )


def process_tags() -> dict[str, str]:
    """Run tags naming this process, so that a later process can tell when it is gone."""
    process = psutil.Process()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(process.pid),
        PROCESS_STARTED_TAG: f"{process.create_time():.2f}",
    }


def process_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process named by a run's tags has ended; a later process that reuses its pid does not count."""
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        started = process.create_time()
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # alive, though not ours to inspect
        return False
    return zombie or abs(started - float(tags[PROCESS_STARTED_TAG])) > _START_TIME_TOLERANCE_S


def recover_abandoned_runs(instance: DagsterInstance) -> list[AbandonedRun]:
    """Fail every unfinished run of this host whose process is gone, and free the slots of ended runs."""
    recovered = []
    host = socket.gethostname()
    for record in instance.get_run_records(RunsFilter(statuses=_UNFINISHED, tags={HOST_TAG: host})):
        run = record.dagster_run
        if not process_is_gone(run.tags) or _finished(instance, run.run_id):
            continue
        pid = run.tags[PID_TAG]
        instance.report_run_failed(
            run,
            f"The process that ran this run (pid {pid} on {host}) is gone: marked failed by wsync, "
            "and its pool slots freed.",
        )
        _free_slots(instance, run.run_id)
        recovered.append(AbandonedRun(run.run_id, run.job_name, pid))
    _free_slots_of_ended_runs(instance)
    return recovered


def pool_holders(instance: DagsterInstance, pool: str) -> list[str]:
    """The runs holding every slot of `pool`, described; empty when a slot is free."""
    if not instance.event_log_storage.supports_global_concurrency_limits:
        return []
    info = instance.event_log_storage.get_concurrency_info(pool)
    claimed = info.claimed_slots
    if not claimed or info.limit is None or len(claimed) < info.limit:
        return []
    return [_describe(instance, run_id) for run_id in dict.fromkeys(slot.run_id for slot in claimed)]


def wait_for_pool(instance: DagsterInstance, pool: str, say: Say) -> None:
    """Return once `pool` has a free slot; meanwhile fail abandoned holders and say who holds it."""
    told: list[str] = []
    while True:
        for run in recover_abandoned_runs(instance):
            say(str(run))
        holders = pool_holders(instance, pool)
        if not holders:
            return
        if holders != told:
            say(f"waiting for pool {pool}, held by {'; '.join(holders)}")
            told = holders
        time.sleep(POLL_SECONDS)


@contextmanager
def watch_pool(instance: DagsterInstance, pool: str, run_id: str, say: Say) -> Iterator[None]:
    """While run `run_id` waits for `pool`: fail abandoned holders and say who holds it."""
    stop = threading.Event()

    def watch() -> None:
        told: list[str] = []
        while not stop.wait(POLL_SECONDS):
            try:
                if not _waiting(instance, pool, run_id):
                    continue
                for run in recover_abandoned_runs(instance):
                    say(str(run))
                holders = pool_holders(instance, pool)
            except Exception:  # a poll that fails (a busy storage) is simply made again a second later
                continue
            if holders and holders != told:
                say(f"waiting for pool {pool}, held by {'; '.join(holders)}")
                told = holders

    watcher = threading.Thread(target=watch, name=f"wsync-watch-{pool}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def _waiting(instance: DagsterInstance, pool: str, run_id: str) -> bool:
    info = instance.event_log_storage.get_concurrency_info(pool)
    return any(step.run_id == run_id and step.assigned_timestamp is None for step in info.pending_steps)


def _describe(instance: DagsterInstance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} (no longer recorded)"
    if PID_TAG in run.tags:
        return f"run {run_id} ({run.job_name}, pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')})"
    return f"run {run_id} ({run.job_name}, {run.status.value.lower()})"


def _finished(instance: DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished


def _free_slots(instance: DagsterInstance, run_id: str) -> None:
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def _free_slots_of_ended_runs(instance: DagsterInstance) -> None:
    # What the daemon's free_slots_after_run_end_seconds does, for instances that run no daemon.
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    for run_id in storage.get_concurrency_run_ids():
        if _finished(instance, run_id):
            storage.free_concurrency_slots_for_run(run_id)
