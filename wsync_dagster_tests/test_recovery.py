"""Runs whose process is gone never block a delivery; a waiting run says why; interrupts end runs in one line."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus, DefaultSensorStatus, build_sensor_context

from wsync_dagster.defs.assets import PROFILE_STORE_POOL
from wsync_dagster.defs.recovery import RECOVERY_SENSOR, build_recovery_sensor
from wsync_dagster.recovery import PID_TAG, PROCESS_STARTED_TAG, process_is_gone, process_tags
from wsync_dagster_tests.conftest import USERS_SQL, user_sync
from wsync_dagster_tests.kill_trials import REPO, RUN_TIMEOUT_S, WatchedRun
from wsync_dagster_tests.slot_holder import JOB, slot_holder
from wsync_dagster_tests.test_dagster_dev import (
    LOCATION,
    dagster_dev,
    launch_partition,
    run_errors,
    wait_for_run,
    wait_until_loaded,
)

USERS = 150_000
PARTITION = "2024-01-01"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A Dagster home with the repository's dagster.yaml (the pool limit of one profile-store writer)."""
    path = tmp_path / "dagster_home"
    path.mkdir()
    shutil.copy(REPO / "dagster.yaml", path / "dagster.yaml")
    return path


@pytest.fixture
def store(make_warehouse, write_sync, tmp_path: Path) -> Path:
    """A user sync of USERS rows, all in partition 2024-01-01; returns its profile store's path."""
    warehouse = make_warehouse(
        f"""CREATE SCHEMA crm;
        CREATE TABLE crm.users AS SELECT 'C' || i AS customer_id, 'u' || i || '@example.com' AS email,
            'name' || i AS first_name, 'pro' AS plan, TIMESTAMP '2024-01-01' + INTERVAL (i % 86400) SECOND AS updated_at
        FROM range({USERS}) AS t(i)"""
    )
    write_sync(user_sync(warehouse))
    return tmp_path / "state" / "profiles.sqlite"


def _run(home: Path, store: Path) -> WatchedRun:
    return WatchedRun("crm_users", {**os.environ, "DAGSTER_HOME": str(home)}, store, "--partition", PARTITION)


def _profiles(store: Path) -> int:
    with closing(sqlite3.connect(store)) as conn:
        return conn.execute("SELECT count(*) FROM profiles").fetchone()[0]


def _last_line(run: WatchedRun) -> str:
    return run.lines[-1] if run.lines else ""


def test_a_reused_pid_is_not_taken_for_the_process_that_ran_the_run() -> None:
    mine = process_tags()
    other = subprocess.Popen([sys.executable, "-c", "pass"])
    other.wait()

    assert not process_is_gone(mine)
    assert process_is_gone({**mine, PROCESS_STARTED_TAG: str(psutil.Process().create_time() - 3600)})
    assert process_is_gone({**mine, PID_TAG: str(other.pid)})


def test_a_waiting_run_names_the_run_holding_the_pool_and_goes_on_once_that_process_is_killed(
    home: Path, store: Path
) -> None:
    with slot_holder(home) as holder:
        run = _run(home, store)
        assert run.wait_for_text("waiting for pool"), run.output
        holder.kill()
        code = run.finish(RUN_TIMEOUT_S)

    assert code == 0, run.output
    waiting = next(line for line in run.lines if "waiting for pool" in line)
    assert (
        f"waiting for pool {PROFILE_STORE_POOL}, held by run {holder.run_id} ({JOB}, pid {holder.process.pid}"
        in waiting
    )
    assert f"run {holder.run_id} ({JOB}) was left unfinished by process {holder.process.pid}" in run.output
    assert _profiles(store) == USERS


def test_sigterm_while_waiting_for_the_pool_ends_the_run_with_one_line_and_exit_130(
    home: Path, store: Path
) -> None:
    with slot_holder(home):
        run = _run(home, store)
        assert run.wait_for_text("waiting for pool"), run.output
        run.process.send_signal(signal.SIGTERM)
        code = run.finish(RUN_TIMEOUT_S)

    assert code == 130, run.output
    assert (
        _last_line(run) == f"wsync run: interrupted while waiting for pool {PROFILE_STORE_POOL}; nothing ran"
    )
    assert "Traceback" not in run.output
    assert _profiles(store) == 0


def test_ctrl_c_during_a_delivery_leaves_the_store_unchanged_frees_the_slot_and_says_so_in_one_line(
    home: Path, store: Path
) -> None:
    run = _run(home, store)
    # A delivery stages its rows in batches of 65,536, in one transaction: after the first, more follow.
    assert run.wait_for_text(" rows staged, committed together at the end"), run.output
    run.process.send_signal(signal.SIGINT)
    code = run.finish(RUN_TIMEOUT_S)

    assert code == 130, run.output
    assert _last_line(run).startswith(
        f"wsync run: crm_users: interrupted before the delivery of {PARTITION} committed: nothing of it is in "
        "the profile store; run "
    )
    assert [line for line in run.lines if not line.startswith("  ")] == [_last_line(run)], run.output
    assert _profiles(store) == 0
    with DagsterInstance.from_config(str(home)) as instance:
        [record] = instance.get_run_records()
        assert record.dagster_run.status == DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(PROFILE_STORE_POOL).claimed_slots == []


def test_recovery_sensor_fails_a_run_whose_process_was_killed_and_frees_its_slot(home: Path) -> None:
    with slot_holder(home) as holder:
        holder.kill()
    sensor = build_recovery_sensor()

    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(holder.run_id).status == DagsterRunStatus.STARTED
        tick = sensor.evaluate_tick(build_sensor_context(instance=instance))
        again = sensor.evaluate_tick(build_sensor_context(instance=instance))
        assert instance.get_run_by_id(holder.run_id).status == DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(PROFILE_STORE_POOL).claimed_slots == []
    assert f"run {holder.run_id} ({JOB}) was left unfinished" in tick.skip_message
    assert again.skip_message == "every unfinished run has its process"


def test_the_code_location_runs_the_recovery_sensor_by_default(wsync_env: Path) -> None:
    import wsync_dagster.definitions as location

    sensor = importlib.reload(location).defs.resolve_sensor_def(RECOVERY_SENSOR)
    assert sensor.default_status == DefaultSensorStatus.RUNNING


def test_a_run_launched_in_the_ui_goes_ahead_after_a_killed_run_held_the_profile_store(
    tmp_path: Path, make_warehouse, write_sync
) -> None:
    write_sync(user_sync(make_warehouse(USERS_SQL)))

    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, LOCATION)  # the instance's storage exists: two creators collide
        with slot_holder(tmp_path / "dagster_home") as holder:
            holder.kill()
        run_id = launch_partition(client, "crm_users_job", PARTITION)
        status = wait_for_run(client, run_id)
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{run_errors(client, run_id)}"
