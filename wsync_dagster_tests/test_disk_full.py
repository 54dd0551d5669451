"""A full disk, for real: a small tmpfs mounted in the test's tmp folder and filled, under real `wsync run`s.

Mounting needs root (or CAP_SYS_ADMIN); where the test cannot mount, it is skipped and says why.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from wsync_dagster.spec import NAME_MAX_LENGTH
from wsync_dagster_tests.conftest import user_sync

# 10,000 rows on 2024-01-01: megabytes of batch files and store pages; two on 2024-01-02.
MANY_USERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users AS
SELECT 'C' || i AS customer_id, 'u' || i || '@example.com' AS email, repeat('x', 50) || i AS first_name,
       'pro' AS plan, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (i) SECOND AS updated_at
FROM range(10000) t(i);
INSERT INTO crm.users VALUES
    ('D1', 'd1@example.com', 'Di', 'free', TIMESTAMP '2024-01-02 09:00:00'),
    ('D2', 'd2@example.com', 'Do', 'free', TIMESTAMP '2024-01-02 10:00:00');
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs (a delivery of 10,000 users needs about 15 MB of store and WAL), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all the disk's free space but `leave` bytes; remove the returned file to give it back."""
    status = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as file:
        file.write(b"\0" * (status.f_bavail * status.f_frsize - leave))
    return filler


@pytest.fixture
def world(tmp_path: Path, make_warehouse) -> dict[str, str]:
    """A sync over 10,000 users; the environment of a `wsync run` (state and store set by each test)."""
    syncs = tmp_path / "syncs"
    syncs.mkdir()
    # Each run reads its own day only (lookback: 0s), so the 10,000 rows come in the 2024-01-01 run alone.
    sync = user_sync(make_warehouse(MANY_USERS_SQL), sync={"lookback": "0s"})
    (syncs / "crm_users.yaml").write_text(yaml.safe_dump(sync))
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    return {**env, "WSYNC_SYNCS_DIR": str(syncs)}


def wsync_run(env: dict[str, str], partition: str, sync: str = "crm_users") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsync_dagster.cli", "run", sync, "--partition", partition],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def store_rows(path: Path) -> dict[str, list]:
    """Every row of every table of a SQLite profile store."""
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        tables = [
            name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {table: sorted(map(repr, connection.execute(f'SELECT * FROM "{table}"'))) for table in tables}


def test_tmpfs_full_under_the_batch_files_fails_naming_the_folder_and_leaves_nothing_behind(
    world, small_disk, tmp_path
):
    env = {
        **world,
        "WSYNC_STATE_DIR": str(small_disk / "state"),
        "WSYNC_PROFILE_STORE": f"sqlite:///{tmp_path / 'profiles.sqlite'}",
    }
    folder = small_disk / "state" / "batches" / "production" / "crm_users"
    filler = fill(small_disk, leave=8192)

    failed = wsync_run(env, "2024-01-01")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].endswith(
        f"failed: no space left on the disk of the batch files folder {folder}: this partition's files were "
        "removed and nothing was delivered; free space there (or set WSYNC_STATE_DIR to a folder on a "
        "larger disk) and run again"
    )
    assert [line for line in failed.stderr.splitlines() if line.startswith("wsync run:")] == [
        failed.stderr.splitlines()[-1]
    ]
    assert list(folder.iterdir()) == []  # no half-written file keeps the space
    assert "delivered 1 partition" not in failed.stderr

    filler.unlink()
    again = wsync_run(env, "2024-01-01")
    assert again.returncode == 0, again.stderr
    assert "profiles_created=10000" in again.stdout


def test_tmpfs_full_under_the_profile_store_rolls_back_reports_nothing_applied_and_a_later_run_delivers(
    world, small_disk, tmp_path
):
    store = small_disk / "store" / "profiles.sqlite"
    store.parent.mkdir()
    env = {**world, "WSYNC_STATE_DIR": str(tmp_path / "state"), "WSYNC_PROFILE_STORE": f"sqlite:///{store}"}
    assert wsync_run(env, "2024-01-02").returncode == 0
    before = store_rows(store)
    filler = fill(small_disk, leave=64 * 1024)

    failed = wsync_run(env, "2024-01-01")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].endswith(
        f"failed: no space left on the disk of the profile store folder {store.parent}: the delivery was "
        "rolled back and nothing of it is in the store; free space there and run again"
    )
    assert "applied" not in failed.stderr and "delivered 1 partition" not in failed.stderr
    assert "10,000 rows staged, committed together at the end" in failed.stderr

    filler.unlink()
    assert store_rows(store) == before
    # The failed partition's batch files wait in the state folder; the next run maps anew and delivers.
    again = wsync_run(env, "2024-01-01")
    assert again.returncode == 0, again.stderr
    assert "profiles_created=10000" in again.stdout


def test_the_longest_sync_name_allowed_names_its_batch_folder_and_runs(world, tmp_path):
    name = "crm_users_" + "x" * (NAME_MAX_LENGTH - len("crm_users_"))
    sync_file = Path(world["WSYNC_SYNCS_DIR"]) / "crm_users.yaml"
    sync_file.write_text(yaml.safe_dump({**yaml.safe_load(sync_file.read_text()), "name": name}))
    env = {
        **world,
        "WSYNC_STATE_DIR": str(tmp_path / "state"),
        "WSYNC_PROFILE_STORE": f"sqlite:///{tmp_path / 'profiles.sqlite'}",
    }

    done = wsync_run(env, "2024-01-02", sync=name)
    assert done.returncode == 0, done.stderr
    assert "profiles_created=2" in done.stdout
    assert (tmp_path / "state" / "batches" / "production" / name).is_dir()
