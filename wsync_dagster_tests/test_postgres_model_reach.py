"""A data model cannot write or read outside its tables on PostgreSQL and Redshift (the local server stands in
for Redshift). A read-only transaction does not stop large objects or dblink, so what reaches outside is
refused by name at validation; and every read, the COPY included, runs in a read-only transaction.

The server's role here is a superuser (trust auth): the strongest a careless deployment could give wsync.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from wsync_dagster.cli import main
from wsync_dagster_tests.conftest import users_sync
from wsync_dagster_tests.engines.postgres import SERVER, password_variable, scratch_database

ONLY = "a data model reads only the warehouse's tables and views"
OWN = " (name the schema of a table of your own by that name)"
TABLE_FUNCTION = f"{ONLY} (table functions allowed: range, generate_series, unnest, explode, posexplode)"
LARGE_OBJECTS = f"it reaches large objects; {ONLY}"

WAREHOUSE = """
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id text, email text, updated_at timestamp);
INSERT INTO crm.users VALUES ('C1', 'ada@example.com', '2024-01-01 10:00');
CREATE TABLE crm.keep (n int);
CREATE SEQUENCE crm.counter;
CREATE TABLE crm.reads (n int);
-- A function of the user's own that writes: validation cannot know what it does.
CREATE FUNCTION crm.log_read() RETURNS int VOLATILE LANGUAGE sql AS 'INSERT INTO crm.reads VALUES (1) RETURNING n';
"""

# (the data model, what the one line says after "data_model.sql: "); {lo} is the planted large object.
ATTEMPTS = [
    ("SELECT CAST(lo_from_bytea(0, 'x') AS VARCHAR) AS customer_id, updated_at FROM crm.users",
     f"lo_from_bytea() is not allowed: {LARGE_OBJECTS}"),
    ("SELECT customer_id, updated_at, lo_put({lo}, 0, 'x') AS x FROM crm.users",
     f"lo_put() is not allowed: {LARGE_OBJECTS}"),
    ("SELECT customer_id, updated_at, lo_unlink({lo}) AS x FROM crm.users",
     f"lo_unlink() is not allowed: {LARGE_OBJECTS}"),
    ("SELECT customer_id, updated_at, pg_catalog.LO_UNLINK({lo}) AS x FROM crm.users",
     f"lo_unlink() is not allowed: {LARGE_OBJECTS}"),
    # A Unicode-escaped name is the same function to the server.
    (r'SELECT customer_id, updated_at, U&"lo\005funlink"({lo}) AS x FROM crm.users',
     f"lo_unlink() is not allowed: {LARGE_OBJECTS}"),
    ("SELECT customer_id, updated_at, lo_get({lo}) AS x FROM crm.users",
     f"lo_get() is not allowed: {LARGE_OBJECTS}"),
    ("SELECT customer_id, updated_at, dblink_exec('dbname={database}', 'DROP TABLE crm.keep') AS x FROM crm.users",
     f"dblink_exec() is not allowed: it queries other databases (dblink); {ONLY}"),
    ("SELECT t.* FROM dblink('dbname={database}', 'SELECT 1') AS t(n int)",
     f"dblink() is not allowed: {TABLE_FUNCTION}"),
    ("SELECT customer_id, updated_at, pg_read_file('/etc/hostname') AS x FROM crm.users",
     f"pg_read_file() is not allowed: it reads the server's files; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_ls_dir('.') AS x FROM crm.users",
     f"pg_ls_dir() is not allowed: it reads the server's files; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_stat_file('postgresql.conf') AS x FROM crm.users",
     f"pg_stat_file() is not allowed: it reads the server's files; {ONLY}"),
    ("SELECT name AS customer_id, setting AS updated_at FROM pg_settings",
     f"FROM pg_settings is not allowed: it shows the server's settings; {ONLY}{OWN}"),
    ("SELECT usename AS customer_id, passwd AS updated_at FROM pg_catalog.pg_shadow",
     f"FROM pg_catalog.pg_shadow is not allowed: it shows credentials; {ONLY}"),
    ("SELECT customer_id, updated_at, set_config('search_path', 'crm', false) AS x FROM crm.users",
     f"set_config() is not allowed: it changes or reads the server's settings; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_advisory_lock(1) AS x FROM crm.users",
     f"pg_advisory_lock() is not allowed: it holds locks, sleeps or stops other sessions; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_sleep(5) AS x FROM crm.users",
     f"pg_sleep() is not allowed: it holds locks, sleeps or stops other sessions; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_terminate_backend(1) AS x FROM crm.users",
     f"pg_terminate_backend() is not allowed: it holds locks, sleeps or stops other sessions; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_notify('wsync', 'x') AS x FROM crm.users",
     f"pg_notify() is not allowed: it holds locks, sleeps or stops other sessions; {ONLY}"),
    ("SELECT customer_id, updated_at, pg_reload_conf() AS x FROM crm.users",
     f"pg_reload_conf() is not allowed: it administers the server; {ONLY}"),
    ("SELECT customer_id, updated_at, txid_current() AS x FROM crm.users",
     f"txid_current() is not allowed: it advances transaction ids or sequences; {ONLY}"),
    ("SELECT customer_id, updated_at, nextval('crm.counter') AS x FROM crm.users",
     f"nextval() is not allowed: it advances transaction ids or sequences; {ONLY}"),
    ("SELECT customer_id, updated_at, query_to_xml('SELECT crm.log_read()', true, true, '') AS x FROM crm.users",
     f"query_to_xml() is not allowed: it runs SQL given as text; {ONLY}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def warehouse() -> Iterator[tuple[str, int]]:
    """A scratch database with crm.users, things a model must not touch, and one planted large object."""
    with scratch_database() as database, password_variable():
        with _connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(WAREHOUSE)
            cursor.execute("SELECT lo_from_bytea(0, 'planted')")
            (lo,) = cursor.fetchone()
        connection.close()
        yield database, lo


def _connect(database: str):
    return psycopg2.connect(dbname=database, **SERVER)


def _state(database: str, lo: int) -> tuple:
    """What a model must not change: the large objects, the planted one's bytes, crm.keep, the sequence and
    crm.reads."""
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT count(*) FROM pg_largeobject_metadata), lo_get(%s), "
                "to_regclass('crm.keep') IS NOT NULL, (SELECT last_value FROM crm.counter), "
                "(SELECT count(*) FROM crm.reads)",
                (lo,),
            )
            return tuple(cursor.fetchone())
    finally:
        connection.close()


def _connection(database: str, connection_type: str) -> dict:
    return {
        "type": connection_type,
        **SERVER,
        "database": database,
        "password": {"env": "WSYNC_TEST_PG_PASSWORD"},
        "sslmode": "disable",
    }


@pytest.mark.parametrize("command", ["validate", "preview"])
@pytest.mark.parametrize("connection_type", ["postgres", "redshift"])
@pytest.mark.parametrize(("sql", "message"), ATTEMPTS, ids=[message.split("(")[0] for _, message in ATTEMPTS])
def test_a_model_reaching_outside_its_tables_is_one_line_naming_the_function_and_changes_nothing(
    warehouse, write_sync, capsys, command, connection_type, sql, message
):
    database, lo = warehouse
    model = sql.replace("{lo}", str(lo)).replace("{database}", database)
    path = write_sync(users_sync(_connection(database, connection_type), model))
    before = _state(database, lo)

    code = main(["validate"] if command == "validate" else ["preview", "users"])

    prefix = "✗ " if command == "validate" else "wsync preview: "
    assert capsys.readouterr().err.splitlines() == [f"{prefix}{path}: data_model.sql: {message}"]
    assert code == 1
    assert _state(database, lo) == before


@pytest.mark.parametrize("connection_type", ["postgres", "redshift"])
def test_a_writing_function_that_passes_validation_fails_in_the_read_only_transaction_and_writes_nothing(
    warehouse, write_sync, capsys, connection_type
):
    database, lo = warehouse
    sql = "SELECT customer_id, updated_at, crm.log_read() AS n FROM crm.users"
    write_sync(users_sync(_connection(database, connection_type), sql))
    before = _state(database, lo)

    code = main(["preview", "users"])

    assert capsys.readouterr().err.splitlines() == [
        f"wsync preview: data_model.sql: the {connection_type} warehouse 127.0.0.1:5432/{database} cannot run "
        "it: cannot execute INSERT in a read-only transaction"
    ]
    assert code == 1
    assert _state(database, lo) == before
    # The same function does write outside a read-only transaction: the transaction is what stopped it.
    with _connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT crm.log_read()")
        cursor.execute("SELECT count(*) FROM crm.reads")
        assert cursor.fetchone() == (1,)
        connection.rollback()
    connection.close()
