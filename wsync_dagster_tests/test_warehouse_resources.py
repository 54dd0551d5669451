"""Each connection is a Dagster resource, shared by its syncs: secrets as EnvVar, opened by runs, sensors and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, EnvVar, build_sensor_context

from wsync_dagster.cli import main
from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.defs.assets import mapped_key
from wsync_dagster.defs.warehouses import RESOURCE_CLASSES, WarehouseResource, warehouse_key
from wsync_dagster.modes.ranges import range_key
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster.warehouses import WarehouseError
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
    config = {"path": str(other)}
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


ORDERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.orders (customer_id VARCHAR, email VARCHAR, seq BIGINT);
INSERT INTO crm.orders VALUES ('C001', 'ada@example.com', 1), ('C002', 'bo@example.com', 2);
"""
OTHER_ORDERS_SQL = ORDERS_SQL.replace("('C002', 'bo@example.com', 2)", "('C002', 'bo@example.com', 9)")


def _orders_sync(name: str, connection: dict) -> dict:
    """A user sync over crm.orders in ranges of seq, its sensor looking every hour."""
    return {
        "name": name,
        "data_type": "user",
        "connection": connection,
        "data_model": {"sql": "SELECT customer_id, email, seq FROM crm.orders"},
        "mapping": [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "column", "column": "email", "field": "user_identities.email"},
            {"type": "ignore", "column": "seq"},
        ],
        "sync": {
            "mode": "incremental",
            "iterator": "seq",
            "iterator_type": "integer",
            "schedule": "interval",
            "frequency": "hourly",
            "start": "2024-01-01T00:00:00Z",
        },
    }


def _warehouse_keys(defs) -> set[str]:
    return {key for key, resource in defs.resources.items() if isinstance(resource, WarehouseResource)}


def test_syncs_on_one_connection_share_one_warehouse_resource_and_another_connection_has_its_own(
    write_sync, make_warehouse
):
    """Equal connections in two sync files are one resource, which both syncs' assets and sensors require."""
    shared = {"type": "duckdb", "path": str(make_warehouse(ORDERS_SQL))}
    other = {"type": "duckdb", "path": str(make_warehouse(ORDERS_SQL, name="other.duckdb"))}
    specs = [
        load_sync_file(write_sync(_orders_sync(name, connection)))
        for name, connection in (("crm_orders", shared), ("crm_refunds", dict(shared)), ("erp_orders", other))
    ]

    defs = code_location()

    assert len(_warehouse_keys(defs)) == 2
    crm_orders, crm_refunds, erp_orders = (
        defs.resolve_assets_def(mapped_key(spec)).required_resource_keys & _warehouse_keys(defs) for spec in specs
    )
    assert crm_orders == crm_refunds != erp_orders
    assert len(crm_orders) == len(erp_orders) == 1
    for spec in specs:
        sensor = defs.resolve_sensor_def(f"{spec.name}_sensor")
        assert sensor.required_resource_keys == {warehouse_key(spec)}


def test_a_connection_name_is_the_resource_key_of_every_sync_that_gives_it(write_sync, make_warehouse):
    """`connection.name: crm_warehouse` in two files: one resource of that key, the UI's name for it."""
    connection = {"type": "duckdb", "path": str(make_warehouse(ORDERS_SQL)), "name": "crm_warehouse"}
    for name in ("crm_orders", "crm_refunds"):
        write_sync(_orders_sync(name, connection))

    defs = code_location()

    assert _warehouse_keys(defs) == {"crm_warehouse"}
    for name in ("crm_orders", "crm_refunds"):
        assert "crm_warehouse" in defs.resolve_assets_def(AssetKey([name, "mapped_batches"])).required_resource_keys


def test_two_connections_under_one_name_are_refused_naming_both_files(write_sync, make_warehouse, capsys):
    """The second file is not loaded, in one line naming both files; the first sync still loads and runs."""
    first = write_sync(
        _orders_sync("crm_orders", {"type": "duckdb", "path": str(make_warehouse(ORDERS_SQL)), "name": "crm"})
    )
    other = make_warehouse(ORDERS_SQL, name="other.duckdb")
    second = write_sync(_orders_sync("erp_orders", {"type": "duckdb", "path": str(other), "name": "crm"}))
    line = (
        f"{second}: connection.name: 'crm' already names a different connection in {first}; give the same "
        "connection keys in both files, or another name"
    )

    assert main(["validate"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"✗ {line}"]
    assert "✓ crm_orders" in out
    defs = code_location()
    assert _warehouse_keys(defs) == {"crm"}
    assert defs.resolve_assets_def(AssetKey(["invalid_sync_files", "erp_orders_yaml"])) is not None
    # Specs put together without the folder's check meet the same line.
    with pytest.raises(ValueError) as error:
        build_definitions([load_sync_file(first), load_sync_file(second)])
    assert str(error.value) == line


def test_a_failing_connection_says_the_same_line_in_a_run_its_sensor_and_wsync_preview_and_validate(
    write_sync, make_warehouse, capsys
):
    """Every path opens the warehouse through the connection's resource, so a bad connection reads alike."""
    missing = make_warehouse(ORDERS_SQL).with_name("missing.duckdb")
    path = write_sync(_orders_sync("crm_orders", {"type": "duckdb", "path": str(missing)}))
    line = f"{path}: connection.path: the DuckDB warehouse file {missing} does not exist"
    spec = load_sync_file(path)
    defs = build_definitions([spec])

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("crm_orders_ranges", [range_key(1, 2)])
        run = defs.resolve_job_def(sync_job_name(spec)).execute_in_process(
            partition_key=range_key(1, 2), instance=instance, raise_on_error=False
        )
        assert not run.success
        assert f"WarehouseError: {line}\n" in _messages(run)

        sensor = defs.resolve_sensor_def("crm_orders_sensor")
        with pytest.raises(WarehouseError) as error:
            sensor(build_sensor_context(instance=instance, resources=defs.resources))
        assert str(error.value) == line

    capsys.readouterr()  # the run's own log
    assert main(["preview", "crm_orders"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"wsync preview: {line}"]
    assert main(["validate"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"✗ crm_orders: {line}"]


def test_the_sensor_reads_the_warehouse_its_resource_names(write_sync, make_warehouse):
    """A resource pointed at another file (as a deployment's resource config may) is what the sensor reads."""
    spec = load_sync_file(
        write_sync(_orders_sync("crm_orders", {"type": "duckdb", "path": str(make_warehouse(ORDERS_SQL))}))
    )
    other = make_warehouse(OTHER_ORDERS_SQL, name="other.duckdb")
    defs = build_definitions([spec])
    sensor = defs.resolve_sensor_def("crm_orders_sensor")

    with DagsterInstance.ephemeral() as instance:
        own = sensor(build_sensor_context(instance=instance, resources=defs.resources))
        elsewhere = sensor(
            build_sensor_context(
                instance=instance,
                resources={warehouse_key(spec): RESOURCE_CLASSES["duckdb"](path=str(other))},
            )
        )

    assert [request.partition_key for request in own.run_requests] == [range_key(1, 2)]
    assert [request.partition_key for request in elsewhere.run_requests] == [range_key(1, 9)]
