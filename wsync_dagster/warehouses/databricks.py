"""Databricks warehouse: a SQL warehouse (or cluster) through databricks-sql-connector, results as Arrow."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import sqlglot
from pydantic import Field
from sqlglot import exp

from wsync_dagster.cancellation import watched_query
from wsync_dagster.data_model import SourceTable, probe_sql, redact_literals
from wsync_dagster.warehouses.base import (
    DEFAULT_QUERY_TIMEOUT,
    ConnectionSpec,
    EnvValue,
    Setting,
    WarehouseError,
    cancelled_error,
    one_line,
    resolve,
)

# The window bounds' names in the SQL sent: Databricks binds named parameter markers.
BOUND_NAMES = ("window_start", "window_end")
# Every naive TIMESTAMP_NTZ is UTC wall time, as window bounds are; TIMESTAMP values come back in UTC.
SESSION_SQL = ("SET TIME ZONE 'UTC'",)


class DatabricksConnection(ConnectionSpec):
    """A Databricks SQL warehouse or cluster, by host, HTTP path and personal access token."""

    dialect = "databricks"
    change_feed: ClassVar[bool] = True  # table_changes, read by wsync_dagster.changes.databricks
    type: Literal["databricks"]
    server_hostname: Setting
    http_path: Setting
    access_token: EnvValue
    catalog: Setting | None = None
    schema_: Setting | None = Field(None, alias="schema")

    def open(self, base: Path) -> DatabricksWarehouse:
        """Connect with the token read from its environment variable now, never stored."""
        from databricks import sql

        # The connector logs each failed request on stderr; the reader reports it once, in one line.
        logging.getLogger("databricks.sql").setLevel(logging.CRITICAL)
        host = resolve(self.server_hostname, "server_hostname")
        http_path = resolve(self.http_path, "http_path")
        token = resolve(self.access_token, "access_token")
        where = f"Databricks at {host}{'' if http_path.startswith('/') else '/'}{http_path}"  # type: ignore[union-attr]
        try:
            connection = sql.connect(
                server_hostname=host,
                http_path=http_path,
                access_token=token,
                catalog=resolve(self.catalog, "catalog"),
                schema=resolve(self.schema_, "schema"),
                user_agent_entry="wsync",
            )
        except sql.Error as error:
            raise WarehouseError(f"connection: cannot connect to {where}: {_message(error)}") from None
        return DatabricksWarehouse(connection, where, sql.Error, self.query_timeout)

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """catalog.schema.table, the connection's catalog and schema (or `default`) filling the gaps."""
        catalog = table.catalog or _literal(self.catalog)
        schema = table.schema or _literal(self.schema_) or "default"
        return tuple(part for part in (catalog, schema, table.name) if part)


class DatabricksWarehouse:
    """Runs the model on Databricks; the window bounds travel as typed named parameters."""

    dialect = "databricks"

    def __init__(
        self,
        connection,
        where: str,
        error: type[Exception],
        query_timeout: dt.timedelta = DEFAULT_QUERY_TIMEOUT,
    ):
        self._query_timeout = query_timeout
        self._connection = connection
        self._where = where
        self._error = error
        try:
            with connection.cursor() as cursor:
                for statement in SESSION_SQL:
                    cursor.execute(statement)
        except error as failure:
            connection.close()
            raise WarehouseError(
                f"connection: {where} refused the session settings: {_message(failure)}"
            ) from None

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        with self._cursor(probe_sql(sql, self.dialect), []) as cursor:
            return standard_types(cursor.fetchall_arrow()).schema

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows as Arrow, `batch_size` rows per fetch."""
        query, parameters = named_parameters(sql, params)
        with self._cursor(query, parameters) as cursor:
            while True:
                try:
                    table = cursor.fetchmany_arrow(batch_size)
                except self._error as failure:
                    raise self._model_error(failure, query) from None
                if table.num_rows == 0:
                    return
                yield from standard_types(table).to_batches()

    def close(self) -> None:
        """End the session on the warehouse."""
        self._connection.close()

    def _cursor(self, query: str, parameters: list):
        cursor = self._connection.cursor()
        # A stop signal or query_timeout cancels the statement on the warehouse (not tried against a real one).
        with watched_query(lambda: cursor.cancel(), self._query_timeout) as watch:
            try:
                cursor.execute(query, parameters or None)
            except self._error as failure:
                cursor.close()
                cancelled = cancelled_error(watch, self._where, self._query_timeout)
                raise cancelled or self._model_error(failure, query) from None
        return cursor

    def _model_error(self, failure: Exception, query: str) -> WarehouseError:
        """One line without the SQL's string literals: run storage and logs keep every error message."""
        message = redact_literals(_message(failure), query, self.dialect)
        return WarehouseError(f"data_model.sql: {self._where} cannot run it: {message}")


def named_parameters(sql: str, params: Sequence[Any]) -> tuple[str, list]:
    """The SQL with its `?` placeholders as named markers, and the bounds as typed Databricks parameters."""
    if not params:
        return sql, []
    from databricks.sql.parameters import BigIntegerParameter, DateParameter, TimestampParameter

    names = iter(BOUND_NAMES)
    statement = sqlglot.parse_one(sql, read="databricks").transform(
        lambda node: exp.Placeholder(this=next(names)) if isinstance(node, exp.Placeholder) else node
    )
    typed = []
    for name, value in zip(BOUND_NAMES, params, strict=True):
        if isinstance(value, dt.datetime):
            typed.append(TimestampParameter(value.astimezone(dt.UTC), name))
        elif isinstance(value, dt.date):
            typed.append(DateParameter(value, name))
        else:
            typed.append(BigIntegerParameter(int(value), name))
    return statement.sql(dialect="databricks"), typed


def standard_types(table: pa.Table) -> pa.Table:
    """Timestamps with a zone in UTC (Databricks names it after the session, e.g. Etc/UTC)."""
    fields = [
        pa.field(f.name, pa.timestamp("us", "UTC"), f.nullable)
        if pa.types.is_timestamp(f.type) and f.type.tz is not None
        else f
        for f in table.schema
    ]
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


def _literal(value: Setting | None) -> str | None:
    return f"${value.env}" if isinstance(value, EnvValue) else value


def _message(error: Exception) -> str:
    """The connector's message, with the HTTP status it keeps aside (its message alone may be empty)."""
    message = one_line(str(error)) or type(error).__name__
    context = getattr(error, "context", None) or {}
    status = context.get("http-code")
    if status is None:
        return message
    detail = " ".join(str(context.get("error-message") or "").split())
    return f"HTTP {status}{_HTTP_MEANING.get(status, '')}{f': {detail}' if detail else ''} ({message.rstrip('. ')})"


_HTTP_MEANING = {
    401: ", the access token was refused",
    403: ", the access token was refused or has no access",
    404: ", no SQL warehouse or cluster at that http_path",
}
