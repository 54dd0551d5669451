"""The demo warehouse and its sync files, built for real in DuckDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from wsync_dagster import demo
from wsync_dagster.demo import DemoPaths, build_demo
from wsync_dagster_tests.test_dagster_dev import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
# From `scripts/demo` to "UI ready at …": what a terminal shows without scrolling.
SCREEN_LINES = 40
# No line longer: on an 80-column terminal none wraps into more than two.
SCREEN_COLUMNS = 100
DEMO_TIMEOUT_S = 1800

USERS = 2_000
EVENTS = 20_000
NOW = datetime(2025, 6, 15, 13, 45, 12, tzinfo=UTC)
MIDNIGHT = datetime(2025, 6, 15)
# The demo data ends at the start of the build's hour, so its newest rows are recent.
HOUR = datetime(2025, 6, 15, 13)
YEAR_BEFORE = datetime(2024, 6, 15, 13)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    """One small demo shared by the read-only tests."""
    return build_demo(tmp_path_factory.mktemp("demo"), users=USERS, events=EVENTS, now=NOW)


def rows(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a query against the warehouse and close it again."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def sync_files(paths: DemoPaths) -> dict[str, dict[str, Any]]:
    """The written sync files by name, as YAML reads them."""
    return {path.stem: yaml.safe_load(path.read_text()) for path in paths.sync_files}


def test_tables_have_the_requested_row_counts(built: DemoPaths) -> None:
    [(users, events)] = rows(
        built.warehouse, "SELECT (SELECT count(*) FROM crm.users), (SELECT count(*) FROM analytics.events)"
    )
    assert (users, events) == (USERS, EVENTS)


def test_customer_and_event_ids_are_unique(built: DemoPaths) -> None:
    [(customers, events)] = rows(
        built.warehouse,
        "SELECT (SELECT count(DISTINCT customer_id) FROM crm.users),"
        " (SELECT count(DISTINCT event_id) FROM analytics.events)",
    )
    assert (customers, events) == (USERS, EVENTS)


def test_emails_are_lower_case_with_nulls_and_duplicates_across_customers(built: DemoPaths) -> None:
    [(nulls, upper)] = rows(
        built.warehouse,
        "SELECT count(*) FILTER (email IS NULL), count(*) FILTER (email <> lower(email)) FROM crm.users",
    )
    shared = rows(
        built.warehouse,
        "SELECT email, count(DISTINCT customer_id) FROM crm.users WHERE email IS NOT NULL"
        " GROUP BY email HAVING count(*) > 1",
    )
    assert 0 < nulls < USERS * 0.03
    assert upper == 0
    assert 0 < len(shared) < USERS * 0.02
    assert all(owners == 2 for _, owners in shared)


def test_some_customer_ids_are_shorter_than_five_characters(built: DemoPaths) -> None:
    [(short, shortest, longest)] = rows(
        built.warehouse,
        "SELECT count(*), min(length(customer_id)), max(length(customer_id))"
        " FROM crm.users WHERE length(customer_id) < 5",
    )
    assert short > 0
    assert 2 <= shortest <= longest <= 4


def test_every_event_references_an_existing_customer(built: DemoPaths) -> None:
    [(orphans,)] = rows(
        built.warehouse,
        "SELECT count(*) FROM analytics.events AS e ANTI JOIN crm.users AS u USING (customer_id)",
    )
    assert orphans == 0


def test_event_columns_are_filled_by_event_kind(built: DemoPaths) -> None:
    kinds = {
        name: (pages, skus, amounts)
        for name, pages, skus, amounts in rows(
            built.warehouse,
            "SELECT event_name, count(page) > 0, count(sku) > 0, count(amount) > 0"
            " FROM analytics.events GROUP BY event_name",
        )
    }
    assert {"page_view", "add_to_cart", "purchase", "signup", "search"} <= kinds.keys()
    assert kinds["page_view"] == (True, False, False)
    assert kinds["purchase"] == (False, True, True)


def test_events_lie_in_the_year_and_user_updates_in_the_week_before_the_hour(built: DemoPaths) -> None:
    [(first_update, last_update, first_event, last_event)] = rows(
        built.warehouse,
        "SELECT (SELECT min(updated_at) FROM crm.users), (SELECT max(updated_at) FROM crm.users),"
        " (SELECT min(event_ts) FROM analytics.events), (SELECT max(event_ts) FROM analytics.events)",
    )
    assert YEAR_BEFORE <= first_event < last_event < HOUR
    # Spread over the year, not bunched at one end.
    assert first_event < datetime(2024, 7, 15) and last_event > datetime(2025, 5, 15)
    week_before = HOUR - timedelta(days=7)
    assert week_before <= first_update < week_before + timedelta(days=1)
    # Within the hour before the build's hour: an hourly sync's data-delay check (2 hours) passes.
    assert HOUR - timedelta(hours=1) <= last_update < HOUR
    assert HOUR - timedelta(hours=1) <= last_event < HOUR


def test_a_fresh_demo_passes_its_data_delay_checks(built: DemoPaths) -> None:
    from wsync_dagster.defs.assets import data_delay_result
    from wsync_dagster.spec import load_sync_folder

    folder = load_sync_folder(built.syncs_dir)
    incremental = [spec for spec in folder.specs if spec.sync.mode == "incremental"]
    assert sorted(spec.name for spec in incremental) == ["demo_events", "demo_users"]
    for spec in incremental:
        result = data_delay_result(spec, now=NOW)
        assert result.passed, (spec.name, result.description)


def test_the_same_now_gives_identical_data(built: DemoPaths, tmp_path: Path) -> None:
    again = build_demo(tmp_path, users=USERS, events=EVENTS, now=NOW.replace(minute=0))
    for sql in (
        "SELECT * FROM crm.users ORDER BY customer_id",
        "SELECT * FROM analytics.events ORDER BY event_id",
        "SELECT * FROM marts.customer_segments ORDER BY customer_id",
    ):
        assert rows(again.warehouse, sql) == rows(built.warehouse, sql)
    assert [p.read_text() for p in again.sync_files] == [p.read_text() for p in built.sync_files]


def test_segments_view_returns_a_row_per_customer_with_a_segment(built: DemoPaths) -> None:
    [(count, customers, unsegmented)] = rows(
        built.warehouse,
        "SELECT count(*), count(DISTINCT customer_id), count(*) FILTER (segment IS NULL)"
        " FROM marts.customer_segments",
    )
    segments = {s for (s,) in rows(built.warehouse, "SELECT DISTINCT segment FROM marts.customer_segments")}
    assert (count, customers, unsegmented) == (USERS, USERS, 0)
    assert {"high_value", "at_risk", "new", "dormant"} <= segments


def test_segment_figures_match_the_last_90_days_of_purchases(built: DemoPaths) -> None:
    mismatches = rows(
        built.warehouse,
        """
        SELECT s.customer_id
        FROM marts.customer_segments AS s
        LEFT JOIN (
            SELECT customer_id, count(*) AS orders, sum(amount) AS revenue
            FROM analytics.events
            WHERE event_name = 'purchase' AND event_ts >= TIMESTAMP '2025-06-15 13:00' - INTERVAL 90 DAY
            GROUP BY customer_id
        ) AS p USING (customer_id)
        WHERE s.orders_90d <> coalesce(p.orders, 0) OR abs(s.revenue_90d - coalesce(p.revenue, 0)) > 1e-6
        """,
    )
    assert mismatches == []


def test_sync_files_carry_the_expected_names_modes_and_iterators(built: DemoPaths) -> None:
    files = sync_files(built)
    assert [p.name for p in built.sync_files] == ["demo_users.yaml", "demo_events.yaml", "demo_segments.yaml"]
    assert {name: spec["name"] for name, spec in files.items()} == {name: name for name in files}
    users, events, segments = files["demo_users"], files["demo_events"], files["demo_segments"]
    assert (users["data_type"], events["data_type"], segments["data_type"]) == ("user", "event", "user")
    assert users["sync"] | {"start": None} == {
        "mode": "incremental",
        "iterator": "updated_at",
        "iterator_type": "timestamp",
        "schedule": "interval",
        "frequency": "hourly",
        "start": None,
        "historical_start": date(2025, 6, 8),
    }
    assert users["sync"]["start"] == datetime(2025, 6, 15, tzinfo=UTC)
    assert (events["sync"]["mode"], events["sync"]["iterator"], events["sync"]["frequency"]) == (
        "incremental",
        "event_ts",
        "daily",
    )
    assert events["sync"]["start"] == datetime(2025, 6, 15, tzinfo=UTC)
    assert segments["sync"] == {"mode": "full", "schedule": "on_demand"}
    assert "marts.customer_segments" in segments["data_model"]["sql"]
    assert all(spec["description"] for spec in files.values())


def test_event_sync_maps_the_mparticle_event_fields(built: DemoPaths) -> None:
    mapping = {entry["field"]: entry for entry in sync_files(built)["demo_events"]["mapping"]}
    assert mapping["user_identities.customer_id"]["column"] == "customer_id"
    assert mapping["events.event_type"] == {
        "type": "static",
        "value": "custom_event",
        "field": "events.event_type",
    }
    assert mapping["events.data.timestamp_unixtime_ms"]["column"] == "event_ts"
    assert mapping["events.data.source_message_id"]["column"] == "event_id"
    assert mapping["events.data.custom_attributes.*"]["column"] == "$unmapped"


def test_sync_file_paths_resolve_to_the_warehouse(built: DemoPaths) -> None:
    for path, spec in zip(built.sync_files, sync_files(built).values(), strict=True):
        assert spec["connection"] == {"type": "duckdb", "path": "../data/demo_warehouse.duckdb"}
        assert (path.parent / spec["connection"]["path"]).resolve() == built.warehouse.resolve()


def test_sync_files_pass_the_sync_validator(built: DemoPaths) -> None:
    from wsync_dagster.spec import load_sync_folder

    folder = load_sync_folder(built.syncs_dir)
    assert folder.invalid == []
    assert sorted(spec.name for spec in folder.specs) == [
        "demo_events",
        "demo_segments",
        "demo_users",
    ]


def test_rebuild_replaces_the_warehouse_and_a_stale_wal(tmp_path: Path) -> None:
    first = build_demo(tmp_path, users=50, events=100, now=NOW)
    stale_wal = first.warehouse.with_name(first.warehouse.name + ".wal")
    stale_wal.write_bytes(b"left over by a crashed writer")
    second = build_demo(tmp_path, users=60, events=100, now=NOW)
    assert rows(second.warehouse, "SELECT count(*) FROM crm.users") == [(60,)]
    assert not stale_wal.exists()
    assert sorted(p.name for p in second.warehouse.parent.iterdir()) == ["demo_warehouse.duckdb"]


def test_failed_build_leaves_the_previous_warehouse_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_demo(tmp_path, users=50, events=100, now=NOW)
    monkeypatch.setattr(
        demo, "_warehouse_sql", lambda **_: ["CREATE TABLE t AS SELECT 1", "SELECT nonsense("]
    )
    with pytest.raises(duckdb.Error):
        build_demo(tmp_path, users=60, events=100, now=NOW)
    assert rows(first.warehouse, "SELECT count(*) FROM crm.users") == [(50,)]
    assert sorted(p.name for p in first.warehouse.parent.iterdir()) == ["demo_warehouse.duckdb"]


def test_scripts_demo_fits_one_screen_and_ctrl_c_stops_the_ui(tmp_path: Path) -> None:
    # A checkout of its own, so the demo's data/, syncs/ and .wsync/ land in tmp_path: links to this one's
    # code and virtual environment, and a scripts/setup that does nothing (scripts/test has installed it).
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("wsync_dagster", "workspace.yaml", "dagster.yaml", "pyproject.toml", "scripts/demo"):
        (checkout / name).symlink_to(REPO / name)
    (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
    setup = checkout / "scripts" / "setup"
    setup.write_text("#!/bin/sh\nexit 0\n")
    setup.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WSYNC_", "DAGSTER_"))}
    demo_run = subprocess.Popen(
        [str(checkout / "scripts" / "demo")],
        cwd=checkout,
        env={**env, "PORT": str(free_port())},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # A demo that hangs must not hang the suite: its process group is ended after the timeout.
    watchdog = threading.Timer(DEMO_TIMEOUT_S, stop_process_group, [demo_run])
    watchdog.start()
    lines: list[str] = []
    try:
        assert demo_run.stdout is not None
        for line in demo_run.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("UI ready at http://127.0.0.1:"):
                break
        shown = "\n".join(lines)
        assert lines and lines[-1].startswith("UI ready at"), shown
        assert "; Ctrl-C to stop" in lines[-1], shown
        assert len(lines) <= SCREEN_LINES, f"{len(lines)} lines:\n{shown}"
        assert [line for line in lines if len(line) > SCREEN_COLUMNS] == [], shown
        # What Ctrl-C in the terminal does: SIGINT to the script's process group.
        os.killpg(demo_run.pid, signal.SIGINT)
        rest, _ = demo_run.communicate(timeout=120)
        assert demo_run.returncode == 0, rest
        assert "stopping the UI" in rest
    finally:
        watchdog.cancel()
        stop_process_group(demo_run)
