"""Issue 20 items 3 and 4: a sync's runs on its job's page in a real `dagster dev`, and the truth at a glance."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance

from wsync_dagster.cli import main
from wsync_dagster.recovery import PID_TAG
from wsync_dagster.run_tags import PARTITION_RANGE_START
from wsync_dagster_tests.conftest import USERS_SQL, user_sync
from wsync_dagster_tests.test_backfill import BACKFILL_TIMEOUT_S, HISTORY_SQL
from wsync_dagster_tests.test_dagster_dev import JOB, LOCATION, dagster_dev, graphql, wait_until_loaded

JOB_RUNS_QUERY = """
query JobRuns($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { runs { runId status tags { key value } } }
    ... on Error { message }
  }
}
"""
LATEST_MATERIALIZATION_QUERY = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""
FIRST, RANGE = "2024-01-01", ("2024-01-02", "2024-01-03")


def _values(entries: list[dict]) -> dict:
    return {entry["label"]: entry.get("intValue", entry.get("text")) for entry in entries}


def test_cli_runs_and_backfills_are_listed_on_the_syncs_job_page_with_their_range_and_counts(
    tmp_path: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`wsync run` and `wsync backfill` both leave their runs on crm_users_job's page; a range run's tags name
    its range and counts, the process tags are not among them; the backfill ends with `wsync run`'s totals."""
    write_sync(user_sync(make_warehouse(HISTORY_SQL)))
    with dagster_dev(tmp_path) as (client, process):
        home = tmp_path / "dagster_home"
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        wait_until_loaded(client, process, LOCATION)
        assert main(["run", "crm_users", "--partition", FIRST]) == 0
        run_out = capsys.readouterr().out
        backfill = subprocess.run(
            [
                sys.executable, "-m", "wsync_dagster.cli", "backfill", "crm_users",
                "--from", RANGE[0], "--to", RANGE[1], "--url", str(client.base_url),
            ],
            capture_output=True, text=True, timeout=BACKFILL_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert backfill.returncode == 0, backfill.stdout + backfill.stderr
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "pipelineName": JOB,
        }
        job = graphql(client, JOB_RUNS_QUERY, selector=selector)["pipelineOrError"]
        delivery = {"path": ["crm_users", "delivery"]}
        asset = graphql(client, LATEST_MATERIALIZATION_QUERY, key=delivery)["assetOrError"]
        latest = asset["assetMaterializations"][0]

    assert job["__typename"] == "Pipeline", job
    runs = {run["runId"]: {tag["key"]: tag["value"] for tag in run["tags"]} for run in job["runs"]}
    [cli_run] = [run_id for run_id, tags in runs.items() if tags[PARTITION_RANGE_START] == FIRST]
    assert cli_run in run_out
    [range_run] = [tags for tags in runs.values() if tags.get("dagster/backfill")]
    assert range_run["wsync/partitions"] == f"{RANGE[0]}..{RANGE[1]}"
    # Day two adds C002 and changes C001's plan; day three changes C001 again: three rows applied. The
    # lookback reads day one's row again, which changes nothing: unchanged, not applied.
    assert range_run["wsync/rows_read"] == "4"
    assert range_run["wsync/rows_applied"] == "3"
    assert range_run["wsync/rows_unchanged"] == "1"
    assert range_run["wsync/profiles_created"] == "1"
    assert runs[cli_run]["wsync/rows_applied"] == "1"
    assert not [key for tags in runs.values() for key in tags if "pid" in key or "host" in key]
    # The process tags stay with the run, for recovery; only the UI leaves them out.
    with DagsterInstance.from_config(str(home)) as instance:
        assert PID_TAG in instance.get_run_by_id(cli_run).tags

    # The asset's latest materialization is the range's last partition: its own counts and the run's totals.
    shown = _values(latest["metadataEntries"])
    assert latest["partition"] == RANGE[1]
    assert shown["rows_applied"] == 1
    assert shown["run_partitions"] == f"{RANGE[0]}..{RANGE[1]}"
    assert shown["run_rows_applied"] == 3
    assert shown["run_rows_unchanged"] == 1
    assert shown["run_profiles_created"] == 1

    # The backfill command ends as `wsync run` does: the counts of each asset, added up over its partitions.
    lines = backfill.stdout.splitlines()
    assert lines[-3].startswith("crm_users: backfill ") and "completed_success" in lines[-3], backfill.stdout
    assert lines[-2].startswith("  crm_users/mapped_batches: rows_read=4, rows_mapped=4, rows_rejected=0")
    assert lines[-1].startswith("  crm_users/delivery: rows=4, rows_applied=3, rows_unchanged=1")
    run_lines = run_out.splitlines()
    assert run_lines[-1].startswith("  crm_users/delivery: rows=1, rows_applied=1, rows_unchanged=0")


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_re_read_that_changes_nothing_counts_its_rows_unchanged_not_applied(
    mode: str,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same rows delivered again: rows_applied=0 and every row rows_unchanged, and no profile changed."""
    warehouse = make_warehouse(USERS_SQL)
    sync = user_sync(warehouse)
    partition = ["--partition", FIRST]
    if mode == "full":
        sync = user_sync(warehouse, sync={"mode": "full", "schedule": "on_demand"})
        for key in ("iterator", "iterator_type", "frequency", "start", "historical_start"):
            sync["sync"].pop(key)
        partition = []
    write_sync(sync)
    assert main(["run", "crm_users", *partition]) == 0
    first = capsys.readouterr().out.splitlines()[-1]
    assert main(["run", "crm_users", *partition]) == 0
    again = capsys.readouterr().out.splitlines()[-1]
    rows = 2 if mode == "incremental" else 3
    shown = "  crm_users/delivery: rows={}, rows_applied={}, rows_unchanged={}"
    assert first.startswith(shown.format(rows, rows, 0)), first
    assert again.startswith(shown.format(rows, 0, rows)), again
    assert "profiles_created=0, profiles_updated=0" in again and "attributes_set=0" in again
