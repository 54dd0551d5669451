"""Mapped batch files on disk: removed once delivered, and nothing left behind by killed or abandoned runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
from dagster import DagsterInstance, materialize

from wsync_dagster.batches import RETENTION
from wsync_dagster.cli import main
from wsync_dagster.defs import build_definitions
from wsync_dagster.defs.assets import batch_file, build_sync_assets, delivery_key, mapped_key
from wsync_dagster.delivery import deliver_partitions
from wsync_dagster.iterators import epoch_micros
from wsync_dagster.mapped_batches import map_partition
from wsync_dagster.modes.partitions import run_key
from wsync_dagster.run_partitions import Partition
from wsync_dagster.settings import batches_dir, profile_store_url
from wsync_dagster.spec import SyncSpec, load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

# A day of many users, so that a run killed after its first batch is still mapping.
MANY_USERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users AS SELECT
    'C' || i AS customer_id, 'user' || i || '@example.com' AS email, 'Name' || i AS first_name,
    'pro' AS plan, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (i % 86400) SECOND AS updated_at
FROM range(1000000) AS t(i);
INSERT INTO crm.users VALUES ('D001', 'dee@example.com', 'Dee', 'free', TIMESTAMP '2024-01-02 08:00:00');
"""


def _files(spec: SyncSpec) -> list[str]:
    folder = batches_dir(spec.name, spec.sync.environment)
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def _materialize(spec: SyncSpec, partition: str, *, only: str | None = None, store_url: str | None = None):
    keys = {"mapped_batches": mapped_key(spec), "delivery": delivery_key(spec)}
    return materialize(
        build_sync_assets(spec),
        partition_key=partition,
        selection=[keys[only]] if only else None,
        instance=DagsterInstance.ephemeral(),
        resources=build_definitions([spec], store_url).resources,
        raise_on_error=False,
    )


def _has_profile(customer_id: str) -> bool:
    store = open_profile_store(profile_store_url())
    try:
        return store.profile("customer_id", customer_id, "production") is not None
    finally:
        store.close()


def test_fifty_hourly_full_mode_runs_do_not_grow_the_batch_folder(make_warehouse, write_sync):
    warehouse = make_warehouse(
        "CREATE SCHEMA marts; CREATE TABLE marts.segments AS "
        "SELECT 'C' || i AS customer_id, 'vip' AS segment FROM range(200) AS t(i)"
    )
    spec = load_sync_file(
        write_sync(
            {
                "name": "segments",
                "data_type": "user",
                "connection": {"type": "duckdb", "path": str(warehouse)},
                "data_model": {"sql": "SELECT customer_id, segment FROM marts.segments"},
                "sync": {"mode": "full"},
            }
        )
    )
    store = open_profile_store(profile_store_url())
    start = datetime(2024, 5, 1, tzinfo=UTC)
    try:
        # What each run of the sync's job does (map, then deliver), without Dagster's per-run overhead.
        for hour in range(50):
            moment = start + timedelta(hours=hour)
            batches = batch_file(spec, run_key(moment))
            counts = map_partition(spec, None, batches, run_version=epoch_micros(moment))
            assert counts.rows_mapped == 200 and _files(spec) == [f"{run_key(moment)}.mapped.parquet"]
            deliver_partitions(spec, batches, store, [Partition(run_key(moment))])
            assert _files(spec) == [], f"run {hour + 1} left {_files(spec)}"
    finally:
        store.close()


def test_a_killed_mapping_leaves_no_temporary_file_after_the_next_run(make_warehouse, write_sync, capsys):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(MANY_USERS_SQL))))
    run = subprocess.Popen(
        [sys.executable, "-m", "wsync_dagster.cli", "run", "crm_users", "--partition", "2024-01-01"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in run.stderr:  # the first batch is being written: kill the run mid-mapping
            if "crm_users: read " in line:
                run.send_signal(signal.SIGKILL)
                break
    finally:
        run.kill()
        run.wait()
    assert run.returncode == -signal.SIGKILL
    assert any(name.endswith(".tmp") for name in _files(spec))

    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
    assert "removed 1 stale batch files" in capsys.readouterr().err
    assert _files(spec) == []
    assert _has_profile("D001")


WRITER = """
import sys
from pathlib import Path

import pyarrow as pa

from wsync_dagster.batches import BatchFile

with BatchFile(Path(sys.argv[1]), "2024-01-01").writer() as writer:
    writer.write(pa.table({"customer_id": ["C001", "C002"]}))
    print("writing", flush=True)
    sys.stdin.readline()
"""


def test_a_mapping_still_running_keeps_its_file_when_another_run_cleans_up(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    folder = batches_dir(spec.name, spec.sync.environment)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
        assert any(name.endswith(".tmp") for name in _files(spec))
        writer.stdin.write("\n")
        writer.stdin.close()
        assert writer.wait() == 0
    finally:
        writer.kill()
        writer.wait()
    assert _files(spec) == ["2024-01-01.mapped.parquet"]
    written = pq.read_table(batches_dir(spec.name, spec.sync.environment) / "2024-01-01.mapped.parquet")
    assert written.column("customer_id").to_pylist() == ["C001", "C002"]


def test_delivery_alone_after_its_files_were_removed_asks_to_map_again(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    result = _materialize(spec, "2024-01-01", only="delivery")
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert (
        "crm_users: no mapped batches for partition 2024-01-01; materialize crm_users/mapped_batches "
        "for the same partitions first" in str(failure.step_failure_data.error)
    )


def test_a_failed_delivery_keeps_its_files_until_a_retry_delivers_them(make_warehouse, write_sync, tmp_path):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    (tmp_path / "not_a_folder").write_text("")
    unusable_store = f"sqlite:///{tmp_path / 'not_a_folder' / 'profiles.sqlite'}"
    assert not _materialize(spec, "2024-01-01", store_url=unusable_store).success
    assert _files(spec) == ["2024-01-01.mapped.parquet"]
    assert _materialize(spec, "2024-01-01", only="delivery").success
    assert _has_profile("C001")
    assert _files(spec) == []


def test_mapped_files_never_delivered_are_removed_after_the_retention(make_warehouse, write_sync):
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    assert _materialize(spec, "2024-01-01", only="mapped_batches").success
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
    assert _files(spec) == ["2024-01-01.mapped.parquet"]  # younger than the retention: may still be delivered

    mapped = batches_dir(spec.name, spec.sync.environment) / "2024-01-01.mapped.parquet"
    written = time.time() - RETENTION.total_seconds() - 3600
    os.utime(mapped, (written, written))
    assert main(["run", "crm_users", "--partition", "2024-01-03"]) == 0
    assert _files(spec) == []
