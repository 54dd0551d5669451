"""Integer iterators: dynamic ranges of values, a sensor that adds and requests the next, NULLs rejected."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, build_sensor_context

from wsync_dagster.cli import main
from wsync_dagster.defs import build_definitions
from wsync_dagster.modes.ranges import range_key
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.store import open_profile_store

ORDERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, seq BIGINT);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'free', 1),
    ('C002', 'bo@example.com', 'free', 2),
    ('C001', 'ada@example.com', 'pro', 3),
    ('C003', 'cy@example.com', 'team', NULL);
"""


def integer_sync(warehouse: Path, **settings: object) -> dict:
    """An on-demand user sync ordered by the integer column seq."""
    return {
        "name": "crm_users",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, plan, seq FROM crm.users"},
        "mapping": [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "column", "column": "email", "field": "user_identities.email"},
            {"type": "column", "column": "plan", "field": "user_attributes.plan"},
            {"type": "ignore", "column": "seq"},
        ],
        "sync": {"mode": "incremental", "iterator": "seq", "iterator_type": "integer", **settings},
        "checks": {"max_reject_rate": 0.5},  # the NULL seq row is one of four
    }


def add_rows(warehouse: Path, values: str) -> None:
    """New rows arrive in the warehouse."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute(f"INSERT INTO crm.users VALUES {values}")


def plan_of(customer_id: str) -> str | None:
    """The plan the profile store shows for a customer."""
    with open_profile_store(profile_store_url()) as store:
        profile = store.profile("customer_id", customer_id)
    return profile and profile["attributes"].get("plan")


def test_each_run_reads_only_the_values_above_the_last_range(
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First run: values 1..3 as one range; nothing new: up to date; new values: only 4..5, newest wins."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    warehouse = make_warehouse(ORDERS_SQL)
    write_sync(integer_sync(warehouse, lookback=0))  # no re-read of the previous range (test_late_rows.py)

    assert main(["run", "crm_users"]) == 0
    first = capsys.readouterr().out
    assert f"partitions {range_key(1, 3)}" in first
    assert "rows_read=4" in first and "rows_rejected=1" in first  # the NULL seq row, read and rejected
    assert plan_of("C001") == "pro" and plan_of("C003") is None

    assert main(["run", "crm_users"]) == 0
    assert "up to date" in capsys.readouterr().out

    add_rows(warehouse, "('C002', 'bo@example.com', 'team', 5), ('C001', 'ada@example.com', 'enterprise', 4)")
    assert main(["run", "crm_users"]) == 0
    second = capsys.readouterr().out
    assert f"partitions {range_key(4, 5)}" in second and "rows_read=3" in second
    assert plan_of("C001") == "enterprise" and plan_of("C002") == "team"

    instance = DagsterInstance.get()
    try:
        assert instance.get_dynamic_partitions("crm_users_ranges") == [range_key(1, 3), range_key(4, 5)]
    finally:
        instance.dispose()


def test_a_row_without_an_iterator_value_is_rejected_with_its_reason(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Never silently skipped: `wsync rejects` names the empty iterator."""
    write_sync(integer_sync(make_warehouse(ORDERS_SQL)))
    assert main(["run", "crm_users"]) == 0
    capsys.readouterr()
    assert main(["rejects", "crm_users", "--json"]) == 0
    out = capsys.readouterr().out
    assert "iterator seq is empty: a row needs one to be read in order" in out and "C003" in out


def test_the_sensor_adds_the_next_range_and_requests_it_in_one_result(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> None:
    """The range is added and requested with a run key naming it; no new values, a skip. Called directly,
    the sensor returns its SensorResult as is (evaluate_tick checks a requested key before it is added);
    the idle tick goes through evaluate_tick. The sensor reads through its connection's resource, which the
    daemon passes from the definitions (as `resources=` does here)."""
    warehouse = make_warehouse(ORDERS_SQL)
    spec = load_sync_file(
        write_sync(
            integer_sync(warehouse, schedule="interval", frequency="hourly", start="2024-01-01T00:00:00Z")
        )
    )
    defs = build_definitions([spec])
    [sensor] = defs.sensors or []
    repository = defs.get_repository_def()
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, repository_def=repository, resources=defs.resources))
        assert [request.run_key for request in first.run_requests] == [range_key(1, 3)]
        assert [request.partition_key for request in first.run_requests] == [range_key(1, 3)]
        [added] = first.dynamic_partitions_requests
        assert list(added.partition_keys) == [range_key(1, 3)]
        instance.add_dynamic_partitions("crm_users_ranges", list(added.partition_keys))

        idle = sensor.evaluate_tick(
            build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repository, resources=defs.resources)
        )
        assert not idle.run_requests and "no seq value above the last range" in (idle.skip_message or "")

        add_rows(warehouse, "('C004', 'di@example.com', 'free', 7)")
        later = sensor(
            build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repository, resources=defs.resources)
        )
        assert [request.run_key for request in later.run_requests] == [range_key(4, 7)]


def test_a_partition_that_is_not_a_range_is_refused(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the sync, the key and the format."""
    write_sync(integer_sync(make_warehouse(ORDERS_SQL)))
    assert main(["run", "crm_users", "--partition", "5_1"]) == 1
    error = capsys.readouterr().err
    assert "crm_users: --partition 5_1 is not a range of seq values; keys are FIRST_LAST" in error


@pytest.mark.parametrize(
    ("settings", "sql", "message"),
    [
        ({"lookback": "1h"}, None, "sync.lookback: an integer iterator's lookback is a count of ids"),
        (
            {},
            "SELECT customer_id, email, plan, CAST(seq AS VARCHAR) AS seq FROM crm.users",
            "needs an integer column",
        ),
    ],
)
def test_an_integer_iterator_that_does_not_fit_is_a_clear_error(
    settings: dict,
    sql: str | None,
    message: str,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A lookback, or a column that is not an integer: the file and the field are named."""
    sync = integer_sync(make_warehouse(ORDERS_SQL), **settings)
    if sql:
        sync["data_model"]["sql"] = sql
    path = write_sync(sync)
    if settings:
        with pytest.raises(SyncSpecError, match=message):
            load_sync_file(path)
        return
    assert main(["validate"]) == 1
    captured = capsys.readouterr()
    assert message in captured.out + captured.err
