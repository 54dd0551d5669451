"""Redshift, with the local PostgreSQL server standing in (same wire protocol, sslmode disable).

The reader takes its Redshift path (a server-side cursor, no COPY TO STDOUT), and the tables use what
Redshift has: arrays do not exist there, so a list column is stored as JSON (jsonb standing in for SUPER).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from wsync_dagster_tests.engines.postgres import PostgresEngine, password_variable, quoted, scratch_database


class RedshiftOnPostgresEngine(PostgresEngine):
    """Tables shaped as in Redshift, read through the redshift connection type."""

    connection_type = "redshift"

    def column_type(self, field: pa.Field) -> str | None:
        """Lists become JSON documents, as Redshift keeps them in SUPER."""
        if pa.types.is_list(field.type):
            return f"jsonb USING to_jsonb({quoted(field.name)})"
        return super().column_type(field)


def start(tmp_path: Path) -> Iterator[RedshiftOnPostgresEngine]:
    """A scratch database on the local server, read as Redshift."""
    with scratch_database() as database, password_variable():
        yield RedshiftOnPostgresEngine(database)
