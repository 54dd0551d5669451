"""`wsync run SYNC --now`: the hour under way is delivered too, yet stays due for its scheduled run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from wsync_dagster.cli import main
from wsync_dagster.defs.assets import delivery_key
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import ProfileStore
from wsync_dagster_tests.conftest import user_sync

TABLE_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
"""


def _add_row(warehouse: Path, customer_id: str, plan: str, at: datetime) -> None:
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            "INSERT INTO crm.users VALUES (?, ?, 'Ada', ?, ?)",
            [customer_id, f"{customer_id.lower()}@example.com", plan, at.replace(tzinfo=None)],
        )


@pytest.fixture
def hourly(make_warehouse, write_sync, cli_store, tmp_path, monkeypatch):
    """An hourly sync whose history starts today, a Dagster home the commands share, and the hour under way."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("")
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    warehouse = make_warehouse(TABLE_SQL)
    # Two hours of history at most: the catch-up stays small.
    spec_path = write_sync(
        user_sync(
            warehouse,
            sync={
                "frequency": "hourly",
                "start": (hour - timedelta(hours=2)).isoformat(),
                "historical_start": (hour - timedelta(hours=2)).isoformat(),
            },
        )
    )
    return warehouse, load_sync_file(spec_path), hour, now


def _plan(store: ProfileStore, customer_id: str) -> str | None:
    profile = store.profile("customer_id", customer_id, "production")
    return profile["attributes"].get("plan") if profile else None


def _materialized(spec) -> set[str]:
    instance = DagsterInstance.get()
    try:
        return set(instance.get_materialized_partitions(delivery_key(spec)))
    finally:
        instance.dispose()


def test_now_delivers_the_hour_under_way_without_materializing_it(hourly, cli_store, capsys):
    warehouse, spec, hour, now = hourly
    _add_row(warehouse, "C001", "free", hour - timedelta(minutes=30))
    _add_row(warehouse, "C002", "pro", min(now - timedelta(seconds=1), hour + (now - hour) / 2))
    assert main(["run", "crm_users", "--now"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    key = hour.strftime("%Y-%m-%d-%H:%M")
    assert f"{key} (up to " in out
    # The totals once, at the end; each progress line of the window under way once.
    assert (out + captured.err).count("profiles_created=") == 1, captured
    assert captured.err.count("reading the window under way") == 1, captured.err
    under_way = captured.err[captured.err.index("reading the window under way") :]
    assert under_way.count(" rejected") == 1, captured.err
    assert under_way.count("rows staged, committed together at the end") == 1, captured.err
    assert (_plan(cli_store, "C001"), _plan(cli_store, "C002")) == ("free", "pro")
    # The hour under way is neither listed as delivered nor materialized: its scheduled run still reads it.
    assert key not in cli_store.delivered_partitions("crm_users", "production")
    assert key not in _materialized(spec)
    assert (hour - timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M") in _materialized(spec)


def test_a_later_row_of_the_same_hour_arrives_with_the_next_now(hourly, cli_store, capsys):
    warehouse, _, hour, _ = hourly
    _add_row(warehouse, "C002", "pro", hour)
    assert main(["run", "crm_users", "--now"]) == 0
    _add_row(warehouse, "C002", "enterprise", min(datetime.now(UTC), hour + timedelta(minutes=59)))
    assert main(["run", "crm_users", "--now"]) == 0
    assert _plan(cli_store, "C002") == "enterprise"
    # A plain run has nothing due until the hour completes: --now left it undelivered.
    assert main(["run", "crm_users"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_scheduled_run_reads_the_hour_again_when_it_completes(hourly, cli_store):
    warehouse, spec, hour, _ = hourly
    _add_row(warehouse, "C002", "pro", hour)
    assert main(["run", "crm_users", "--now"]) == 0
    # The hour completes: the run that is due then (as the schedule's) delivers and materializes it.
    from wsync_dagster.runner import run_sync

    instance = DagsterInstance.get()
    try:
        report = run_sync(spec, cli_store, instance, now=hour + timedelta(hours=1, minutes=1))
        # (Dagster lists a partition as materialized only once its window is over by the real clock.)
        assert instance.get_run_by_id(report.run_id).is_success
    finally:
        instance.dispose()
    key = hour.strftime("%Y-%m-%d-%H:%M")
    assert report.partitions == key
    assert key in cli_store.delivered_partitions("crm_users", "production")
    assert _plan(cli_store, "C002") == "pro"


def test_partition_of_the_hour_under_way_says_it_is_not_over(hourly, cli_store, capsys):
    _, _, hour, _ = hourly
    key = hour.strftime("%Y-%m-%d-%H:%M")
    assert main(["run", "crm_users", "--partition", key]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"wsync run: crm_users: --partition {key} is not over: it completes at "
        f"{(hour + timedelta(hours=1)).isoformat()}; to deliver what the warehouse holds up to now, "
        "run `wsync run crm_users --now`"
    ]


def test_now_with_partition_is_a_usage_error(hourly, capsys):
    assert main(["run", "crm_users", "--now", "--partition", "2024-01-01-00:00"]) == 2
    assert "leave out --partition" in capsys.readouterr().err


def test_now_on_a_full_sync_is_a_plain_run(make_warehouse, write_sync, cli_store, capsys):
    warehouse = make_warehouse(TABLE_SQL)
    _add_row(warehouse, "C001", "free", datetime.now(UTC) - timedelta(minutes=1))
    write_sync(user_sync(warehouse, sync={"mode": "full", "iterator": None, "iterator_type": None}))
    assert main(["run", "crm_users", "--now"]) == 0
    assert "(up to " not in capsys.readouterr().out
    assert _plan(cli_store, "C001") == "free"
