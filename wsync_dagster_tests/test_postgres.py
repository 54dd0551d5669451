"""PostgreSQL and Redshift warehouses on the local PostgreSQL server (which stands in for Redshift: the
`redshift` type reads it through its Redshift path, a server-side cursor, with sslmode disable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance
from pydantic import TypeAdapter

from wsync_dagster.cli import main
from wsync_dagster.data_model import windowed_sql
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.iterators import IteratorWindow
from wsync_dagster.runner import run_sync
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import Connection, load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster.warehouses import Warehouse, WarehouseError, open_warehouse
from wsync_dagster_tests.conftest import closed_port, profile_store_bytes, users_sync
from wsync_dagster_tests.engines import start
from wsync_dagster_tests.engines.postgres import PASSWORD_VARIABLE, SERVER, PostgresEngine

SECRET = "planted-pg-s3cret-0b1c"
READ_PATHS = ("postgres", "redshift")  # COPY through ADBC; a server-side cursor

USERS_TABLE = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id text, email text, plan text, updated_at timestamp);
INSERT INTO crm.users VALUES
    ('C1', 'ada@example.com', 'pro', '2024-01-01 10:00'),
    ('C2', NULL, 'free', '2024-01-01 11:00'),
    ('C3', 'cy@example.com', NULL, '2024-01-02 09:00');
"""


@pytest.fixture(params=READ_PATHS)
def engine(request, tmp_path: Path) -> Iterator[PostgresEngine]:
    yield from start(request.param, tmp_path)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresEngine]:
    yield from start("postgres", tmp_path)


def _execute(engine: PostgresEngine, sql: str) -> None:
    with psycopg2.connect(dbname=engine.database, **SERVER) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


def _sync(connection: dict, sql: str = "SELECT customer_id, email, plan, updated_at FROM crm.users") -> dict:
    return users_sync(connection, sql)


def _open(engine: PostgresEngine, **connection) -> Warehouse:
    """The engine's warehouse, opened as a sync file's connection (with overrides) opens it."""
    return TypeAdapter(Connection).validate_python({**engine.connection(), **connection}).open(Path("."))


def _read(engine: PostgresEngine, sql: str, params=(), **connection) -> pa.Table:
    """The rows of a query (a window's `?` bounds filled from params)."""
    warehouse = _open(engine, **connection)
    try:
        batches = list(warehouse.read_batches(sql, params))
        return pa.Table.from_batches(batches) if batches else warehouse.columns(sql).empty_table()
    finally:
        warehouse.close()


# ---- connection errors -------------------------------------------------------------------------------


def _bad_connection(case: str, engine: PostgresEngine) -> tuple[dict, str]:
    """A connection a user gets wrong, and the reason the one error line must give."""
    role = f"wsync_nobody_{uuid.uuid4().hex[:8]}"
    return {
        "closed port": ({"port": closed_port()}, "Connection refused"),
        "unknown host": ({"host": "warehouse.invalid"}, 'could not translate host name "warehouse.invalid"'),
        "unknown role": ({"user": role}, f'role "{role}" does not exist'),
        "missing database": ({"database": "wsync_no_such_db"}, 'database "wsync_no_such_db" does not exist'),
        "redshift requires TLS by default": (
            {"type": "redshift", "sslmode": None},
            "server does not support SSL, but SSL was required",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    ["closed port", "unknown host", "unknown role", "missing database", "redshift requires TLS by default"],
)
def test_a_connection_that_fails_is_one_line_naming_the_sync_and_the_warehouse(
    case, postgres, write_sync, monkeypatch, capsys
):
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    overrides, reason = _bad_connection(case, postgres)
    connection = {k: v for k, v in {**postgres.connection(), **overrides}.items() if v is not None}
    path = write_sync(_sync(connection))

    assert main(["validate"]) == 1

    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1
    host, port, database = connection["host"], connection["port"], connection["database"]
    assert err.startswith(
        f"✗ users: {path}: connection: cannot connect to the {connection['type']} warehouse {host}:{port}/{database} "
        f"as {connection['user']}: "
    )
    assert reason in err
    assert SECRET not in out + err


def test_a_missing_table_schema_or_permission_is_one_line_naming_the_sync_and_the_warehouse(
    postgres, write_sync, monkeypatch, capsys
):
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    _execute(postgres, USERS_TABLE)
    role = f"wsync_reader_{uuid.uuid4().hex[:8]}"
    _execute(postgres, f"CREATE ROLE {role} LOGIN")
    try:
        write_sync(_sync(postgres.connection(), "SELECT customer_id, updated_at FROM crm.nope"), "a.yaml")
        write_sync(
            {**_sync(postgres.connection(), "SELECT customer_id, updated_at FROM nope.users"), "name": "b"}
        )
        write_sync({**_sync({**postgres.connection(), "user": role}), "name": "c"})

        assert main(["validate"]) == 1
    finally:
        _execute(postgres, f"DROP ROLE {role}")

    out, err = capsys.readouterr()
    warehouse = f"the postgres warehouse 127.0.0.1:5432/{postgres.database} cannot run it"
    assert err.splitlines() == [
        f'✗ users: data_model.sql: {warehouse}: relation "crm.nope" does not exist',
        f'✗ b: data_model.sql: {warehouse}: relation "nope.users" does not exist',
        f"✗ c: data_model.sql: {warehouse}: permission denied for schema crm",
    ]
    assert SECRET not in out + err


@pytest.mark.parametrize(
    "failure", ["the warehouse refuses the connection", "the query runs past the statement timeout"]
)
def test_a_run_that_fails_in_the_warehouse_writes_nothing_and_never_shows_the_password(
    failure, engine, write_sync, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    _execute(engine, USERS_TABLE)
    write_sync(_sync(engine.connection()))
    assert main(["run", "users", "--partition", "2024-01-01"]) == 0
    before = profile_store_bytes(tmp_path)
    port = SERVER["port"]
    if failure == "the warehouse refuses the connection":
        port = closed_port()
        write_sync(_sync({**engine.connection(), "port": port}))
        reason = "Connection refused"
    else:
        # libpq's own variable: how a data engineer bounds a query's time on PostgreSQL and Redshift.
        monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=200")
        # pg_sleep itself is refused in a data model; a function of the user's own may still be slow.
        _execute(engine, "CREATE FUNCTION crm.pause() RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(5)'")
        write_sync(_sync(engine.connection(), "SELECT *, crm.pause() AS pause FROM crm.users"))
        reason = "canceling statement due to statement timeout"
    capsys.readouterr()

    assert main(["run", "users", "--partition", "2024-01-02"]) == 1

    out, err = capsys.readouterr()
    assert reason in err
    assert f"{engine.connection_type} warehouse 127.0.0.1:{port}/{engine.database}" in err
    assert profile_store_bytes(tmp_path) == before
    state = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert SECRET not in out + err
    assert SECRET.encode() not in state


def test_an_unset_password_variable_names_the_field_and_the_variable(
    postgres, write_sync, monkeypatch, capsys
):
    monkeypatch.delenv(PASSWORD_VARIABLE)
    path = write_sync(_sync(postgres.connection()))

    assert main(["validate"]) == 1

    assert capsys.readouterr().err == (
        f"✗ users: {path}: connection.password: environment variable {PASSWORD_VARIABLE} is not set\n"
    )


# ---- types -------------------------------------------------------------------------------------------

TYPES_TABLE = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE every_type (
    small smallint, medium integer, big bigint, single real, double double precision,
    exact numeric(12, 3), unbounded numeric, flag boolean, note text, code varchar(10), fixed char(3),
    day date, moment timestamp, instant timestamptz, doc jsonb, raw_doc json,
    words text[], numbers bigint[], amounts numeric[], id uuid, span interval, clock time, bytes bytea,
    feeling mood
);
INSERT INTO every_type VALUES
    (1, 2, 3, 1.5, 2.25, 12.345, 1.0 / 3, true, 'n', 'c', 'ab', '2024-02-29', '2024-01-01 09:30:00.123456',
     '2024-01-01 09:30:00+02', '{"theme": "dark", "n": [1, 2]}', '{"a": null}', '{x,"y z"}', '{1,NULL,3}',
     '{1.5,2}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00:00', '09:30', '\\x0102', 'sad'),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL);
"""

EXPECTED_TYPES = pa.schema(
    {
        "small": pa.int16(),
        "medium": pa.int32(),
        "big": pa.int64(),
        "single": pa.float32(),
        "double": pa.float64(),
        "exact": pa.decimal128(12, 3),
        "unbounded": pa.float64(),
        "flag": pa.bool_(),
        "note": pa.string(),
        "code": pa.string(),
        "fixed": pa.string(),
        "day": pa.date32(),
        "moment": pa.timestamp("us"),
        "instant": pa.timestamp("us", tz="UTC"),
        "doc": pa.json_(),
        "raw_doc": pa.json_(),
        "words": pa.list_(pa.string()),
        "numbers": pa.list_(pa.int64()),
        "amounts": pa.list_(pa.float64()),
        "id": pa.string(),
        "span": pa.string(),
        "clock": pa.string(),
        "bytes": pa.string(),
        "feeling": pa.string(),
    }
)


def test_both_read_paths_return_the_same_arrow_types_and_values_for_every_postgres_type(postgres):
    _execute(postgres, TYPES_TABLE)
    sql = "SELECT * FROM every_type"

    copied = _read(postgres, sql)
    fetched = _read(postgres, sql, type="redshift", sslmode="disable")

    assert copied.schema == EXPECTED_TYPES
    assert fetched.equals(copied)
    first = copied.to_pylist()[0]
    assert first["instant"] == datetime(2024, 1, 1, 7, 30, tzinfo=UTC)
    assert first["moment"] == datetime(2024, 1, 1, 9, 30, 0, 123456)
    assert first["doc"] == '{"n": [1, 2], "theme": "dark"}'
    assert (first["id"], first["span"], first["clock"], first["feeling"]) == (
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "1 day 02:00:00",
        "09:30:00",
        "sad",
    )
    assert set(copied.to_pylist()[1].values()) == {None}


def test_a_json_column_becomes_a_json_value_in_the_profile(engine, write_sync):
    _execute(
        engine,
        USERS_TABLE
        + """ALTER TABLE crm.users ADD COLUMN prefs jsonb, ADD COLUMN ratio numeric;
        UPDATE crm.users SET prefs = '{"theme": "dark", "n": [1, 2]}', ratio = 0.25 WHERE customer_id = 'C1';""",
    )
    write_sync(_sync(engine.connection(), "SELECT customer_id, prefs, ratio, updated_at FROM crm.users"))

    assert main(["run", "users", "--partition", "2024-01-01"]) == 0

    store = open_profile_store(profile_store_url())
    try:
        attributes = store.profile("customer_id", "C1")["attributes"]
    finally:
        store.close()
    assert attributes == {"prefs": {"theme": "dark", "n": [1, 2]}, "ratio": 0.25}


# ---- windows and binding -----------------------------------------------------------------------------

EVENTS_TABLE = """
CREATE TABLE events (id integer, day date, at_ms bigint, at_s bigint, at timestamptz, note text, doc jsonb);
INSERT INTO events VALUES
    (1, '2024-01-01', 1704067200000, 1704067200, '2024-01-01 00:00:00+00', '50% off', '{"k": 1}'),
    (2, '2024-01-02', 1704153600000, 1704153600, '2024-01-02 01:00:00+01', 'what?', '{"j": 1}'),
    (3, '2024-01-03', 1704240000000, 1704240000, '2024-01-03 00:00:00+00', NULL, '{"k": 2}');
"""


@pytest.mark.parametrize(
    ("iterator", "iterator_type"),
    [
        ("day", "date"),
        ("at_ms", "timestamp_unixtime_ms"),
        ("at_s", "timestamp_unixtime_s"),
        ("at", "timestamp"),
    ],
)
def test_a_window_reads_its_rows_with_bounds_bound_as_the_iterator_type(engine, iterator, iterator_type):
    _execute(engine, EVENTS_TABLE)
    window = IteratorWindow(datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))

    rows = _read(
        engine,
        windowed_sql("SELECT id, day, at_ms, at_s, at FROM events", iterator, engine.connection_type),
        window.bounds(iterator_type),
    )

    assert rows.column("id").to_pylist() == [2]


def test_percent_signs_question_marks_and_the_jsonb_question_mark_operator_survive_binding(engine):
    _execute(engine, EVENTS_TABLE)
    sql = (
        "SELECT id, note, at FROM events WHERE (note LIKE '%\\%%' OR note = 'what?') AND doc ? 'k' OR id = 2"
    )
    window = IteratorWindow(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC))

    rows = _read(engine, windowed_sql(sql, "at", "postgres"), window.bounds("timestamp"))

    assert rows.column("note").to_pylist() == ["50% off", "what?"]


def test_a_model_cannot_change_the_warehouse_even_through_a_function(engine):
    # nextval() is refused by name; a function of the user's own that writes meets the read-only transaction.
    _execute(engine, "CREATE SEQUENCE counter")
    _execute(engine, "CREATE FUNCTION next_count() RETURNS bigint VOLATILE LANGUAGE sql AS 'SELECT nextval(''counter'')'")

    with pytest.raises(WarehouseError, match=r"cannot execute nextval\(\) in a read-only transaction"):
        _read(engine, "SELECT next_count() AS n")


def test_batches_hold_at_most_batch_size_rows_on_both_read_paths(engine):
    _execute(
        engine, "CREATE TABLE numbers AS SELECT i, 'row ' || i AS label FROM generate_series(1, 25000) AS i"
    )
    warehouse = _open(engine)
    try:
        batches = list(warehouse.read_batches("SELECT i, label FROM numbers", (), 12_000))
    finally:
        warehouse.close()

    assert max(batch.num_rows for batch in batches) <= 12_000
    assert len(batches) >= 3
    assert sorted(pa.Table.from_batches(batches).column("i").to_pylist()) == list(range(1, 25_001))


# ---- the sync file's schema and the source assets ----------------------------------------------------


def test_schema_is_the_search_path_for_unqualified_tables_and_names_their_source_assets(engine, write_sync):
    _execute(engine, USERS_TABLE)
    sync = _sync({**engine.connection(), "schema": "crm"}, "SELECT customer_id, updated_at FROM users")
    spec = load_sync_file(write_sync(sync))
    store = open_profile_store(profile_store_url())
    try:
        run_sync(spec, store, DagsterInstance.ephemeral(), partition="2024-01-01")
        assert store.profile("customer_id", "C1") is not None
    finally:
        store.close()

    assert source_keys(spec) == [AssetKey(["warehouse", engine.database, "crm", "users"])]


def test_an_unqualified_table_without_schema_is_in_public(postgres, write_sync):
    spec = load_sync_file(write_sync(_sync(postgres.connection(), "SELECT id, updated_at FROM users")))

    assert source_keys(spec) == [AssetKey(["warehouse", postgres.database, "public", "users"])]


def test_redshift_and_postgres_default_to_their_own_ports(write_sync, monkeypatch):
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)

    def port_in_error(connection_type: str) -> str:
        connection = {
            "type": connection_type,
            "host": "warehouse.invalid",
            "database": "dev",
            "user": "u",
            "password": {"env": PASSWORD_VARIABLE},
        }
        spec = load_sync_file(write_sync(_sync(connection)))
        with pytest.raises(WarehouseError) as error:
            open_warehouse(spec)
        return str(error.value)

    assert "redshift warehouse warehouse.invalid:5439/dev" in port_in_error("redshift")
    assert "postgres warehouse warehouse.invalid:5432/dev" in port_in_error("postgres")


def test_an_unknown_connection_key_lists_the_keys_as_a_sync_file_spells_them(write_sync, capsys):
    connection = {
        "type": "postgres",
        "host": "db",
        "database": "dev",
        "user": "u",
        "password": {"env": PASSWORD_VARIABLE},
        "search_path": "crm",
    }
    path = write_sync(_sync(connection))

    assert main(["validate"]) == 1

    assert capsys.readouterr().err == (
        f"✗ {path}: connection.search_path: unknown key; "
        "allowed: type, host, port, database, user, password, schema, sslmode, name, query_timeout\n"
    )


def test_a_query_error_never_repeats_a_string_literal_of_the_model(engine):
    _execute(engine, USERS_TABLE)
    sql = "SELECT customer_id, updated_at FROM crm.users WHERE customer_id::int = CAST('tok-8842-secret' AS int)"

    with pytest.raises(WarehouseError) as error:
        _read(engine, sql)

    assert str(error.value) == (
        f"data_model.sql: the {engine.connection_type} warehouse 127.0.0.1:5432/{engine.database} "
        'cannot run it: invalid input syntax for type integer: "***"'
    )
