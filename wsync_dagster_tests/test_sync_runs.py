"""Sync modes through Dagster on a real DuckDB warehouse and a real SQLite store: windows, lookback, full mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from dagster import DagsterInstance, materialize

from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.defs.assets import build_sync_assets
from wsync_dagster.modes.partitions import run_key
from wsync_dagster.runner import RunError, run_sync
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL, user_sync


def _materialize(spec, partition_key: str, instance: DagsterInstance | None = None):
    return materialize(
        build_sync_assets(spec),
        partition_key=partition_key,
        instance=instance or DagsterInstance.ephemeral(),
        resources=build_definitions([spec]).resources,
        raise_on_error=False,
    )


def _profile(customer_id: str, environment: str = "production") -> dict | None:
    store = open_profile_store(profile_store_url())
    try:
        return store.profile("customer_id", customer_id, environment)
    finally:
        store.close()


def _metadata(result, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset}")


def test_a_partition_materializes_profiles_into_the_store(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    result = _materialize(spec, "2024-01-01")
    assert result.success
    assert _profile("C001")["attributes"] == {"first_name": "Ada", "plan": "pro"}
    assert _profile("C001")["identities"] == {"customer_id": "C001", "email": "ada@example.com"}
    mapped, delivered = _metadata(result, "mapped_batches"), _metadata(result, "delivery")
    assert (mapped["rows_read"], mapped["rows_mapped"], mapped["rows_rejected"]) == (2, 2, 0)
    assert mapped["iterator_window"] == "[2024-01-01T00:00:00+00:00, 2024-01-02T00:00:00+00:00)"
    assert (delivered["profiles_created"], delivered["attributes_set"]) == (2, 4)
    # The preview names identities and attributes; their values stay in the store (sync.preview_values).
    assert "| customer_id, email | first_name, plan |" in delivered["preview"]
    assert "C001" not in delivered["preview"]


def test_incremental_reads_only_its_window(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    assert _materialize(spec, "2024-01-01").success
    assert _profile("C003") is None  # updated on 2024-01-02
    assert _materialize(spec, "2024-01-02").success
    assert _profile("C003")["attributes"] == {"first_name": "Cy"}


def test_lookback_rereads_rows_that_arrived_late(make_warehouse, write_sync):
    warehouse = make_warehouse(USERS_SQL)
    spec = load_sync_file(write_sync(user_sync(warehouse, sync={"lookback": "1d"})))
    assert _materialize(spec, "2024-01-01").success
    with duckdb.connect(str(warehouse)) as connection:  # a row of the 1st lands after the 1st was synced
        connection.execute(
            "INSERT INTO crm.users VALUES ('C009', 'late@example.com', 'Late', 'pro', "
            "TIMESTAMP '2024-01-01 23:00:00')"
        )
    assert _materialize(spec, "2024-01-02").success
    assert _profile("C009")["attributes"]["first_name"] == "Late"


def test_without_lookback_a_late_row_waits_for_its_own_window(make_warehouse, write_sync):
    warehouse = make_warehouse(USERS_SQL)
    spec = load_sync_file(write_sync(user_sync(warehouse, sync={"lookback": "0s"})))
    assert _materialize(spec, "2024-01-01").success
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            "INSERT INTO crm.users VALUES ('C009', 'late@example.com', 'Late', 'pro', "
            "TIMESTAMP '2024-01-01 23:00:00')"
        )
    assert _materialize(spec, "2024-01-02").success
    assert _profile("C009") is None


def test_partitions_run_out_of_order_keep_the_newest_value(make_warehouse, write_sync):
    warehouse = make_warehouse(
        USERS_SQL + "INSERT INTO crm.users VALUES "
        "('C001', 'ada@example.com', 'Ada', 'enterprise', TIMESTAMP '2024-01-02 08:00:00');"
    )
    spec = load_sync_file(write_sync(user_sync(warehouse)))
    assert _materialize(spec, "2024-01-02").success
    assert _materialize(spec, "2024-01-01").success  # a backfill of the older day runs later
    assert _profile("C001")["attributes"]["plan"] == "enterprise"


def test_a_null_in_a_later_window_removes_the_attribute(make_warehouse, write_sync):
    warehouse = make_warehouse(
        USERS_SQL + "INSERT INTO crm.users VALUES "
        "('C001', 'ada@example.com', 'Ada', NULL, TIMESTAMP '2024-01-02 08:00:00');"
    )
    spec = load_sync_file(write_sync(user_sync(warehouse)))
    assert _materialize(spec, "2024-01-01").success
    assert _materialize(spec, "2024-01-02").success
    assert "plan" not in _profile("C001")["attributes"]


def test_rejected_rows_are_kept_and_fail_the_reject_rate_check(make_warehouse, write_sync):
    warehouse = make_warehouse(
        USERS_SQL + "INSERT INTO crm.users VALUES "
        "(NULL, NULL, 'Nobody', 'pro', TIMESTAMP '2024-01-01 12:00:00');"
    )
    spec = load_sync_file(write_sync(user_sync(warehouse)))
    result = _materialize(spec, "2024-01-01")
    assert result.success  # the good rows are not stopped
    assert _profile("C001") is not None
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert not checks["reject_rate"].passed
    store = open_profile_store(profile_store_url())
    [reject] = store.rejects("crm_users")
    store.close()
    assert reject["reason"] == "no identity: customer_id, email all empty"
    assert reject["row"]["first_name"] == "Nobody"


def test_read_only_sync_counts_rows_but_writes_no_profile(make_warehouse, write_sync):
    spec = load_sync_file(
        write_sync(user_sync(make_warehouse(USERS_SQL), sync={"input_protection": "read_only"}))
    )
    result = _materialize(spec, "2024-01-01")
    assert _metadata(result, "mapped_batches")["rows_mapped"] == 2
    assert _profile("C001") is None


def test_development_environment_profiles_are_separate(make_warehouse, write_sync):
    spec = load_sync_file(
        write_sync(user_sync(make_warehouse(USERS_SQL), sync={"environment": "development"}))
    )
    assert _materialize(spec, "2024-01-01").success
    assert _profile("C001") is None
    assert _profile("C001", "development")["attributes"]["plan"] == "pro"


def test_a_mapping_error_fails_the_run_and_leaves_the_store_untouched(make_warehouse, write_sync):
    warehouse = make_warehouse(USERS_SQL)
    good = load_sync_file(write_sync(user_sync(warehouse)))
    assert _materialize(good, "2024-01-01").success
    bad = load_sync_file(
        write_sync(
            user_sync(
                warehouse, mapping=[{"type": "column", "column": "email", "field": "user_identities.email"}]
            )
        )
    )
    with pytest.raises(ValueError, match=r"column 'first_name' is selected by the data model but not mapped"):
        run_sync(
            bad, open_profile_store(profile_store_url()), DagsterInstance.ephemeral(), partition="2024-01-02"
        )
    assert _profile("C003") is None
    assert _profile("C001")["attributes"] == {"first_name": "Ada", "plan": "pro"}


FULL_SQL = """
CREATE SCHEMA marts;
CREATE TABLE marts.segments (customer_id VARCHAR, segment VARCHAR);
INSERT INTO marts.segments VALUES ('C001', 'vip'), ('C002', 'new');
"""


def _full_sync(warehouse) -> dict:
    return {
        "name": "segments",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, segment FROM marts.segments"},
        "sync": {"mode": "full"},
    }


def test_full_mode_rerun_of_an_unchanged_table_writes_nothing(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(_full_sync(make_warehouse(FULL_SQL))))
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    first = run_sync(spec, store, instance, now=datetime(2024, 5, 1, tzinfo=UTC))
    second = run_sync(spec, store, instance, now=datetime(2024, 5, 2, tzinfo=UTC))
    store.close()
    assert first.metadata["segments/delivery"]["attributes_set"] == 2
    assert second.metadata["segments/delivery"]["rows_unchanged"] == 2
    assert second.metadata["segments/delivery"]["attributes_set"] == 0
    assert second.metadata["segments/delivery"]["profiles_updated"] == 0


def test_full_mode_lists_the_newest_100_delivered_run_keys_and_every_undelivered_one(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(_full_sync(make_warehouse(FULL_SQL))))
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    # 112 earlier hourly runs; the first and the sixth never delivered (failed, or still to run).
    earlier = [run_key(datetime(2024, 4, 1, tzinfo=UTC) + timedelta(hours=n)) for n in range(112)]
    undelivered = [earlier[0], earlier[5]]
    delivered = [key for key in earlier if key not in undelivered]
    with store.delivery(
        sync="segments", environment="production", partitions=delivered, input_protection="create_and_update"
    ):
        pass
    instance.add_dynamic_partitions("segments_runs", earlier)

    report = run_sync(spec, store, instance, now=datetime(2024, 5, 1, tzinfo=UTC))
    listed = instance.get_dynamic_partitions("segments_runs")
    assert sorted(listed) == sorted([*undelivered, *earlier[-99:], report.partitions])
    # The store's record of every delivery stays: only Dagster's partition list is pruned.
    assert store.delivered_partitions("segments", "production") == sorted([*delivered, report.partitions])
    again = run_sync(spec, store, instance, now=datetime(2024, 5, 2, tzinfo=UTC))
    store.close()
    assert sorted(instance.get_dynamic_partitions("segments_runs")) == sorted(
        [*undelivered, *earlier[-98:], report.partitions, again.partitions]
    )


def test_full_mode_applies_only_changed_rows(make_warehouse, write_sync):
    warehouse = make_warehouse(FULL_SQL)
    spec = load_sync_file(write_sync(_full_sync(warehouse)))
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    run_sync(spec, store, instance, now=datetime(2024, 5, 1, tzinfo=UTC))
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("UPDATE marts.segments SET segment = 'churned' WHERE customer_id = 'C002'")
    report = run_sync(spec, store, instance, now=datetime(2024, 5, 2, tzinfo=UTC))
    store.close()
    delivered = report.metadata["segments/delivery"]
    assert (delivered["rows_unchanged"], delivered["attributes_set"]) == (1, 1)
    assert _profile("C002")["attributes"]["segment"] == "churned"
    assert report.partitions == "20240502T000000"


def test_run_without_partition_catches_up_from_historical_start(make_warehouse, write_sync):
    spec = load_sync_file(
        write_sync(
            user_sync(
                make_warehouse(USERS_SQL),
                sync={"start": "2024-01-02T00:00:00Z", "historical_start": "2024-01-02"},
            )
        )
    )
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    report = run_sync(spec, store, instance, now=datetime(2024, 1, 4, 6, tzinfo=UTC))
    assert report.partitions == "2024-01-02..2024-01-03"
    assert _profile("C001") is None  # before historical_start
    assert _profile("C003") is not None
    # Run again: nothing is due until the next window is complete, then that window alone.
    assert run_sync(spec, store, instance, now=datetime(2024, 1, 4, 6, tzinfo=UTC)).partitions == ""
    assert run_sync(spec, store, instance, now=datetime(2024, 1, 5, 6, tzinfo=UTC)).partitions == "2024-01-04"
    store.close()


def test_run_of_a_partition_that_does_not_exist_names_the_key_format(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    store = open_profile_store(profile_store_url())
    with pytest.raises(
        RunError,
        match=r"--partition 2023-12-31 is not a partition of this sync \(keys look like 2024-01-01\)",
    ):
        run_sync(spec, store, DagsterInstance.ephemeral(), partition="2023-12-31")
    store.close()


def test_job_runs_are_recorded_in_the_dagster_instance(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    instance = DagsterInstance.ephemeral()
    store = open_profile_store(profile_store_url())
    report = run_sync(spec, store, instance, partition="2024-01-01")
    store.close()
    run = instance.get_run_by_id(report.run_id)
    assert run.job_name == sync_job_name(spec) and run.is_success
    assert build_definitions([spec]).resolve_job_def(sync_job_name(spec)) is not None


ITERATOR_TYPES_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users AS SELECT * FROM (VALUES
    ('C001', DATE '2024-01-01', 1704103200000, 1704103200),
    ('C002', DATE '2024-01-02', 1704189600000, 1704189600)
) AS t(customer_id, updated_on, updated_ms, updated_s);
"""


@pytest.mark.parametrize(
    ("iterator", "iterator_type"),
    [("updated_on", "date"), ("updated_ms", "timestamp_unixtime_ms"), ("updated_s", "timestamp_unixtime_s")],
)
def test_every_time_iterator_type_reads_its_window(make_warehouse, write_sync, iterator, iterator_type):
    spec = load_sync_file(
        write_sync(
            user_sync(
                make_warehouse(ITERATOR_TYPES_SQL),
                data_model={"sql": f"SELECT customer_id, {iterator} FROM crm.users"},
                # Without lookback, so the window's own bounds are what is read.
                sync={"iterator": iterator, "iterator_type": iterator_type, "lookback": "0s"},
            )
        )
    )
    assert _materialize(spec, "2024-01-02").success
    assert _profile("C001") is None
    assert _profile("C002") is not None


def test_a_full_mode_partition_key_that_is_not_a_run_time_fails_clearly(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(_full_sync(make_warehouse(FULL_SQL))))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("segments_runs", ["tuesday"])
    result = _materialize(spec, "tuesday", instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "partition 'tuesday' is not a full-mode run key" in str(failure.step_failure_data.error)
    assert _profile("C001") is None
