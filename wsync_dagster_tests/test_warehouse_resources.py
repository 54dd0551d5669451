"""Each sync's warehouse is a Dagster resource: configured from its connection, secrets as EnvVar, read by runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterInstance, EnvVar

from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.defs.assets import mapped_key
from wsync_dagster.defs.warehouses import warehouse_key
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL, code_location, user_sync, users_sync
from wsync_dagster_tests.engines import start
from wsync_dagster_tests.engines.postgres import PASSWORD_VARIABLE, SERVER, PostgresEngine

SECRET = "planted-resource-s3cret-7f3a"
PG_USERS = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id text, email text, plan text, updated_at timestamp);
INSERT INTO crm.users VALUES ('P1', 'pat@example.com', 'pro', '2024-01-01 10:00');
"""
PG_SQL = "SELECT customer_id, email, plan, updated_at FROM crm.users"


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresEngine]:
    engine = start("postgres", tmp_path)
    yield next(engine)
    engine.close()


def _create_users(engine: PostgresEngine) -> None:
    with psycopg2.connect(dbname=engine.database, **SERVER) as connection, connection.cursor() as cursor:
        cursor.execute(PG_USERS)
    connection.close()


def _run(spec, partition: str, **run_config):
    """One partition of the sync's job, as the code location defines it, in this process."""
    job = build_definitions([spec]).resolve_job_def(sync_job_name(spec))
    return job.execute_in_process(
        partition_key=partition,
        instance=DagsterInstance.ephemeral(),
        run_config=run_config or None,
        raise_on_error=False,
    )


def _messages(result) -> str:
    """Every message and error of a run, as a user would read them in its log."""
    lines = []
    for event in result.all_events:
        lines.append(event.message or "")
        failure = event.step_failure_data if event.is_step_failure else None
        if failure is not None and failure.error is not None:
            error = failure.error
            while error is not None:
                lines.append(error.message)
                error = error.cause
    return "\n".join(lines)


def test_definitions_hold_one_warehouse_resource_per_sync_with_secrets_as_env_vars(
    write_sync, make_warehouse, postgres, monkeypatch
):
    """The code location registers a resource per sync, typed by engine; a password is an EnvVar, by name."""
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    specs = [
        load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL)))),
        load_sync_file(write_sync(users_sync(postgres.connection(), PG_SQL))),
    ]

    defs = code_location()

    duckdb_resource, postgres_resource = (defs.resources[warehouse_key(spec)] for spec in specs)
    assert type(duckdb_resource).__name__ == "DuckDBWarehouseResource"
    assert type(postgres_resource).__name__ == "PostgresWarehouseResource"
    assert postgres_resource.host == SERVER["host"]
    assert postgres_resource.database == postgres.database
    assert isinstance(postgres_resource.password, EnvVar)
    assert postgres_resource.password.env_var_name == PASSWORD_VARIABLE
    assert SECRET not in repr(postgres_resource)
    # Each sync's mapped asset reads through its own warehouse resource.
    for spec in specs:
        assert warehouse_key(spec) in defs.resolve_assets_def(mapped_key(spec)).required_resource_keys


def test_a_duckdb_run_reads_the_warehouse_its_resource_config_names(write_sync, make_warehouse):
    """Run config that points the resource at another DuckDB file makes the run read that file."""
    spec = load_sync_file(write_sync(user_sync(make_warehouse(USERS_SQL))))
    other = make_warehouse(
        USERS_SQL.replace("'C001', 'ada@example.com'", "'C009', 'zed@example.com'"), name="other.duckdb"
    )

    # Run config replaces the resource's whole config, as the launchpad does.
    config = {"sync_file": str(spec.source_file), "path": str(other)}
    result = _run(spec, "2024-01-01", resources={warehouse_key(spec): {"config": config}})

    assert result.success, _messages(result)
    with open_profile_store(profile_store_url()) as store:
        assert store.profile("customer_id", "C009")["identities"]["email"] == "zed@example.com"
        assert store.profile("customer_id", "C001") is None


def test_a_postgres_run_reads_through_its_resource_and_never_logs_the_password(
    write_sync, postgres, monkeypatch
):
    """The password variable is read when the run opens the connection; its value is in no run event."""
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    _create_users(postgres)
    spec = load_sync_file(write_sync(users_sync(postgres.connection(), PG_SQL)))

    result = _run(spec, "2024-01-01")

    assert result.success, _messages(result)
    assert SECRET not in _messages(result)
    with open_profile_store(profile_store_url()) as store:
        assert store.profile("customer_id", "P1")["identities"]["email"] == "pat@example.com"


def test_a_run_whose_password_variable_is_unset_fails_naming_the_file_field_and_variable(
    write_sync, postgres, monkeypatch
):
    """Dagster does not resolve the variable: the reader does, and its error names the sync file."""
    _create_users(postgres)
    path = write_sync(users_sync(postgres.connection(), PG_SQL))
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)

    result = _run(load_sync_file(path), "2024-01-01")

    assert not result.success
    assert f"{path}: connection.password: environment variable {PASSWORD_VARIABLE} is not set" in _messages(
        result
    )
    with open_profile_store(profile_store_url()) as store:
        assert store.profile("customer_id", "P1") is None
