"""Issue 20 item 6: a sync whose `{env: VAR}` is unset where the UI runs says so before anything runs, and a
failed backfill says which of its partitions stay delivered; each through a real `dagster dev`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from dagster import build_schedule_context

from wsync_dagster.cli import main
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import code_location, user_sync, users_sync
from wsync_dagster_tests.engines.postgres import PASSWORD_VARIABLE, PostgresEngine
from wsync_dagster_tests.test_backfill import BACKFILL_TIMEOUT_S, HISTORY_SQL
from wsync_dagster_tests.test_dagster_dev import (
    LOCATION,
    PLANTED_SECRET,
    dagster_dev,
    graphql,
    launch_partition,
    wait_for_run,
    wait_until_loaded,
)

ASSET_QUERY = """
query Asset($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    description
    metadataEntries { label ... on TextMetadataEntry { text } }
  }
}
"""
BACKFILLS_QUERY = "query { partitionBackfillsOrError { ... on PartitionBackfills { results { id } } } }"
FAILURES_QUERY = """
query Failures($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection {
        events { __typename ... on ExecutionStepFailureEvent { stepKey failureMetadata { description } } }
      }
    }
  }
}
"""
def unset_line(sync_file: Path) -> str:
    """How a run, a backfill and the assets say the password's variable is unset: the file, field and variable."""
    return (
        f"{sync_file.resolve()}: connection.password: environment variable {PASSWORD_VARIABLE} is not set in the "
        "process that runs the sync users"
    )


def _backfill(client, sync: str, first: str, last: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "wsync_dagster.cli", "backfill", sync,
            "--from", first, "--to", last, "--url", str(client.base_url),
        ],
        capture_output=True, text=True, timeout=BACKFILL_TIMEOUT_S, check=False,
    )  # fmt: skip


def _step_failures(client, run_id: str) -> list[str]:
    events = graphql(client, FAILURES_QUERY, runId=run_id)["runOrError"]["eventConnection"]["events"]
    return [
        event["failureMetadata"]["description"]
        for event in events
        if event["__typename"] == "ExecutionStepFailureEvent" and event.get("failureMetadata")
    ]


def test_a_variable_unset_where_the_ui_runs_marks_the_syncs_assets_and_refuses_its_backfill(
    tmp_path: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dagster dev` started without the password's variable: the location loads, the sync's assets name the
    variable (no value), `wsync backfill` is refused with that line though its own shell has the variable,
    and a run launched in the UI fails at its first step with the same line."""
    write_sync(user_sync(make_warehouse(HISTORY_SQL)))
    users_file = write_sync(
        users_sync(
            PostgresEngine("wsync_never_opened").connection(), "SELECT customer_id, updated_at FROM crm.users"
        )
    )
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, LOCATION)
        keys = [
            {"path": ["users", "mapped_batches"]},
            {"path": ["users", "delivery"]},
            {"path": ["crm_users", "delivery"]},
        ]
        nodes = {
            tuple(n["assetKey"]["path"]): n for n in graphql(client, ASSET_QUERY, keys=keys)["assetNodes"]
        }
        monkeypatch.setenv(PASSWORD_VARIABLE, PLANTED_SECRET)
        refused = _backfill(client, "users", "2024-01-01", "2024-01-02")
        backfills = graphql(client, BACKFILLS_QUERY)["partitionBackfillsOrError"]["results"]
        run_id = launch_partition(client, "users_job", "2024-01-01")
        status = wait_for_run(client, run_id)
        failures = _step_failures(client, run_id)

    for key in (("users", "mapped_batches"), ("users", "delivery")):
        shown = {entry["label"]: entry.get("text") for entry in nodes[key]["metadataEntries"]}
        assert shown["unset_environment_variables"] == PASSWORD_VARIABLE
        assert nodes[key]["description"].startswith(f"**Cannot run here**: {unset_line(users_file)}")
    # The other sync runs as before, unmarked.
    assert "Cannot run here" not in nodes[("crm_users", "delivery")]["description"]

    assert refused.returncode == 1
    assert refused.stderr.startswith(f"wsync backfill: {unset_line(users_file)}"), refused.stderr
    assert "no backfill launched" in refused.stderr
    assert PLANTED_SECRET not in refused.stdout + refused.stderr
    assert backfills == []

    assert status == "FAILURE"
    assert failures and failures[0].startswith(unset_line(users_file)), failures


def test_a_failed_backfill_says_which_of_its_partitions_stay_delivered(
    tmp_path: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2024-01-01 is delivered, then the warehouse table goes: a backfill of 2024-01-01..2024-01-02 fails, and
    its failure (in the run and at the end of `wsync backfill`) says 2024-01-01 is still delivered, as it is."""
    warehouse = make_warehouse(HISTORY_SQL)
    write_sync(user_sync(warehouse))
    with dagster_dev(tmp_path) as (client, process):
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        wait_until_loaded(client, process, LOCATION)
        assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
        with duckdb.connect(str(warehouse)) as connection:
            connection.execute("DROP TABLE crm.users")
        failed = _backfill(client, "crm_users", "2024-01-01", "2024-01-02")
        # The run, and the one run retry dagster.yaml allows.
        run_ids = [line.split()[1] for line in failed.stderr.splitlines() if line.startswith("  run ")]
        failures = [_step_failures(client, run_id) for run_id in run_ids]

    kept = "partition 2024-01-01 is still delivered: the profile store keeps its last delivery"
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "completed_failed" in failed.stdout, failed.stdout
    run_lines = [line for line in failed.stderr.splitlines() if line.startswith("  run ")]
    assert run_ids and all("failed: data_model.sql: " in line and line.endswith(kept) for line in run_lines)
    assert failures and all(found and found[0].endswith(kept) for found in failures), failures
    with open_profile_store(os.environ["WSYNC_PROFILE_STORE"]) as store:
        assert store.profile("customer_id", "C001")["attributes"]["plan"] == "free"


def test_a_schedule_tick_skips_saying_which_variable_is_unset(
    write_sync: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule starts no run that would fail: its tick skips with the line naming the variable."""
    connection = PostgresEngine("wsync_never_opened").connection()
    sync = users_sync(connection, "SELECT customer_id, updated_at FROM crm.users", schedule="interval")
    sync_file = write_sync({**sync, "sync": {**sync["sync"], "frequency": "daily", "start": "2024-01-02T00:00:00Z"}})
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    defs = code_location()
    schedule = defs.get_schedule_def("users_schedule")
    repository = defs.get_repository_def()
    with build_schedule_context(
        scheduled_execution_time=datetime(2024, 1, 5, tzinfo=UTC), repository_def=repository
    ) as context:
        result = schedule.evaluate_tick(context)
    assert not result.run_requests
    assert result.skip_message.startswith(unset_line(sync_file)), result.skip_message
    monkeypatch.setenv(PASSWORD_VARIABLE, "set")
    with build_schedule_context(
        scheduled_execution_time=datetime(2024, 1, 5, tzinfo=UTC), repository_def=repository
    ) as context:
        assert [request.partition_key for request in schedule.evaluate_tick(context).run_requests] == [
            "2024-01-04"
        ]
