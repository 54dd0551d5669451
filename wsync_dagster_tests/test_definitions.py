"""SPEC "Dagster shape": source assets, partitions per frequency anchored at start, schedules and sensors."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
    build_sensor_context,
)

from wsync_dagster.defs import build_definitions
from wsync_dagster.modes import sync_mode
from wsync_dagster.spec import SyncSpec
from wsync_dagster_tests.conftest import user_sync


def _spec(tmp_path, **overrides) -> SyncSpec:
    return SyncSpec.model_validate(
        {**user_sync(tmp_path / "w.duckdb", **overrides), "source_file": tmp_path / "s.yaml"}
    )


def _hourly(tmp_path, **sync) -> SyncSpec:
    return _spec(
        tmp_path,
        sync={
            "frequency": "hourly",
            "start": "2024-11-15T19:00:00Z",
            "historical_start": "2024-11-15T00:00:00Z",
            **sync,
        },
    )


def test_every_table_the_model_reads_is_a_source_asset(tmp_path):
    spec = _spec(
        tmp_path,
        data_model={
            "sql": "WITH u AS (SELECT * FROM crm.users) SELECT u.customer_id, u.updated_at "
            "FROM u JOIN crm.plans p ON p.id = u.plan"
        },
    )
    defs = build_definitions([spec])
    keys = {node.key for node in defs.resolve_asset_graph().asset_nodes}
    assert AssetKey(["warehouse", "w", "crm", "users"]) in keys
    assert AssetKey(["warehouse", "w", "crm", "plans"]) in keys
    mapped = defs.resolve_asset_graph().get(AssetKey(["crm_users", "mapped_batches"]))
    assert AssetKey(["warehouse", "w", "crm", "users"]) in mapped.parent_keys
    delivery = defs.resolve_asset_graph().get(AssetKey(["crm_users", "delivery"]))
    assert delivery.parent_keys == {AssetKey(["crm_users", "mapped_batches"])}


def test_two_syncs_reading_one_table_share_its_source_asset(tmp_path):
    first = _spec(tmp_path)
    second = _spec(tmp_path, name="crm_users_dev", sync={"environment": "development"})
    keys = [node.key for node in build_definitions([first, second]).resolve_asset_graph().asset_nodes]
    assert keys.count(AssetKey(["warehouse", "w", "crm", "users"])) == 1


def test_hourly_partitions_start_at_historical_start_and_use_dagster_keys(tmp_path):
    partitions = sync_mode(_hourly(tmp_path)).partitions()
    keys = partitions.get_partition_keys(current_time=datetime(2024, 11, 15, 21, 30, tzinfo=UTC))
    assert keys[0] == "2024-11-15-00:00" and keys[-1] == "2024-11-15-20:00"


def test_daily_partitions_are_anchored_at_the_start_time(tmp_path):
    spec = _spec(tmp_path, sync={"start": "2024-11-15T19:00:00Z", "historical_start": "2024-11-10"})
    partitions = sync_mode(spec).partitions()
    first = partitions.get_first_partition_key()
    assert first == "2024-11-09"  # the window that holds historical_start
    window = partitions.time_window_for_partition_key(first)
    assert (window.start, window.end) == (
        datetime(2024, 11, 9, 19, tzinfo=UTC),
        datetime(2024, 11, 10, 19, tzinfo=UTC),
    )


def test_weekly_and_monthly_partitions_are_keyed_by_their_first_day(tmp_path):
    weekly = sync_mode(_spec(tmp_path, sync={"frequency": "weekly", "start": "2024-11-15T00:00:00Z"})).partitions()
    monthly = sync_mode(_spec(tmp_path, sync={"frequency": "monthly", "start": "2024-11-15T00:00:00Z"})).partitions()
    now = datetime(2024, 3, 1, tzinfo=UTC)
    assert weekly.get_partition_keys(current_time=now)[:2] == [
        "2023-12-29",
        "2024-01-05",
    ]  # Fridays, as the start
    assert monthly.get_partition_keys(current_time=now)[:2] == ["2023-12-15", "2024-01-15"]


def test_interval_schedule_runs_the_last_complete_window_at_each_tick(tmp_path):
    defs = build_definitions([_hourly(tmp_path)])
    schedule = defs.resolve_schedule_def("crm_users_schedule")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    context = build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 15, 20, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-11-15-19:00"


def test_daily_schedule_ticks_at_the_start_time_of_day(tmp_path):
    spec = _spec(tmp_path, sync={"start": "2024-11-15T19:30:00Z", "historical_start": "2024-11-01"})
    assert build_definitions([spec]).resolve_schedule_def("crm_users_schedule").cron_schedule == "30 19 * * *"


def test_paused_sync_schedule_starts_stopped(tmp_path):
    schedule = build_definitions([_hourly(tmp_path, paused=True)]).resolve_schedule_def("crm_users_schedule")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED


def test_on_demand_sync_has_no_schedule_or_sensor(tmp_path):
    spec = _spec(tmp_path, sync={"schedule": "on_demand"})
    defs = build_definitions([spec])
    assert not defs.schedules and not defs.sensors
    assert defs.resolve_job_def("crm_users_job") is not None


def _full(tmp_path, **sync) -> SyncSpec:
    return _spec(
        tmp_path,
        sync={"mode": "full", "iterator": None, "iterator_type": None, "historical_start": None, **sync},
    )


def test_full_mode_interval_sensor_adds_a_run_key_partition_at_each_tick(tmp_path):
    spec = _full(tmp_path, frequency="hourly", start="2024-11-15T19:00:00Z")
    defs = build_definitions([spec])
    sensor = defs.resolve_sensor_def("crm_users_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    instance = DagsterInstance.ephemeral()
    # Called directly, the sensor returns its SensorResult as is (evaluate_tick would resolve dynamic keys).
    result = sensor(build_sensor_context(instance=instance))
    [request] = result.run_requests
    [added] = result.dynamic_partitions_requests
    assert request.partition_key in added.partition_keys
    assert request.partition_key.endswith("0000")  # on the hour, as anchored at start
    again = sensor(build_sensor_context(instance=instance, cursor=result.cursor))
    assert "already requested" in again.skip_message


def test_once_sensor_waits_for_start_and_runs_a_single_time(tmp_path):
    future = _full(tmp_path, schedule="once", start="2999-01-01T00:00:00Z")
    sensor = build_definitions([future]).resolve_sensor_def("crm_users_sensor")
    waiting = sensor.evaluate_tick(build_sensor_context(instance=DagsterInstance.ephemeral()))
    assert waiting.run_requests == [] and "2999-01-01" in waiting.skip_message

    past = _full(tmp_path, schedule="once", start="2024-01-01T00:00:00Z")
    sensor = build_definitions([past]).resolve_sensor_def("crm_users_sensor")
    first = sensor(build_sensor_context(instance=DagsterInstance.ephemeral()))
    assert len(first.run_requests) == 1
    later = sensor(build_sensor_context(instance=DagsterInstance.ephemeral(), cursor=first.cursor))
    assert "ran once" in later.skip_message


def test_code_location_loads_every_sync_file(write_sync, tmp_path, monkeypatch):
    import importlib

    import wsync_dagster.definitions as location

    write_sync(user_sync(tmp_path / "w.duckdb"))
    write_sync(user_sync(tmp_path / "w.duckdb", name="crm_users_dev", sync={"environment": "development"}))
    defs = importlib.reload(location).defs
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"crm_users_job", "crm_users_dev_job"}


def test_once_sensor_on_time_partitions_requests_one_run_over_every_complete_window(tmp_path):
    spec = _spec(
        tmp_path, sync={"schedule": "once", "start": "2024-01-03T00:00:00Z", "historical_start": "2024-01-01"}
    )
    sensor = build_definitions([spec]).resolve_sensor_def("crm_users_sensor")
    [request] = sensor(build_sensor_context(instance=DagsterInstance.ephemeral())).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2024-01-01"
    assert request.tags["dagster/asset_partition_range_end"] < datetime.now(UTC).strftime("%Y-%m-%d")


def test_interval_schedule_never_runs_before_start_even_with_history_before_it(tmp_path):
    spec = _hourly(tmp_path, start="2030-01-01T06:00:00Z", historical_start="2024-01-01T00:00:00Z")
    defs = build_definitions([spec])
    schedule = defs.resolve_schedule_def("crm_users_schedule")

    def tick(moment: datetime):
        context = build_schedule_context(
            scheduled_execution_time=moment, repository_def=defs.get_repository_def()
        )
        return schedule.evaluate_tick(context)

    for before in (datetime(2026, 11, 23, 12, 0, tzinfo=UTC), datetime(2030, 1, 1, 5, 0, tzinfo=UTC)):
        result = tick(before)
        assert not result.run_requests
        assert "2030-01-01T06:00:00+00:00" in result.skip_message

    [request] = tick(datetime(2030, 1, 1, 6, 0, tzinfo=UTC)).run_requests
    assert request.partition_key == "2030-01-01-05:00"


def test_the_sync_modes_are_built_without_the_dagster_wiring_that_uses_them():
    """defs builds on modes, never the other way round: importing the modes loads no defs module."""
    script = "import sys, wsync_dagster.modes; print(sorted(m for m in sys.modules if m.startswith('wsync_dagster.defs')))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
