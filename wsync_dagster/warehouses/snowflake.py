"""Snowflake warehouse: the Snowflake connector through dagster-snowflake's resource, rows as Arrow batches."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

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

# Snowflake stores an unquoted identifier in upper case; wsync shows it in lower case, as it was written.
_UNQUOTED = re.compile(r"[A-Z_][A-Z0-9_$]*\Z")
_ERROR_NUMBER = re.compile(r"^\d{6}(?: \(\w+\))?: ")
_JSON = pa.json_(pa.string())
# The profile mapping reads standard Arrow types; Snowflake's type names (FIELD_TYPES) map onto them.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "REAL": pa.float64(),
    "TEXT": pa.string(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMP_NTZ": pa.timestamp("us"),
    "TIMESTAMP_LTZ": pa.timestamp("us", tz="UTC"),
    "TIMESTAMP_TZ": pa.timestamp("us", tz="UTC"),
    "VARIANT": _JSON,
    "OBJECT": _JSON,
    "ARRAY": _JSON,
    "MAP": _JSON,
    "BOOLEAN": pa.bool_(),
    "BINARY": pa.binary(),
    "TIME": pa.time64("us"),
    "GEOGRAPHY": pa.string(),
    "GEOMETRY": pa.string(),
}


class SnowflakeConnection(ConnectionSpec):
    """A Snowflake account, with a password or a key pair (the key as PEM text or in a file)."""

    dialect = "snowflake"
    change_feed: ClassVar[bool] = True  # change tracking, read by wsync_dagster.changes.snowflake
    type: Literal["snowflake"]
    account: Setting
    user: Setting
    password: EnvValue | None = None
    private_key: EnvValue | None = None
    private_key_path: Setting | None = None
    private_key_passphrase: EnvValue | None = None
    warehouse: Setting
    database: Setting
    schema_: Setting | None = Field(default=None, alias="schema")
    role: Setting | None = None
    host: Setting | None = None
    port: int | EnvValue | None = None
    protocol: Literal["https", "http"] | None = None

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> SnowflakeConnection:
        given = [key for key in ("password", "private_key", "private_key_path") if getattr(self, key)]
        if len(given) != 1:
            raise ValueError(
                "give one of password, private_key or private_key_path"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.private_key_passphrase and self.password:
            raise ValueError("private_key_passphrase goes with private_key or private_key_path")
        return self

    def open(self, base: Path) -> SnowflakeWarehouse:
        """Log in through dagster-snowflake's resource; the session runs in UTC with qmark bindings."""
        from dagster_snowflake import SnowflakeResource

        settings = {
            key: resolve(getattr(self, key), key)
            for key in ("account", "user", "password", "private_key", "warehouse", "database", "role")
        }
        key_path = resolve(self.private_key_path, "private_key_path")
        port = resolve(self.port, "port") if isinstance(self.port, EnvValue) else self.port
        if isinstance(port, str) and not port.isdigit():
            raise WarehouseError(
                f"connection.port: variable {self.port.env} holds {port!r}, not a port number"
            )
        address = {"host": resolve(self.host, "host"), "port": port and int(port), "protocol": self.protocol}
        resource = SnowflakeResource(
            **settings,
            schema=resolve(self.schema_, "schema"),
            private_key_path=str(base / key_path) if key_path else None,
            private_key_password=resolve(self.private_key_passphrase, "private_key_passphrase"),
            paramstyle="qmark",
            # Naive window bounds are UTC; LTZ and TZ columns compare with them as instants in UTC.
            timezone="UTC",
            additional_snowflake_connection_args={
                **{key: value for key, value in address.items() if value is not None},
                "arrow_number_to_decimal": True,
            },
        )
        name = f"snowflake account {settings['account']}"
        if address["host"]:
            name += f" at {address['host']}" + (f":{address['port']}" if address["port"] else "")
        key_field = "private_key_path" if key_path else "private_key" if self.private_key else None
        return SnowflakeWarehouse(resource, name, key_field, self.query_timeout)

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """database.schema.table in lower case, with the connection's database and schema (PUBLIC) filled in."""
        parts = (
            table.catalog or _setting_name(self.database, "database"),
            table.schema or _setting_name(self.schema_, "schema") or "public",
            table.name,
        )
        return tuple(part.lower() for part in parts)


class SnowflakeWarehouse:
    """Runs the data model in Snowflake and streams the result as Arrow batches of standard types."""

    dialect = "snowflake"

    def __init__(
        self,
        resource: Any,
        name: str,
        key_field: str | None = None,
        query_timeout: timedelta = DEFAULT_QUERY_TIMEOUT,
    ):
        import snowflake.connector

        self.name = name
        self._query_timeout = query_timeout
        self._error = snowflake.connector.Error
        self._connections = ExitStack()
        try:
            self._connection = self._connections.enter_context(resource.get_connection())
        except self._error as error:
            raise WarehouseError(f"connection: cannot log in to {name}: {_message(error)}") from None
        except TypeError as error:  # cryptography: a passphrase for a plain key, or none for an encrypted one
            if key_field is None:
                raise
            raise WarehouseError(f"connection.{key_field}: cannot load the key for {name}: {error}") from None
        except ValueError:  # dagster-snowflake's message suggests base64, which is rarely the cause
            if key_field is None:
                raise
            raise WarehouseError(
                f"connection.{key_field}: cannot load the key for {name}: not a PEM private key, "
                "or private_key_passphrase does not open it"
            ) from None
        except OSError as error:
            raise WarehouseError(f"connection.private_key_path: cannot read the key: {error}") from None

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, described by Snowflake for a zero-row probe."""
        query = probe_sql(sql, self.dialect)
        with self._connection.cursor() as cursor, self._watched(cursor) as watch:
            try:
                cursor.execute(query)
            except self._error as error:
                cancelled = cancelled_error(watch, self.name, self._query_timeout)
                raise cancelled or self._model_error(error, query) from None
            return _schema(cursor.description)

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the result chunk by chunk as Snowflake sends it; `?` placeholders are bound server-side."""
        with self._connection.cursor() as cursor, self._watched(cursor) as watch:
            try:
                cursor.execute(sql, [_binding(value) for value in params])
                schema = _schema(cursor.description)
                for table in cursor.fetch_arrow_batches(force_microsecond_precision=True):
                    yield from _conform(table, schema).to_batches(batch_size)
            except self._error as error:
                cancelled = cancelled_error(watch, self.name, self._query_timeout)
                raise cancelled or self._model_error(error, sql) from None

    def _watched(self, cursor):
        """A stop signal or query_timeout aborts the cursor's query on Snowflake (not tried against the real
        service: fakesnow answers at once)."""

        def abort() -> None:
            if cursor.sfqid:
                cursor.abort_query(cursor.sfqid)

        return watched_query(abort, self._query_timeout)

    def close(self) -> None:
        """Log out."""
        self._connections.close()

    def _model_error(self, error: Exception, sql: str) -> WarehouseError:
        """Snowflake's error with the SQL's string literals masked: run logs keep every error message."""
        message = redact_literals(_message(error), sql, self.dialect)
        return WarehouseError(f"data_model.sql: {self.name} cannot run it: {message}")


def _setting_name(value: Setting | None, field: str) -> str | None:
    """A name from the connection for asset keys: `$VAR` while its variable is unset."""
    try:
        return resolve(value, field)
    except WarehouseError:
        return f"${value.env}"  # type: ignore[union-attr]


def _message(error: Exception) -> str:
    """The connector's message on one line, without its error number."""
    return one_line(_ERROR_NUMBER.sub("", str(getattr(error, "raw_msg", None) or error)))


def _binding(value: Any) -> Any:
    """A window bound as a typed server-side binding: times as UTC wall time, dates and integers as they are."""
    if isinstance(value, datetime):
        return ("TIMESTAMP_NTZ", value.astimezone(UTC).replace(tzinfo=None))
    return value


def _column_name(name: str) -> str:
    """The column's name as the data model wrote it: Snowflake's upper-case unquoted names in lower case."""
    return name.lower() if _UNQUOTED.match(name) else name


def _schema(description: Sequence[Any]) -> pa.Schema:
    """The Arrow schema wsync reads for a result, from Snowflake's column metadata."""
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    fields = []
    for column in description:
        type_name = FIELD_ID_TO_NAME[column.type_code]
        if type_name == "FIXED":
            scale = column.scale or 0
            arrow_type = pa.int64() if scale == 0 else pa.decimal128(column.precision or 38, scale)
        elif type_name in _ARROW_TYPES:
            arrow_type = _ARROW_TYPES[type_name]
        else:
            raise WarehouseError(
                f"data_model.sql: column {column.name} is a Snowflake {type_name or column.type_code}, "
                "which wsync does not read; cast it in the data model (to VARCHAR, NUMBER or VARIANT)"
            )
        fields.append(pa.field(_column_name(column.name), arrow_type))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A chunk as the connector gives it, cast to the schema wsync reads (names folded, microseconds, UTC)."""
    columns = []
    for column, field in zip(table.columns, schema, strict=True):
        if field.type == _JSON and not pa.types.is_string(column.type):
            columns.append(column)  # a structured ARRAY or OBJECT arrives as a list or struct already
            continue
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise WarehouseError(
                f"data_model.sql: column {field.name} ({column.type}) cannot be read as {field.type}: {error}"
            ) from None
    return pa.Table.from_arrays(columns, names=schema.names)
