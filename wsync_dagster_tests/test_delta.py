"""The `delta` warehouse: Delta tables written with deltalake, on local paths and on an S3 object store.

What is real: deltalake (delta-rs) reading and writing Delta tables, DuckDB running the model, the
object-store client speaking S3 over HTTP. What stands in: moto's S3 server (on loopback) for Amazon S3.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator

import boto3
import httpx
import pytest
from deltalake import write_deltalake
from moto.server import ThreadedMotoServer

from wsync_dagster.cli import main
from wsync_dagster.data_model import DataModelError
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.warehouses import WarehouseError, open_warehouse
from wsync_dagster_tests.test_conformance import EVENTS, USER_COLUMNS, USERS

SECRET = "planted-s3-secret-0d1e2f"


def _user_sync(connection: dict, sql: str = f"SELECT {USER_COLUMNS} FROM crm.users") -> dict:
    return {
        "name": "users",
        "data_type": "user",
        "connection": connection,
        "data_model": {"sql": sql},
        "sync": {"mode": "full"},
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, standing in for Amazon S3; one for the session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_lake(s3_endpoint: str, request, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fresh bucket; the sync file's storage_options, the secret key read from the environment."""
    bucket = request.node.name.lower().replace("_", "-")[:50]
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="wsync",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    monkeypatch.setenv("WSYNC_TEST_S3_KEY_ID", "wsync")
    monkeypatch.setenv("WSYNC_TEST_S3_SECRET", SECRET)
    return {
        "bucket": bucket,
        "storage_options": {
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": {"env": "WSYNC_TEST_S3_KEY_ID"},
            "AWS_SECRET_ACCESS_KEY": {"env": "WSYNC_TEST_S3_SECRET"},
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "max_retries": "1",
            "retry_timeout": "5s",
        },
    }


def _resolved(options: dict) -> dict:
    return {
        key: os.environ[value["env"]] if isinstance(value, dict) else value for key, value in options.items()
    }


@pytest.fixture
def s3_refuses_every_key(s3_endpoint: str) -> Iterator[None]:
    """Turn on moto's authentication: it knows no access key, so it refuses every request."""
    httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    yield
    httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def _assert_one_line_without_the_secret(code: int, captured, expected: str) -> str:
    assert code == 1
    assert SECRET not in captured.out + captured.err
    [line] = captured.err.strip().splitlines()
    assert expected in line
    return line


def test_a_sync_reads_delta_tables_on_s3_with_the_secret_from_the_environment_moto_standing_in_for_s3(
    s3_lake, write_sync, tmp_path, capsys
):
    options = s3_lake["storage_options"]
    write_deltalake(f"s3://{s3_lake['bucket']}/crm/users", USERS, storage_options=_resolved(options))
    connection = {
        "type": "delta",
        "tables": {"crm.users": f"s3://{s3_lake['bucket']}/crm/users"},
        "storage_options": options,
    }
    write_sync(_user_sync(connection))

    assert main(["run", "users"]) == 0
    assert main(["profile", "--identity", "customer_id=C1", "--json"]) == 0
    assert SECRET not in (captured := capsys.readouterr()).out + captured.err
    assert '"plan": "pro"' in captured.out and '"tags": ["a", "b"]' in captured.out


def test_refused_s3_credentials_fail_in_one_line_naming_the_table_without_the_secret_moto_standing_in_for_s3(
    s3_lake, s3_refuses_every_key, write_sync, store_bytes, capsys
):
    uri = f"s3://{s3_lake['bucket']}/crm/users"
    write_sync(
        _user_sync(
            {"type": "delta", "tables": {"crm.users": uri}, "storage_options": s3_lake["storage_options"]}
        )
    )

    before = store_bytes()

    code = main(["validate"])

    line = _assert_one_line_without_the_secret(
        code,
        capsys.readouterr(),
        f"connection.tables.crm.users: Delta table at {uri}: cannot be read",
    )
    assert line.startswith("✗ users: ")  # validate names the sync
    assert "403 Forbidden" in line and "InvalidAccessKeyId" in line
    _assert_one_line_without_the_secret(main(["run", "users"]), capsys.readouterr(), "cannot be read")
    assert store_bytes() == before


def test_an_unreachable_object_store_fails_in_one_line_naming_the_endpoint(
    s3_lake, write_sync, store_bytes, capsys
):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    options = {**s3_lake["storage_options"], "AWS_ENDPOINT_URL": nobody}
    write_sync(
        _user_sync(
            {"type": "delta", "tables": {"crm.users": "s3://lake/crm/users"}, "storage_options": options}
        )
    )

    before = store_bytes()

    code = main(["run", "users"])

    line = _assert_one_line_without_the_secret(
        code,
        capsys.readouterr(),
        "connection.tables.crm.users: Delta table at s3://lake/crm/users: cannot be read",
    )
    assert nobody in line and "Connection refused" in line
    assert store_bytes() == before


def test_an_object_store_that_never_answers_times_out_in_one_line(s3_lake, write_sync, store_bytes, capsys):
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    options = {
        **s3_lake["storage_options"],
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "timeout": "1s",
        "max_retries": "0",
    }
    write_sync(
        _user_sync(
            {"type": "delta", "tables": {"crm.users": "s3://lake/crm/users"}, "storage_options": options}
        )
    )

    before = store_bytes()
    try:
        code = main(["run", "users"])
    finally:
        silent.close()
        for connection in accepted:
            connection.close()

    line = _assert_one_line_without_the_secret(
        code, capsys.readouterr(), "Delta table at s3://lake/crm/users: cannot be read"
    )
    assert "operation timed out" in line
    assert store_bytes() == before


def test_a_path_without_a_delta_table_fails_in_one_line_and_writes_nothing(
    write_sync, store_bytes, tmp_path, capsys
):
    write_sync(_user_sync({"type": "delta", "tables": {"crm.users": str(tmp_path / "nothing")}}))
    before = store_bytes()

    assert main(["run", "users"]) == 1

    [line] = capsys.readouterr().err.strip().splitlines()
    assert (
        f"connection.tables.crm.users: Delta table at {tmp_path / 'nothing'}: there is no Delta table there"
        in line
    )
    assert store_bytes() == before


def test_a_model_reading_a_table_the_connection_does_not_name_lists_the_tables_it_names(
    write_sync, tmp_path, capsys
):
    write_deltalake(str(tmp_path / "users"), USERS)
    write_sync(
        _user_sync(
            {"type": "delta", "tables": {"crm.users": str(tmp_path / "users")}}, "SELECT * FROM crm.people"
        )
    )

    assert main(["validate"]) == 1

    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("✗ users: ")
    assert (
        "connection.tables: the data model reads crm.people, which is not one of the Delta tables "
        "of the connection (crm.users)"
    ) in line


def test_an_unset_storage_option_variable_names_the_field_and_the_variable(write_sync, tmp_path, capsys):
    write_deltalake(str(tmp_path / "users"), USERS)
    connection = {
        "type": "delta",
        "tables": {"crm.users": str(tmp_path / "users")},
        "storage_options": {"AWS_SECRET_ACCESS_KEY": {"env": "WSYNC_TEST_UNSET_SECRET"}},
    }
    write_sync(_user_sync(connection))

    assert main(["validate"]) == 1

    assert (
        "connection.storage_options.AWS_SECRET_ACCESS_KEY: environment variable WSYNC_TEST_UNSET_SECRET is not set"
        in capsys.readouterr().err
    )


def test_a_storage_key_written_in_the_sync_file_is_refused_without_echoing_it(write_sync, tmp_path):
    path = write_sync(
        _user_sync(
            {
                "type": "delta",
                "tables": {"crm.users": "az://lake/users"},
                "storage_options": {"azure_storage_account_key": SECRET},
            }
        )
    )

    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)

    assert f"{path}: connection.storage_options: azure_storage_account_key is a secret" in str(error.value)
    assert SECRET not in str(error.value)


def test_tables_are_found_by_the_names_the_sql_uses_with_or_without_schema_and_catalog(
    write_sync, tmp_path, capsys
):
    write_deltalake(str(tmp_path / "users"), USERS)
    write_deltalake(str(tmp_path / "events"), EVENTS)
    connection = {
        "type": "delta",
        "tables": {"lake.crm.users": str(tmp_path / "users"), "events": "../events"},  # beside syncs/
    }
    sql = "SELECT u.customer_id, count(e.id) AS events FROM lake.crm.users u LEFT JOIN events e USING (customer_id) GROUP BY 1"
    write_sync(_user_sync(connection, sql))

    assert main(["run", "users"]) == 0
    assert main(["profile", "--identity", "customer_id=C1", "--json"]) == 0

    assert '"events": 2' in capsys.readouterr().out


def test_source_assets_are_named_by_the_names_the_sql_uses(write_sync, tmp_path):
    connection = {"type": "delta", "tables": {"crm.users": "s3://lake/users", "events": "s3://lake/events"}}
    spec = load_sync_file(
        write_sync(_user_sync(connection, "SELECT * FROM crm.users JOIN events USING (customer_id)"))
    )

    assert [key.path for key in source_keys(spec)] == [
        ["warehouse", "delta", "crm", "users"],
        ["warehouse", "delta", "main", "events"],
    ]


def test_the_delta_reader_reads_no_file_beyond_its_tables(write_sync, tmp_path):
    write_deltalake(str(tmp_path / "users"), USERS)
    (tmp_path / "private.csv").write_text("secret\nplanted\n")
    spec = load_sync_file(
        write_sync(_user_sync({"type": "delta", "tables": {"crm.users": str(tmp_path / "users")}}))
    )
    warehouse = open_warehouse(spec)
    try:
        with pytest.raises((WarehouseError, DataModelError)):
            list(warehouse.read_batches(f"SELECT * FROM read_csv('{tmp_path / 'private.csv'}')"))
    finally:
        warehouse.close()


def test_the_delta_reader_streams_a_large_table_in_batches(write_sync, tmp_path):
    import pyarrow as pa

    rows = 300_000
    write_deltalake(str(tmp_path / "users"), pa.table({"customer_id": pa.array(range(rows), pa.int64())}))
    spec = load_sync_file(
        write_sync(
            _user_sync(
                {"type": "delta", "tables": {"crm.users": str(tmp_path / "users")}},
                "SELECT customer_id FROM crm.users",
            )
        )
    )
    warehouse = open_warehouse(spec)
    try:
        sizes = [batch.num_rows for batch in warehouse.read_batches(spec.data_model.sql, batch_size=50_000)]
    finally:
        warehouse.close()

    assert sum(sizes) == rows and max(sizes) <= 50_000
