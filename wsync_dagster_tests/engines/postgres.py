"""PostgreSQL: the local server (127.0.0.1:5432, trust auth), one fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import adbc_driver_postgresql.dbapi
import pyarrow as pa
import sqlglot.expressions as exp

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Trust auth ignores the password, but a sync file names one, and tests plant values in it.
PASSWORD_VARIABLE = "WSYNC_TEST_PG_PASSWORD"


def uri(database: str) -> str:
    """A libpq URI of the local server."""
    return f"postgresql://{SERVER['user']}@{SERVER['host']}:{SERVER['port']}/{database}"


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty database, dropped afterwards (tests in other worktrees use the same server)."""
    name = f"wsync_test_{uuid.uuid4().hex[:12]}"
    with adbc_driver_postgresql.dbapi.connect(uri("postgres"), autocommit=True) as admin:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE {name} WITH (FORCE)")


def quoted(name: str) -> str:
    """A dotted name with each part quoted for PostgreSQL."""
    return ".".join(exp.to_identifier(part, quoted=True).sql("postgres") for part in name.split("."))


class PostgresEngine:
    """Tables created in one scratch database of the local PostgreSQL server."""

    connection_type = "postgres"

    def __init__(self, database: str):
        self.database = database

    def connection(self) -> dict:
        """The sync file's connection to the scratch database."""
        return {
            "type": self.connection_type,
            "host": SERVER["host"],
            "port": SERVER["port"],
            "database": self.database,
            "user": SERVER["user"],
            "password": {"env": PASSWORD_VARIABLE},
            "sslmode": "disable",
        }

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create each schema.table from its Arrow table, decimals as numeric(p, s); the connection."""
        with adbc_driver_postgresql.dbapi.connect(uri(self.database)) as connection:
            with connection.cursor() as cursor:
                for name, table in tables.items():
                    schema, table_name = name.split(".")
                    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}")
                    cursor.adbc_ingest(table_name, table, mode="replace", db_schema_name=schema)
                    for field in table.schema:
                        if alteration := self.column_type(field):
                            cursor.execute(
                                f"ALTER TABLE {quoted(name)} ALTER COLUMN {quoted(field.name)} TYPE {alteration}"
                            )
            connection.commit()
        return self.connection()

    def column_type(self, field: pa.Field) -> str | None:
        """The native type a column gets where ADBC's ingest type is not the one a warehouse would use."""
        if pa.types.is_decimal(field.type):
            return f"numeric({field.type.precision}, {field.type.scale})"
        return None


@contextmanager
def password_variable() -> Iterator[None]:
    """The password variable the sync files name, set for the test."""
    previous = os.environ.get(PASSWORD_VARIABLE)
    os.environ[PASSWORD_VARIABLE] = "not-needed-with-trust-auth"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PASSWORD_VARIABLE, None)
        else:
            os.environ[PASSWORD_VARIABLE] = previous


def start(tmp_path: Path) -> Iterator[PostgresEngine]:
    """A scratch database on the local server."""
    with scratch_database() as database, password_variable():
        yield PostgresEngine(database)
