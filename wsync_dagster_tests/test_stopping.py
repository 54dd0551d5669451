"""Stopping and waiting are bounded: a stop signal cancels the warehouse query under way, a read has a
query_timeout, a lock wait on the PostgreSQL store says who it waits for and gives up at WSYNC_LOCK_TIMEOUT,
and a second run of the same sync waits for the first."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psutil
import psycopg2
import pytest

from wsync_dagster.cli import main
from wsync_dagster.store import open_profile_store
from wsync_dagster.store.postgres import describe
from wsync_dagster_tests.conftest import USERS_SQL, pg_store_url, user_sync, users_sync
from wsync_dagster_tests.engines import start
from wsync_dagster_tests.engines.postgres import SERVER, PostgresEngine
from wsync_dagster_tests.kill_trials import WatchedRun

PARTITION = "2024-01-01"
# A stopped run ends well within this; the slow queries below would run for hours (DuckDB) or minutes.
STOP_WITHIN_S = 20.0
RUN_TIMEOUT_S = 120.0
STOPS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
# DuckDB: a cross join of 9·10¹² rows, counted before the first row of the model comes out.
SLOW_DUCKDB_SQL = (
    "SELECT customer_id, email, first_name, plan, updated_at FROM crm.users "
    "WHERE (SELECT count(*) FROM range(3000000) AS a, range(3000000) AS b WHERE a.range + b.range = -1) = 0"
)
# PostgreSQL: pg_sleep is refused in a data model, but a function of the warehouse's own may be as slow;
# it sleeps crm.pace's seconds for each row, read afresh each time, so a test can speed it up.
USERS_TABLE = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id text, email text, plan text, updated_at timestamp);
INSERT INTO crm.users VALUES
    ('C1', 'ada@example.com', 'pro', '2024-01-01 10:00'),
    ('C2', 'bob@example.com', 'free', '2024-01-01 11:00'),
    ('C3', 'cy@example.com', NULL, '2024-01-02 09:00');
CREATE TABLE crm.pace (seconds double precision);
INSERT INTO crm.pace VALUES (%s);
CREATE FUNCTION crm.slow_down(customer text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep((SELECT seconds FROM crm.pace));
    RETURN customer IS NOT NULL;
END $$;
"""
SLOW_PG_SQL = "SELECT customer_id, email, plan, updated_at FROM crm.users WHERE crm.slow_down(customer_id)"


def _env(**extra: str) -> dict[str, str]:
    """This test's WSYNC_* settings, and an ephemeral Dagster instance for each run."""
    env = {**os.environ, **extra}
    env.pop("DAGSTER_HOME", None)
    return env


def _run(sync: str, tmp_path: Path, **extra: str) -> WatchedRun:
    return WatchedRun(sync, _env(**extra), tmp_path / "state" / "profiles.sqlite", "--partition", PARTITION)


def _profiles(tmp_path: Path) -> int:
    path = tmp_path / "state" / "profiles.sqlite"
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT count(*) FROM profiles").fetchone()[0]


def _wait(condition, timeout: float = RUN_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _reading(run: WatchedRun, warehouse: Path) -> bool:
    """The run's process has the warehouse file open and burns CPU on the query."""
    process = psutil.Process(run.process.pid)
    if not _wait(
        lambda: any(f.path == str(warehouse) for f in process.open_files()) or run.process.poll() is not None
    ):
        return False
    busy_from = sum(process.cpu_times()[:2])
    return _wait(lambda: sum(process.cpu_times()[:2]) - busy_from > 1.0)


@pytest.fixture(params=["postgres", "redshift"])
def engine(request, tmp_path: Path) -> Iterator[PostgresEngine]:
    """The local PostgreSQL server through each read path: COPY (postgres), a server-side cursor (redshift)."""
    yield from start(request.param, tmp_path)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresEngine]:
    """The local PostgreSQL server through its COPY read path."""
    yield from start("postgres", tmp_path)


def _execute(engine: PostgresEngine, sql: str, params: tuple = ()) -> None:
    with psycopg2.connect(dbname=engine.database, **SERVER) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params or None)
    connection.close()


def _sleeping_queries(engine: PostgresEngine) -> int:
    """Sessions of the warehouse's database sleeping in pg_sleep: the slow model's query at work."""
    with psycopg2.connect(dbname=engine.database, **SERVER) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    connection.close()
    return count


def _slow_pg_sync(engine: PostgresEngine, write_sync, pace_s: float, **connection) -> Path:
    _execute(engine, USERS_TABLE, (pace_s,))
    return write_sync(users_sync({**engine.connection(), **connection}, SLOW_PG_SQL))


# ---- stop signals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", STOPS, ids=list(STOPS))
def test_a_stop_signal_during_a_slow_duckdb_query_ends_the_run_within_seconds_with_exit_130(
    stop, make_warehouse, write_sync, tmp_path
):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse, data_model={"sql": SLOW_DUCKDB_SQL}))
    run = _run("crm_users", tmp_path)
    assert _reading(run, warehouse), run.output

    run.process.send_signal(STOPS[stop])
    code = run.finish(STOP_WITHIN_S)

    assert code == 130, run.output
    assert run.lines[-1].startswith(
        f"wsync run: crm_users: interrupted before the delivery of {PARTITION} committed: nothing of it is in "
        "the profile store"
    ), run.output
    assert "Traceback" not in run.output
    assert _profiles(tmp_path) == 0


@pytest.mark.parametrize("stop", STOPS, ids=list(STOPS))
def test_a_stop_signal_during_a_slow_postgres_query_cancels_it_on_the_server_and_ends_the_run_with_exit_130(
    stop, engine, write_sync, tmp_path
):
    _slow_pg_sync(engine, write_sync, pace_s=300)
    run = _run("users", tmp_path)
    assert _wait(lambda: _sleeping_queries(engine) > 0 or run.process.poll() is not None), run.output
    assert _sleeping_queries(engine) == 1, run.output

    run.process.send_signal(STOPS[stop])
    code = run.finish(STOP_WITHIN_S)

    assert code == 130, run.output
    assert run.lines[-1].startswith(
        f"wsync run: users: interrupted before the delivery of {PARTITION} committed: nothing of it is in the "
        "profile store"
    ), run.output
    assert "Traceback" not in run.output
    # Cancelled on the server, not left sleeping there by a client that went away.
    assert _wait(lambda: _sleeping_queries(engine) == 0, timeout=5.0)
    assert _profiles(tmp_path) == 0


# ---- query_timeout -------------------------------------------------------------------------------------


def test_a_duckdb_read_past_query_timeout_fails_with_one_line_naming_the_connection_and_the_key(
    make_warehouse, write_sync, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    warehouse = make_warehouse(USERS_SQL)
    write_sync(
        user_sync(
            warehouse,
            connection={"type": "duckdb", "path": str(warehouse), "query_timeout": "1s"},
            data_model={"sql": SLOW_DUCKDB_SQL},
        )
    )

    assert main(["run", "crm_users", "--partition", PARTITION]) == 1

    [line] = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("  ")]
    assert line.startswith("wsync run: crm_users: run "), line
    assert line.endswith(
        f"failed: connection.query_timeout: the data model's query on the duckdb warehouse {warehouse} ran "
        "longer than 1s and was cancelled; raise query_timeout or make the model faster"
    ), line
    assert _profiles(tmp_path) == 0


def test_a_postgres_read_past_query_timeout_is_cancelled_by_the_server_with_one_line_naming_the_key(
    engine, write_sync, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    _slow_pg_sync(engine, write_sync, pace_s=300, query_timeout="1s")

    assert main(["run", "users", "--partition", PARTITION]) == 1

    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if not line.startswith("  ")] or [err]
    assert line.endswith(
        f"failed: connection.query_timeout: the data model's query on the {engine.connection_type} warehouse "
        f"127.0.0.1:5432/{engine.database} ran longer than 1s and was cancelled; raise query_timeout or make "
        "the model faster"
    ), line
    assert _sleeping_queries(engine) == 0
    assert _profiles(tmp_path) == 0


# ---- waiting -------------------------------------------------------------------------------------------


def test_a_lock_held_on_the_postgres_store_is_said_and_given_up_at_wsync_lock_timeout(
    make_warehouse, write_sync, pg_store_database, tmp_path
):
    url = pg_store_url(pg_store_database)
    open_profile_store(url).close()
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    # What a DBA's VACUUM FULL or ALTER TABLE holds while it works.
    holder = psycopg2.connect(url, application_name="dba maintenance")
    pid = holder.get_backend_pid()
    try:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE")
        run = _run("crm_users", tmp_path, WSYNC_PROFILE_STORE=url, WSYNC_LOCK_TIMEOUT="3s")
        code = run.finish(RUN_TIMEOUT_S)
    finally:
        holder.close()

    assert code == 1, run.output
    waiting = [line for line in run.lines if "waiting for a lock" in line]
    assert len(waiting) == 1, run.output
    assert waiting[0].startswith(
        f"  waiting for a lock on the profile store {describe(url)}, held by pid {pid} (dba maintenance, "
        "in a transaction since "
    ), waiting
    assert waiting[0].endswith("; giving up after 3s (WSYNC_LOCK_TIMEOUT)")
    assert run.lines[-1].startswith("wsync run: crm_users: run "), run.output
    assert f"failed: profile store {describe(url)}: waited 3s for a lock held by pid {pid} (" in run.lines[-1]
    assert run.lines[-1].endswith("and gave up (WSYNC_LOCK_TIMEOUT); nothing was written")
    with closing(open_profile_store(url)) as store:
        assert store.delivered_partitions("crm_users", "production") == []


def test_the_same_sync_started_twice_at_once_runs_one_after_the_other_and_loses_nothing(
    postgres, write_sync, tmp_path
):
    engine = postgres
    _slow_pg_sync(engine, write_sync, pace_s=2)
    first = _run("users", tmp_path)
    assert _wait(lambda: _sleeping_queries(engine) > 0 or first.process.poll() is not None), first.output

    second = _run("users", tmp_path)
    assert second.wait_for_text("waiting for the run of users already under way"), second.output
    _execute(engine, "UPDATE crm.pace SET seconds = 0")

    assert first.finish(RUN_TIMEOUT_S) == 0, first.output
    assert second.finish(RUN_TIMEOUT_S) == 0, second.output
    [waiting] = [line for line in second.lines if "waiting for the run" in line]
    assert waiting.startswith(
        f"  waiting for the run of users already under way (pid {first.process.pid} on "
    )
    assert waiting.endswith("to end; giving up after 30m (WSYNC_LOCK_TIMEOUT)")
    assert "no mapped batches" not in first.output + second.output
    assert _profiles(tmp_path) == 2
