"""Lookback: each window re-reads `lookback` before it, so late rows arrive, and nothing is applied twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from wsync_dagster.cli import main
from wsync_dagster.settings import profile_store_url
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import user_sync

WAREHOUSE_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'Ada', 'free', TIMESTAMP '2024-01-01 10:00:00'),
    ('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-02 09:00:00');
CREATE SCHEMA web;
CREATE TABLE web.events (id VARCHAR, customer_id VARCHAR, name VARCHAR, seen_at TIMESTAMP);
INSERT INTO web.events VALUES
    ('e1', 'C001', 'login', TIMESTAMP '2024-01-01 10:05:00'),
    ('e2', 'C001', 'purchase', TIMESTAMP '2024-01-02 09:05:00');
"""
LOOKBACK = {"lookback": "1d"}


def event_sync(warehouse: Path) -> dict:
    """A daily events sync by seen_at with a one-day lookback."""
    return {
        "name": "web_events",
        "data_type": "event",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT id, customer_id, name, seen_at FROM web.events"},
        "mapping": [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "column", "column": "id", "field": "events.data.source_message_id"},
            {"type": "column", "column": "name", "field": "events.data.event_name"},
            {"type": "column", "column": "seen_at", "field": "events.data.timestamp_unixtime_ms"},
        ],
        "sync": {
            "mode": "incremental",
            "iterator": "seen_at",
            "iterator_type": "timestamp",
            "historical_start": "2024-01-01",
            **LOOKBACK,
        },
    }


def late(warehouse: Path, sql: str) -> None:
    """A row arrives in the warehouse after its window was delivered."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute(sql)


def run(sync: str, partition: str, capsys: pytest.CaptureFixture[str]) -> str:
    """`wsync run SYNC --partition KEY`; its output."""
    assert main(["run", sync, "--partition", partition]) == 0
    return capsys.readouterr().out


def ada() -> dict:
    """C001's profile."""
    with open_profile_store(profile_store_url()) as store:
        profile = store.profile("customer_id", "C001", events_limit=100)
    assert profile is not None
    return profile


def test_overlapping_windows_never_regress_an_attribute(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A late row older than what the profile holds is re-read by the next windows and changes nothing."""
    warehouse = make_warehouse(WAREHOUSE_SQL)
    write_sync(user_sync(warehouse, sync=LOOKBACK))
    run("crm_users", "2024-01-01", capsys)
    assert ada()["attributes"]["plan"] == "free"
    run("crm_users", "2024-01-02", capsys)  # re-reads 2024-01-01: free (older) and pro
    assert ada()["attributes"]["plan"] == "pro"

    late(
        warehouse,
        "INSERT INTO crm.users VALUES ('C001', 'ada@example.com', 'Ada', 'late', TIMESTAMP '2024-01-01 23:00:00')",
    )
    again = run("crm_users", "2024-01-02", capsys)  # the late row is older than pro: it loses
    assert "rows_read=3" in again
    assert ada()["attributes"]["plan"] == "pro"


def test_overlapping_windows_write_each_event_once_and_pick_up_late_events(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-read events are duplicates, not written twice; a late event of a delivered day arrives with the next."""
    warehouse = make_warehouse(WAREHOUSE_SQL)
    write_sync(user_sync(warehouse))
    write_sync(event_sync(warehouse))
    run("crm_users", "2024-01-01..2024-01-02", capsys)

    first = run("web_events", "2024-01-01", capsys)
    assert "events_written=1" in first
    late(
        warehouse,
        "INSERT INTO web.events VALUES ('e0', 'C001', 'page_view', TIMESTAMP '2024-01-01 22:00:00')",
    )
    second = run("web_events", "2024-01-02", capsys)  # re-reads 2024-01-01: e1 again, e0 late, e2 new
    assert "events_written=2" in second and "events_duplicate=1" in second
    third = run("web_events", "2024-01-02", capsys)  # the same windows again: nothing new
    assert "events_written=0" in third and "events_duplicate=3" in third

    events = ada()["events"]
    assert sorted(event["data"]["event_name"] for event in events) == ["login", "page_view", "purchase"]
