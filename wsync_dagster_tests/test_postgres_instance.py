"""The production instance (deploy/dagster-postgres.yaml) on the local PostgreSQL: a sync runs on it, and
an instance database that cannot be reached is one line, the password never shown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster_postgres import PostgresRunStorage

from wsync_dagster.bookkeeping import BatchedPostgresEventLogStorage
from wsync_dagster.defs.assets import delivery_key, mapped_key
from wsync_dagster.demo import build_demo
from wsync_dagster.spec import load_sync_file
from wsync_dagster_tests.conftest import USERS_SQL, closed_port, user_sync
from wsync_dagster_tests.engines.postgres import SERVER, scratch_database

REPO = Path(__file__).resolve().parents[1]
# The local server trusts every login: the password is checked for where it must never appear.
PASSWORD = "instance-test-secret-7f3a"


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch database for Dagster's storage, dropped after the test."""
    with scratch_database() as name:
        yield name


@pytest.fixture
def production_home(tmp_path: Path) -> Path:
    """A Dagster home holding the production dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    return home


def _instance_env(home: Path, database: str, port: int = 5432) -> dict[str, str]:
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": PASSWORD,
    }


def _wsync_run(sync: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsync_dagster.cli", "run", sync],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_demo_users_sync_runs_on_the_postgres_instance_and_the_ui_sees_it(
    wsync_env: Path, tmp_path: Path, production_home: Path, database: str, monkeypatch
) -> None:
    demo = build_demo(tmp_path / "demo", users=1_000, events=1_000)
    monkeypatch.setenv("WSYNC_SYNCS_DIR", str(demo.syncs_dir))
    env = _instance_env(production_home, database)

    result = _wsync_run("demo_users", env)

    assert result.returncode == 0, result.stderr
    spec = load_sync_file(demo.syncs_dir / "demo_users.yaml")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert type(instance.event_log_storage) is BatchedPostgresEventLogStorage
        [record] = instance.get_run_records()
        run = record.dagster_run
        assert run.status == DagsterRunStatus.SUCCESS
        assert f"(run {run.run_id})" in result.stdout
        # The partitions the command reported are the ones the UI shows materialized.
        first, last = result.stdout.split("partitions ", 1)[1].split(" ", 1)[0].split("..")
        for key in (mapped_key(spec), delivery_key(spec)):
            materialized = instance.get_materialized_partitions(key)
            assert min(materialized) == first and max(materialized) == last
            assert len(materialized) > 100  # an hourly week of history
    with psycopg2.connect(dbname=database, **SERVER) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run.run_id,))
        assert cursor.fetchall() == [("SUCCESS",)]
        cursor.execute(
            "SELECT count(*) FILTER (WHERE dagster_event_type = 'ASSET_MATERIALIZATION'),"
            " count(*) FILTER (WHERE event LIKE %s) FROM event_logs WHERE run_id = %s",
            (f"%{PASSWORD}%", run.run_id),
        )
        materializations, holding_the_password = cursor.fetchone()
    assert materializations == 2 * len(materialized)
    assert holding_the_password == 0
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("closed port", "Connection refused"),
        ("missing database", "does not exist"),
    ],
)
def test_an_unreachable_instance_database_is_one_line_without_the_password(
    where: str, reason: str, write_sync, make_warehouse, production_home: Path, database: str, tmp_path: Path
) -> None:

    write_sync(user_sync(make_warehouse(USERS_SQL)))
    if where == "closed port":
        env = _instance_env(production_home, database, port=closed_port())
    else:
        env = _instance_env(production_home, f"{database}_missing")

    result = _wsync_run("crm_users", env)

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"wsync run: Dagster instance {production_home / 'dagster.yaml'}: cannot connect to its PostgreSQL storage: "
    )
    assert reason in line
    assert PASSWORD not in line
    assert not (tmp_path / "state" / "profiles.sqlite").exists()  # nothing ran, nothing was written


def test_an_unset_password_variable_is_named_in_one_line(
    write_sync, make_warehouse, production_home: Path, database: str
) -> None:

    write_sync(user_sync(make_warehouse(USERS_SQL)))
    env = _instance_env(production_home, database)
    del env["DAGSTER_PG_PASSWORD"]

    result = subprocess.run(
        [sys.executable, "-m", "wsync_dagster.cli", "run", "crm_users"],
        cwd=REPO,
        env={k: v for k, v in {**os.environ, **env}.items() if k != "DAGSTER_PG_PASSWORD"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "postgres_db.password" in line and '"DAGSTER_PG_PASSWORD" which is not set' in line
