"""BigQuery on the bqemulator server: iterator windows per column type, Arrow batches, and connection errors
in one line that names the warehouse (and the sync, in `wsync validate`) and never shows the secret."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetKey

from wsync_dagster.cli import main
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.iterators import IteratorWindow
from wsync_dagster.preview import preview_rows
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster.warehouses.bigquery import BigQueryWarehouse, query_parameters
from wsync_dagster_tests.conftest import users_sync
from wsync_dagster_tests.engines.bigquery import BigQueryEmulator, BigQueryEngine, emulator, stop_emulator
from wsync_dagster_tests.engines.duckdb import DuckDBEngine


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[BigQueryEmulator]:
    """One emulator for the session (the conformance suite shares it), stopped at the end."""
    yield emulator()
    stop_emulator()


@pytest.fixture
def bigquery(bigquery_emulator: BigQueryEmulator) -> BigQueryEngine:
    """A project of this test's own on the emulator."""
    return BigQueryEngine(bigquery_emulator)


def _users(updated_at: pa.Array) -> pa.Table:
    return pa.table({"customer_id": [f"C{i}" for i in range(len(updated_at))], "updated_at": updated_at})


def _sync(connection: dict, sql: str = "SELECT customer_id, updated_at FROM crm.users", **sync) -> dict:
    # Without lookback: these tests read each window by its own bounds.
    return users_sync(connection, sql, historical_start="2023-12-01", **{"lookback": "0s", **sync})


def _customers() -> set[str]:
    store = open_profile_store(profile_store_url())
    try:
        return {c for c in ("C0", "C1", "C2", "C3") if store.profile("customer_id", c) is not None}
    finally:
        store.close()


def _store_bytes(tmp_path: Path) -> bytes:
    return (tmp_path / "state" / "profiles.sqlite").read_bytes()


# Just before, at the start of, at the last microsecond of, and at the end of the day 2024-01-01.
_MOMENTS = [
    datetime(2023, 12, 31, 23, 59, 59, 999999),
    datetime(2024, 1, 1),
    datetime(2024, 1, 1, 23, 59, 59, 999999),
    datetime(2024, 1, 2),
]
_COLUMNS = {
    "DATETIME": pa.array(_MOMENTS, pa.timestamp("us")),
    "TIMESTAMP": pa.array([m.replace(tzinfo=UTC) for m in _MOMENTS], pa.timestamp("us", tz="UTC")),
    "DATE": pa.array([m.date() for m in _MOMENTS], pa.date32()),
}


@pytest.mark.parametrize(
    ("column_type", "iterator_type"),
    [
        ("DATETIME", "timestamp"),
        ("TIMESTAMP", "timestamp"),
        ("DATE", "date"),
        ("DATETIME", "date"),
        ("TIMESTAMP", "date"),
    ],
)
def test_an_iterator_window_reads_rows_from_its_start_up_to_its_end(
    bigquery, write_sync, column_type, iterator_type
):
    connection = bigquery.load({"crm.users": _users(_COLUMNS[column_type])})

    write_sync(_sync(connection, iterator_type=iterator_type, frequency="daily"))
    assert main(["run", "users", "--partition", "2024-01-01"]) == 0

    assert _customers() == {"C1", "C2"}


@pytest.mark.parametrize(
    ("iterator_type", "column_type", "bigquery_type", "start"),
    [
        ("timestamp", pa.timestamp("us"), "DATETIME", datetime(2024, 1, 1, 6)),
        ("timestamp", pa.timestamp("us", tz="UTC"), "TIMESTAMP", datetime(2024, 1, 1, 6, tzinfo=UTC)),
        ("date", pa.date32(), "DATE", date(2024, 1, 1)),
        ("date", pa.timestamp("us"), "DATETIME", datetime(2024, 1, 1)),
        ("date", pa.timestamp("us", tz="UTC"), "TIMESTAMP", datetime(2024, 1, 1, tzinfo=UTC)),
        ("timestamp_unixtime_ms", pa.int64(), "INT64", 1704088800000),
    ],
)
def test_window_bounds_go_to_bigquery_as_the_iterator_columns_own_type(
    iterator_type, column_type, bigquery_type, start
):
    # Real BigQuery refuses to compare a DATETIME column with a TIMESTAMP (the emulator lets it pass).
    window = IteratorWindow(datetime(2024, 1, 1, 6, tzinfo=UTC), datetime(2024, 1, 2, 6, tzinfo=UTC))

    first, last = query_parameters(window.bounds(iterator_type, column_type))

    assert (first.type_, last.type_) == (bigquery_type, bigquery_type)
    assert first.value == start


def load_connection(connection: dict):
    """The typed connection of a sync file's `connection` mapping."""
    from pydantic import TypeAdapter

    from wsync_dagster.spec import Connection

    return TypeAdapter(Connection).validate_python(connection)


def test_a_model_is_read_in_batches_of_at_most_the_batch_size(bigquery):
    ids = pa.array(range(2500), pa.int64())
    bigquery.load({"crm.numbers": pa.table({"id": ids})})
    warehouse = load_connection(bigquery.connection()).open(Path("."))
    try:
        batches = list(warehouse.read_batches("SELECT id FROM crm.numbers ORDER BY id", batch_size=1000))
    finally:
        warehouse.close()

    assert [batch.num_rows for batch in batches] == [1000, 1000, 500]
    assert pa.Table.from_batches(batches).column("id").to_pylist() == list(range(2500))


def test_rows_come_as_rest_pages_when_the_storage_read_api_does_not_serve_them_as_on_the_emulator(
    bigquery, caplog
):
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery_storage_v1
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

    bigquery.load({"crm.numbers": pa.table({"id": pa.array(range(2500), pa.int64())})})
    # The emulator's real gRPC Storage Read API, which reads tables but not query results.
    channel = grpc.insecure_channel(bigquery.server.grpc_endpoint)
    read_client = bigquery_storage_v1.BigQueryReadClient(
        transport=BigQueryReadGrpcTransport(channel=channel, credentials=AnonymousCredentials())
    )
    warehouse = BigQueryWarehouse(bigquery.server.client(bigquery.project), read_client, name="BigQuery test")
    try:
        with caplog.at_level(logging.WARNING, logger="wsync"):
            rows = pa.Table.from_batches(
                list(warehouse.read_batches("SELECT id FROM crm.numbers ORDER BY id", batch_size=1000))
            )
    finally:
        warehouse.close()

    assert rows.column("id").to_pylist() == list(range(2500))
    assert "Storage Read API unavailable, reading REST pages" in caplog.text


def test_unqualified_tables_are_read_from_the_default_dataset(bigquery, write_sync):
    connection = bigquery.load({"crm.users": _users(_COLUMNS["DATETIME"])})
    write_sync(_sync({**connection, "dataset": "crm"}, sql="SELECT customer_id, updated_at FROM users"))

    assert main(["run", "users", "--partition", "2024-01-01"]) == 0

    assert _customers() == {"C1", "C2"}


def test_source_assets_are_named_project_dataset_table_with_the_defaults_filled_in(write_sync):
    connection = {"type": "bigquery", "project": "acme", "dataset": "crm"}
    sql = "SELECT u.customer_id, u.updated_at FROM users AS u JOIN web.events AS e USING (customer_id) JOIN `other.sales.orders` USING (customer_id)"

    spec = load_sync_file(write_sync(_sync(connection, sql=sql)))

    assert sorted(source_keys(spec)) == sorted(
        [
            AssetKey(["warehouse", "acme", "crm", "users"]),
            AssetKey(["warehouse", "acme", "web", "events"]),
            AssetKey(["warehouse", "other", "sales", "orders"]),
        ]
    )


def test_bigquery_only_types_give_the_profile_values_their_duckdb_counterparts_give(
    bigquery, tmp_path, write_sync
):
    client = bigquery.server.client(bigquery.project)
    client.create_dataset("crm")
    client.query(
        "CREATE TABLE crm.users AS SELECT 'C1' AS customer_id, BIGNUMERIC '12.5' AS balance, "
        """JSON '{"plan":"pro","seats":[1,2]}' AS doc, STRUCT(1 AS x, 'y' AS y) AS rec, """
        "[STRUCT(1 AS x), STRUCT(2 AS x)] AS recs, TIME '10:11:12' AS opens_at"
    ).result()
    client.close()
    counterparts = pa.table(
        {
            "customer_id": ["C1"],
            "balance": pa.array([Decimal("12.5")], pa.decimal128(38, 9)),
            "doc": ['{"plan":"pro","seats":[1,2]}'],  # JSON arrives as its text from both
            "rec": pa.array([{"x": 1, "y": "y"}], pa.struct([("x", pa.int64()), ("y", pa.string())])),
            "recs": pa.array([[{"x": 1}, {"x": 2}]], pa.list_(pa.struct([("x", pa.int64())]))),
            "opens_at": pa.array([time(10, 11, 12)], pa.time64("us")),
        }
    )
    duckdb_connection = DuckDBEngine(tmp_path / "warehouse.duckdb").load({"crm.users": counterparts})

    previews = {}
    for engine, connection in (("duckdb", duckdb_connection), ("bigquery", bigquery.connection())):
        sync = {**_sync(connection, sql="SELECT * FROM crm.users"), "name": engine, "sync": {"mode": "full"}}
        previews[engine] = preview_rows(load_sync_file(write_sync(sync)))

    assert previews["bigquery"] == previews["duckdb"]
    assert previews["bigquery"][0]["attributes"]["balance"] == 12.5


# Connection errors: one line naming the sync and the warehouse, nothing written, no secret shown.


def test_an_unreachable_endpoint_fails_at_once_naming_the_sync_and_the_endpoint(write_sync, capsys):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    write_sync(_sync({"type": "bigquery", "project": "acme", "api_endpoint": endpoint}))

    assert main(["validate"]) == 1

    err = capsys.readouterr().err.strip()
    assert err.startswith(f"✗ users: BigQuery project acme at {endpoint}: cannot reach it: ")
    assert "Connection refused" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("table", "missing"), [("crm.nowhere", "Table"), ("nowhere.users", "Dataset")], ids=["table", "dataset"]
)
def test_a_missing_table_or_dataset_is_one_line_and_leaves_the_store_untouched(
    bigquery, write_sync, tmp_path, capsys, table, missing
):
    connection = bigquery.load({"crm.users": _users(_COLUMNS["DATETIME"])})
    write_sync(_sync(connection))
    assert main(["run", "users", "--partition", "2024-01-01"]) == 0
    before = _store_bytes(tmp_path)
    write_sync(_sync(connection, sql=f"SELECT customer_id, updated_at FROM {table}"))
    capsys.readouterr()

    assert main(["run", "users", "--partition", "2024-01-02"]) == 1

    err = capsys.readouterr().err.strip()
    assert f"BigQuery project {bigquery.project} at {bigquery.server.rest_url}: data_model.sql: " in err
    assert missing in err and "nowhere" in err and len(err.splitlines()) == 1
    assert _store_bytes(tmp_path) == before


class _RefusingTokenServer(BaseHTTPRequestHandler):
    """Answers every token request as Google does for a revoked or wrong key."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_server() -> Iterator[str]:
    """A local OAuth token endpoint standing in for Google's, which refuses every key."""
    server = HTTPServer(("127.0.0.1", 0), _RefusingTokenServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/token"
    server.shutdown()
    server.server_close()


def _service_account_key(token_uri: str) -> tuple[str, str]:
    """A service-account JSON key with a fresh RSA key, and the key's PEM body (the part never to show)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    key = {
        "type": "service_account",
        "project_id": "acme",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "wsync@acme.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    return json.dumps(key), pem.splitlines()[1]


def test_a_service_account_refused_by_a_local_token_server_standing_in_for_google_is_one_line_without_the_key(
    bigquery, write_sync, tmp_path, token_server, monkeypatch, capsys, caplog
):
    connection = bigquery.load({"crm.users": _users(_COLUMNS["DATETIME"])})
    key, secret = _service_account_key(token_server)
    monkeypatch.setenv("BQ_KEY", key)
    write_sync(_sync({**connection, "credentials": {"env": "BQ_KEY"}}))

    with caplog.at_level(logging.DEBUG):
        assert main(["validate"]) == 1
        assert main(["run", "users", "--partition", "2024-01-01"]) == 1

    out, err = capsys.readouterr()
    validate, run = err.strip().splitlines()
    assert validate.startswith(
        f"✗ users: BigQuery project {bigquery.project} at {bigquery.server.rest_url}: "
    )
    assert "connection.credentials: Google refused the service account: invalid_grant" in validate
    assert run.startswith("wsync run: BigQuery project ") and "invalid_grant" in run
    assert secret not in out + err + caplog.text
    assert not (tmp_path / "state" / "profiles.sqlite").exists() or _customers() == set()


def test_a_credentials_secret_that_is_no_service_account_key_names_the_variable_never_the_value(
    write_sync, monkeypatch, capsys
):
    monkeypatch.setenv("BQ_KEY", '{"private_key": "-----BEGIN PRIVATE KEY-----\\nc2VjcmV0LWtleS1ib2R5\\n"}')
    write_sync(_sync({"type": "bigquery", "project": "acme", "credentials": {"env": "BQ_KEY"}}))

    assert main(["validate"]) == 1

    err = capsys.readouterr().err.strip()
    assert "connection.credentials: the secret in BQ_KEY is not a service-account JSON key" in err
    assert "c2VjcmV0LWtleS1ib2R5" not in err and len(err.splitlines()) == 1


def test_an_unset_credentials_variable_names_the_field_and_the_variable(write_sync, monkeypatch, capsys):
    monkeypatch.delenv("BQ_KEY", raising=False)
    path = write_sync(_sync({"type": "bigquery", "project": "acme", "credentials": {"env": "BQ_KEY"}}))

    assert main(["validate"]) == 1

    assert (
        f"✗ users: {path}: connection.credentials: environment variable BQ_KEY is not set"
        in capsys.readouterr().err
    )


def test_without_credentials_google_s_endpoint_needs_application_default_credentials(
    write_sync, monkeypatch, tmp_path, capsys
):
    # No ADC here: an empty gcloud config folder and no key file variable.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    write_sync(_sync({"type": "bigquery", "project": "acme"}))

    assert main(["validate"]) == 1

    assert "connection.credentials: not given, and no application default credentials were found" in (
        capsys.readouterr().err
    )
