"""Concurrency pools: one per warehouse connection, shared by its syncs; parallel runs queue, none fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from wsync_dagster.defs import build_definitions
from wsync_dagster.defs.assets import PROFILE_STORE_POOL, delivery_key, mapped_key
from wsync_dagster.defs.pools import warehouse_pool
from wsync_dagster.spec import load_sync_file
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

REPO = Path(__file__).resolve().parents[1]
SQL = "SELECT customer_id, email, first_name, plan, updated_at FROM crm.users"
PASSWORD = "pool-test-secret-9d1e"


def postgres_sync(name: str, database: str = "analytics", **connection) -> dict:
    """A user sync on a PostgreSQL warehouse whose password comes from WH_PASSWORD."""
    return {
        **user_sync(Path("unused.duckdb"), name=name),
        "connection": {
            "type": "postgres",
            "host": "db.internal.example.com",
            "database": database,
            "user": "wsync_reader",
            "password": {"env": "WH_PASSWORD"},
            **connection,
        },
    }


def _pools(path: Path) -> dict[str, str | None]:
    """The pool of each asset of the sync file's definitions, by asset key."""
    spec = load_sync_file(path)
    graph = build_definitions([spec]).resolve_asset_graph()
    return {key.to_user_string(): graph.get(key).pools for key in (mapped_key(spec), delivery_key(spec))}


def test_the_mapped_asset_pool_names_its_connection_and_never_its_secret(write_sync, monkeypatch) -> None:
    monkeypatch.setenv("WH_PASSWORD", PASSWORD)
    pools = _pools(write_sync(postgres_sync("crm_users")))

    assert pools == {
        "crm_users/mapped_batches": {"warehouse:postgres:db.internal.example.com/5432/analytics"},
        "crm_users/delivery": {PROFILE_STORE_POOL},
    }
    assert PASSWORD not in str(pools) and "wsync_reader" not in str(pools)


def test_syncs_on_one_connection_share_a_pool_and_other_connections_do_not(
    write_sync, make_warehouse, tmp_path: Path
) -> None:
    same = [
        write_sync(postgres_sync("a_users")),
        write_sync(postgres_sync("b_users", port=5432)),  # the default port written out: the same server
    ]
    other_database = write_sync(postgres_sync("c_users", database="marketing"))
    env_host = write_sync(postgres_sync("d_users", host={"env": "WH_HOST"}))
    warehouse = make_warehouse(USERS_SQL)
    duck_absolute = write_sync(user_sync(warehouse, name="e_users"))
    duck_relative = write_sync(
        user_sync(Path(os.path.relpath(warehouse, duck_absolute.parent)), name="f_users")
    )
    other_file = write_sync(user_sync(make_warehouse(USERS_SQL, "other.duckdb"), name="g_users"))

    def pool(path: Path) -> str:
        return warehouse_pool(load_sync_file(path))

    assert pool(same[0]) == pool(same[1])
    assert pool(other_database) != pool(same[0])
    assert pool(env_host) == "warehouse:postgres:$WH_HOST/5432/analytics"
    assert pool(duck_absolute) == pool(duck_relative)
    assert pool(duck_absolute).startswith("warehouse:duckdb:warehouse-")
    assert pool(other_file) != pool(duck_absolute)


@pytest.fixture
def sqlite_home(tmp_path: Path) -> Path:
    """A Dagster home with the repository's dagster.yaml: every pool one step at a time."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def test_parallel_runs_on_one_warehouse_and_the_embedded_store_queue_and_all_succeed(
    write_sync, make_warehouse, wsync_env: Path, sqlite_home: Path, monkeypatch
) -> None:
    warehouse = make_warehouse(USERS_SQL)
    names = ["a_users", "b_users", "c_users"]
    for name in names:
        write_sync(user_sync(warehouse, name=name))
    env = {**os.environ, "DAGSTER_HOME": str(sqlite_home)}

    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "wsync_dagster.cli", "run", name, "--partition", "2024-01-01"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert not any("locked" in output for output in outputs), outputs
    monkeypatch.setenv("DAGSTER_HOME", str(sqlite_home))
    with DagsterInstance.get() as instance:
        records = instance.get_run_records()
        assert [r.dagster_run.status for r in records] == [DagsterRunStatus.SUCCESS] * 3
        for name in names:
            spec = load_sync_file(wsync_env / f"{name}.yaml")
            assert instance.get_materialized_partitions(delivery_key(spec)) == {"2024-01-01"}
        # The pools let one step at a time in: the runs' deliveries (and their reads) never overlapped.
        assert not _overlapping(_step_spans(instance, "delivery"))
        assert not _overlapping(_step_spans(instance, "mapped_batches"))


def _step_spans(instance: DagsterInstance, step: str) -> list[tuple[float, float]]:
    """When each run's step `step` started and succeeded, by the event log."""
    spans = []
    for record in instance.get_run_records():
        events = instance.all_logs(
            record.dagster_run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
        )
        times = [event.timestamp for event in events if (event.step_key or "").endswith(step)]
        spans.append((min(times), max(times)))
    return spans


def _overlapping(spans: list[tuple[float, float]]) -> bool:
    ordered = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in pairwise(ordered))


CLAIM = """
import sys, time
from dagster import DagsterInstance
with DagsterInstance.get() as instance:
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    status = instance.event_log_storage.claim_concurrency_slot(sys.argv[3], sys.argv[1], "delivery")
    print("claimed" if status.is_claimed else "blocked")
"""


def test_runs_claiming_the_one_slot_at_the_same_instant_get_it_once(sqlite_home: Path) -> None:
    """SQLite ignores the claim's SELECT … FOR UPDATE: without wsync's lock two claimers both took it."""
    env = {**os.environ, "DAGSTER_HOME": str(sqlite_home)}
    for trial in range(3):
        pool = f"store_{trial}"  # a fresh pool of one slot a trial
        with DagsterInstance.from_config(str(sqlite_home)) as instance:
            instance.event_log_storage.set_concurrency_slots(pool, 1)
        start = time.time() + 8  # every claimer imported and connected before the instant
        claimers = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIM, f"run-{trial}-{n}", str(start), pool],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(6)
        ]
        answers = [claimer.communicate(timeout=120)[0].strip() for claimer in claimers]
        assert answers.count("claimed") == 1, answers
