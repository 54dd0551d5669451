"""The `databricks` warehouse: its SQL on a local Spark session standing in for a Databricks SQL warehouse.

What is real: the connection model, the reader and the SQL it sends (session settings, zero-row probe,
the window with named parameter markers and typed bounds serialized by databricks-sql-connector), the
read-only check in sqlglot's `databricks` dialect, and Spark SQL running all of it. What stands in:
a local SparkSession for the SQL warehouse, reached through a DB-API connection put in place of
`databricks.sql.connect` (wsync_dagster_tests/engines/databricks_sql_on_local_spark.py).

Why not the connector against a local Spark Thrift server in HTTP mode (tried with pyspark 4.3's
HiveThriftServer2 over HTTPS, databricks-sql-connector 4.9): the connector sends its token as
`Authorization: Bearer …`, and the Thrift server's HTTP servlet decodes every Authorization header as
Basic, so each OpenSession fails with HTTP 500 ("Illegal base64 character 20"), which the connector
retries for up to 15 minutes. With a Basic header forced in (the connector's `credentials_provider`),
OpenSession succeeds but the server answers protocol version 9 (HIVE_CLI_SERVICE_PROTOCOL_V10), and
the connector refuses any server below SPARK_CLI_SERVICE_PROTOCOL_V2 ("expected server to use a
protocol version >= SPARK_CLI_SERVICE_PROTOCOL_V2, instead got: 9"). Named parameters and Arrow
result sets are Databricks extensions of that protocol as well, so no query could run that way.

Refused logins and an http_path to no warehouse are tested through the real connector against an
HTTPS server on 127.0.0.1:443 standing in for Databricks' front end (the connector does not retry
401, 403 or 404). An unreachable host is not tested: the connector retries a refused connection for
up to 15 minutes (`_retry_stop_after_attempts_duration`, 900 s by default), and wsync keeps that
default, which also covers a SQL warehouse that is still starting. Databricks' query timeout
(STATEMENT_TIMEOUT) cannot run on Spark.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from wsync_dagster.cli import main
from wsync_dagster.data_model import windowed_sql
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.iterators import IteratorWindow
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.warehouses import open_warehouse
from wsync_dagster_tests.engines.databricks_sql_on_local_spark import (
    TOKEN,
    TOKEN_VARIABLE,
    LocalSparkEngine,
    connection,
    standing_in_for_databricks,
)

# One row a day at 10:00 UTC, 1-3 January 2024, each iterator type in its own column.
DAYS = [datetime(2024, 1, day, 10, tzinfo=UTC) for day in (1, 2, 3)]
ITERATORS = pa.table(
    {
        "customer_id": ["C1", "C2", "C3"],
        "at_ntz": pa.array([d.replace(tzinfo=None) for d in DAYS], pa.timestamp("us")),
        "at_tz": pa.array(DAYS, pa.timestamp("us", tz="UTC")),
        "on_day": pa.array([d.date() for d in DAYS], pa.date32()),
        "at_ms": pa.array([int(d.timestamp() * 1000) for d in DAYS], pa.int64()),
        "at_s": pa.array([int(d.timestamp()) for d in DAYS], pa.int64()),
    }
)


@pytest.fixture
def spark_databricks() -> Iterator[LocalSparkEngine]:
    with standing_in_for_databricks() as engine:
        yield engine


# The HTTP status Databricks' front end answers for each http_path of the stand-in.
FRONT_DOOR = {"/sql/1.0/warehouses/refuses-token": 403, "/sql/1.0/warehouses/gone": 404}


@dataclass
class FrontDoor:
    """The stand-in's certificate, and the Authorization headers it received."""

    certificate: Path
    received: list[str]


@pytest.fixture(scope="session")
def front_door(tmp_path_factory) -> Iterator[FrontDoor]:
    """An HTTPS server on 127.0.0.1:443, standing in for Databricks' front end: it refuses every request.

    The connector always speaks HTTPS on port 443; the server's self-signed certificate is trusted
    through SSL_CERT_FILE.
    """
    folder = tmp_path_factory.mktemp("front-door")
    _self_signed_certificate(folder)
    received: list[str] = []

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.headers.get("Authorization", ""))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(FRONT_DOOR.get(self.path.split("?")[0], 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 443), Refuse)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield FrontDoor(folder / "cert.pem", received)
    server.shutdown()
    server.server_close()


def _self_signed_certificate(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _sync(sql: str = "SELECT * FROM crm.users", **connection_keys) -> dict:
    return {
        "name": "users",
        "data_type": "user",
        "connection": {**connection(), **connection_keys},
        "data_model": {"sql": sql},
        "sync": {"mode": "full"},
    }


@pytest.mark.parametrize(
    ("iterator", "iterator_type"),
    [
        ("at_ntz", "timestamp"),
        ("at_tz", "timestamp"),
        ("on_day", "date"),
        ("at_ntz", "date"),
        ("at_ms", "timestamp_unixtime_ms"),
        ("at_s", "timestamp_unixtime_s"),
    ],
)
def test_the_window_sql_for_each_iterator_type_runs_on_local_spark_standing_in_for_databricks(
    spark_databricks, write_sync, iterator, iterator_type
):
    spark_databricks.load({"crm.users": ITERATORS})
    # A '?' in the model is text, not a parameter marker.
    spec = load_sync_file(write_sync(_sync("SELECT *, 'why?' AS note FROM crm.users")))
    window = IteratorWindow(datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))
    warehouse = open_warehouse(spec)
    try:
        query = windowed_sql(spec.data_model.sql, iterator, warehouse.dialect)
        batches = list(warehouse.read_batches(query, window.bounds(iterator_type)))
        rows = pa.Table.from_batches(batches, warehouse.columns(spec.data_model.sql))
    finally:
        warehouse.close()

    assert rows.column("customer_id").to_pylist() == ["C2"]


def test_a_model_in_databricks_sql_passes_the_read_only_check_and_runs_on_local_spark_standing_in_for_databricks(
    spark_databricks, write_sync, capsys
):
    spark_databricks.load({"crm.users": ITERATORS})
    sql = """
        WITH ranked AS (
            SELECT `customer_id`, at_ms::string AS at_text, date_trunc('MONTH', at_ntz) AS month,
                   array(on_day, date_add(on_day, 1)) AS days
            FROM crm.users
            QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY at_tz DESC) = 1
        )
        SELECT customer_id, at_text, month, days FROM ranked WHERE customer_id RLIKE '^C[12]$'
    """
    write_sync(_sync(sql))

    assert main(["run", "users"]) == 0
    assert main(["profile", "--identity", "customer_id=C2", "--json"]) == 0

    out = capsys.readouterr().out
    assert '"at_text": "1704189600000"' in out
    assert '"month": "2024-01-01 00:00:00+00"' in out  # date_trunc gives a TIMESTAMP, in UTC
    assert '"days": ["2024-01-02", "2024-01-03"]' in out


@pytest.mark.parametrize(
    "statement",
    [
        "MERGE INTO crm.users t USING crm.staged s ON t.customer_id = s.customer_id WHEN MATCHED THEN DELETE",
        "INSERT OVERWRITE crm.users SELECT * FROM crm.staged",
        "CREATE OR REPLACE TABLE crm.copy AS SELECT * FROM crm.users",
        "OPTIMIZE crm.users ZORDER BY (customer_id)",
        "COPY INTO crm.users FROM 's3://bucket/users' FILEFORMAT = PARQUET",
    ],
)
def test_databricks_statements_that_write_are_refused_by_the_read_only_check(write_sync, statement):
    path = write_sync(_sync(statement))

    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)

    assert f"{path}: data_model.sql: the data model must be" in str(error.value)


def test_a_missing_table_fails_in_one_line_naming_the_warehouse_without_the_token_local_spark_standing_in(
    spark_databricks, write_sync, capsys
):
    write_sync(_sync("SELECT * FROM crm.nobody"))

    assert main(["validate"]) == 1

    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    [line] = captured.err.strip().splitlines()
    assert line.startswith("✗ users: ")
    assert (
        "data_model.sql: Databricks at dbc-local-spark.cloud.databricks.com/sql/1.0/warehouses/"
        "local-spark cannot run it: [TABLE_OR_VIEW_NOT_FOUND]"
    ) in line
    assert "crm`.`nobody" in line or "crm.nobody" in line


def test_a_missing_schema_fails_the_run_in_one_line_and_writes_nothing_local_spark_standing_in(
    spark_databricks, write_sync, store_bytes, capsys
):
    write_sync(_sync("SELECT * FROM nowhere.users"))
    before = store_bytes()

    assert main(["run", "users"]) == 1

    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    [line] = captured.err.strip().splitlines()
    assert "cannot run it: [TABLE_OR_VIEW_NOT_FOUND]" in line and "nowhere" in line
    assert store_bytes() == before


@pytest.mark.parametrize(
    ("http_path", "meaning"),
    [
        ("/sql/1.0/warehouses/refuses-token", "HTTP 403, the access token was refused or has no access"),
        ("/sql/1.0/warehouses/gone", "HTTP 404, no SQL warehouse or cluster at that http_path"),
    ],
)
def test_a_refused_connection_fails_in_one_line_without_the_token_https_server_standing_in_for_databricks(
    front_door, write_sync, store_bytes, monkeypatch, capsys, http_path, meaning
):
    monkeypatch.setenv("SSL_CERT_FILE", str(front_door.certificate))
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    write_sync(_sync(server_hostname="127.0.0.1", http_path=http_path))
    before = store_bytes()

    assert main(["validate"]) == 1
    assert main(["run", "users"]) == 1

    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    validate_line, run_line = captured.err.strip().splitlines()
    where = f"connection: cannot connect to Databricks at 127.0.0.1{http_path}: {meaning}"
    assert validate_line.startswith("✗ users: ") and where in validate_line
    assert where in run_line
    assert store_bytes() == before
    assert front_door.received[-1] == f"Bearer {TOKEN}"  # the token went to the warehouse, and only there


def test_an_unset_token_variable_names_the_field_and_the_variable(write_sync, capsys):
    sync = _sync()
    sync["connection"]["access_token"] = {"env": "WSYNC_TEST_UNSET_DATABRICKS_TOKEN"}
    write_sync(sync)

    assert main(["validate"]) == 1

    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("✗ users: ")
    assert (
        "connection.access_token: environment variable WSYNC_TEST_UNSET_DATABRICKS_TOKEN is not set" in line
    )


def test_a_token_written_in_the_sync_file_is_refused_without_echoing_it(write_sync):
    sync = _sync()
    sync["connection"]["access_token"] = TOKEN
    path = write_sync(sync)

    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)

    assert f"{path}: connection.access_token: a secret is never written in a sync file" in str(error.value)
    assert TOKEN not in str(error.value)


def test_source_assets_are_named_catalog_schema_table_with_the_connection_defaults(write_sync):
    sql = "SELECT * FROM users JOIN web.events USING (customer_id) JOIN lake.crm.plans USING (plan)"
    spec = load_sync_file(write_sync(_sync(sql, catalog="main", schema="crm")))

    assert sorted(key.path for key in source_keys(spec)) == [
        ["warehouse", "lake", "crm", "plans"],
        ["warehouse", "main", "crm", "users"],
        ["warehouse", "main", "web", "events"],
    ]
