"""PostgreSQL and Redshift: one reader over libpq that streams the model as Arrow batches in bounded memory.

PostgreSQL streams `COPY (model) TO STDOUT (FORMAT binary)` through ADBC, which decodes rows into Arrow in C++
without a Python object per value. Redshift has no COPY TO STDOUT, so it reads through a psycopg2 server-side
cursor, FETCH_ROWS rows at a time as text that Arrow parses. Both paths get the same Arrow types from one probe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from pydantic import Field
from sqlglot import exp

from wsync_dagster.cancellation import QueryStopped, QueryWatch, watched_query
from wsync_dagster.data_model import SourceTable, probe_sql, redact_literals
from wsync_dagster.gc_pause import cycle_collection_paused
from wsync_dagster.warehouses.base import (
    ConnectionSpec,
    EnvValue,
    Setting,
    WarehouseError,
    query_timeout_error,
    resolve,
)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Rows per FETCH on the cursor path: a Python object per value lives only for this many rows.
FETCH_ROWS = 10_000
# An unreachable host fails after this long instead of the operating system's minutes.
CONNECT_TIMEOUT_S = 30
# SQLSTATE query_canceled: a cancel request (ours, on a stop signal) or the statement timeout.
_QUERY_CANCELED = "57014"
# statement_timeout as SHOW prints it: milliseconds, or a number and a unit.
_SETTING = re.compile(r"(\d+)\s*(ms|s|min|h|d)?\Z")
_SETTING_MS = {None: 1, "ms": 1, "s": 1_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}

_UTC = pa.timestamp("us", tz="UTC")
# PostgreSQL type OIDs → the Arrow type every engine's reader returns for them.
_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    18: pa.string(),  # "char"
    19: pa.string(),  # name
    25: pa.string(),  # text
    1042: pa.string(),  # char(n)
    1043: pa.string(),  # varchar
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: _UTC,
    114: pa.json_(),  # json
    3802: pa.json_(),  # jsonb
    4000: pa.json_(),  # Redshift SUPER, sent as JSON text (no PostgreSQL type has this OID)
    1000: pa.list_(pa.bool_()),
    1005: pa.list_(pa.int16()),
    1007: pa.list_(pa.int32()),
    1016: pa.list_(pa.int64()),
    1021: pa.list_(pa.float32()),
    1022: pa.list_(pa.float64()),
    1009: pa.list_(pa.string()),
    1014: pa.list_(pa.string()),
    1015: pa.list_(pa.string()),
    1182: pa.list_(pa.date32()),
    1115: pa.list_(pa.timestamp("us")),
    1185: pa.list_(_UTC),
}
_NUMERIC, _NUMERIC_ARRAY = 1700, 1231
# The scalar types the cursor path reads as text (arrays arrive as lists, parsed by psycopg2).
_TEXT_OIDS = (*(oid for oid, arrow in _ARROW_TYPES.items() if not pa.types.is_list(arrow)), _NUMERIC)
_MAX_DECIMAL_PRECISION = 38


@dataclass(frozen=True)
class ModelColumn:
    """A column of the model as the reader returns it; `cast` is the SQL type the server converts it to."""

    name: str
    type: pa.DataType
    cast: str | None = None


def model_column(name: str, oid: int, precision: int | None, scale: int | None) -> ModelColumn:
    """The Arrow type of a result column; types outside the map arrive as their text form."""
    if oid == _NUMERIC:
        if precision and 0 < precision <= _MAX_DECIMAL_PRECISION:
            return ModelColumn(name, pa.decimal128(precision, scale or 0))
        # Unbounded or wider than Arrow's decimal128: a double, as DuckDB's postgres scanner reads it.
        return ModelColumn(name, pa.float64(), "DOUBLE PRECISION")
    if oid == _NUMERIC_ARRAY:
        return ModelColumn(name, pa.list_(pa.float64()), "DOUBLE PRECISION[]")
    if oid in _ARROW_TYPES:
        return ModelColumn(name, _ARROW_TYPES[oid])
    return ModelColumn(name, pa.string(), "TEXT")  # uuid, time, interval, enums, bytea, inet, …


class PostgresConnection(ConnectionSpec):
    """A PostgreSQL database (SPEC §2): host, [port], database, user, password, [schema], [sslmode]."""

    dialect = "postgres"
    default_port: ClassVar[int] = 5432
    default_sslmode: ClassVar[str | None] = None  # libpq's own default: prefer
    # PostgreSQL can COPY a query's rows out; Redshift cannot.
    copy_out: ClassVar[bool] = True

    type: Literal["postgres"]
    host: Setting
    port: int | EnvValue | None = None
    database: Setting
    user: Setting
    password: EnvValue
    search_path: Setting | None = Field(None, alias="schema")
    sslmode: Literal[SSL_MODES] | EnvValue | None = None  # type: ignore[valid-type]

    def open(self, base: Path) -> PostgresWarehouse:
        """Connect with the settings resolved now, secrets included."""
        return PostgresWarehouse(self)

    def label(self) -> str:
        """The warehouse as errors name it: type, host, port and database, never a secret."""
        return f"{self.type} warehouse {resolve(self.host, 'host')}:{self.resolved_port()}/{self.resolved_database()}"

    def resolved_port(self) -> int:
        """The port, the warehouse type's default when left out."""
        port = resolve(self.port, "port") if isinstance(self.port, EnvValue) else self.port
        if port is None:
            return self.default_port
        if not str(port).isdigit():
            raise WarehouseError(f"connection.port: {port!r} is not a port number")
        return int(port)

    def resolved_database(self) -> str:
        """The database name."""
        return resolve(self.database, "database")  # type: ignore[return-value]

    def libpq_settings(self) -> dict[str, Any]:
        """The libpq connection keywords, password included: never log or show them."""
        sslmode = resolve(self.sslmode, "sslmode") or self.default_sslmode
        if sslmode is not None and sslmode not in SSL_MODES:
            raise WarehouseError(f"connection.sslmode: {sslmode!r} is not one of {', '.join(SSL_MODES)}")
        settings = {
            "host": resolve(self.host, "host"),
            "port": self.resolved_port(),
            "dbname": self.resolved_database(),
            "user": resolve(self.user, "user"),
            "password": resolve(self.password, "password"),
            "connect_timeout": CONNECT_TIMEOUT_S,
        }
        return settings | ({"sslmode": sslmode} if sslmode else {})

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """database.schema.table; an unqualified table is in `schema`, else public."""
        return (
            table.catalog or _name(self.database),
            table.schema or (_name(self.search_path) if self.search_path else "public"),
            table.name,
        )


class RedshiftConnection(PostgresConnection):
    """An Amazon Redshift database: the PostgreSQL keys, port 5439 and TLS required by default."""

    dialect = "redshift"
    default_port: ClassVar[int] = 5439
    default_sslmode: ClassVar[str | None] = "require"
    copy_out: ClassVar[bool] = False

    type: Literal["redshift"]  # type: ignore[assignment]


def _name(setting: Setting | None) -> str:
    """A name for an asset key: the value, or `$VAR` while the variable is not set."""
    try:
        return resolve(setting, "") or ""
    except WarehouseError:
        return f"${setting.env}"  # type: ignore[union-attr]


class PostgresWarehouse:
    """Reads a PostgreSQL or Redshift database in read-only transactions (BEGIN READ ONLY: psycopg2's for the
    probe and the cursor, an explicit one around the COPY), session time zone UTC."""

    def __init__(self, connection: PostgresConnection):
        import psycopg2
        import psycopg2.extensions

        self.dialect = connection.dialect
        self._copy_out = connection.copy_out
        self._label = connection.label()
        self._query_timeout = connection.query_timeout
        self._timeout_is_ours = False
        self._settings = connection.libpq_settings()
        self._session = _session_sql(connection)
        self._psycopg2 = psycopg2
        try:
            self._connection = psycopg2.connect(**self._settings)
        except psycopg2.Error as error:
            raise WarehouseError(
                f"connection: cannot connect to the {self._label} as {self._settings['user']}: "
                f"{_reason(str(error))}"
            ) from None
        # Scalars stay the server's text, which Arrow parses in C: cheaper than a datetime or Decimal per value.
        as_text = psycopg2.extensions.new_type(_TEXT_OIDS, "WSYNC_TEXT", lambda text, cursor: text)
        psycopg2.extensions.register_type(as_text, self._connection)
        self._connection.set_session(readonly=True)
        # The server cancels a statement at query_timeout even when this process is killed; a lower limit
        # the user set already (PGOPTIONS, the role's or database's setting) stays.
        self._timeout_is_ours = self._statement_timeout_ms() > self._query_timeout / timedelta(milliseconds=1)
        if self._timeout_is_ours:
            self._session.append(
                f"SET statement_timeout = {int(self._query_timeout / timedelta(milliseconds=1))}"
            )
        with self._reporting("; ".join(self._session)), self._connection.cursor() as cursor:
            for statement in self._session:
                cursor.execute(statement)
        self._connection.commit()

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        return pa.schema((c.name, c.type) for c in self._describe(sql))

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows: COPY through ADBC on PostgreSQL, a server-side cursor on Redshift."""
        query = self._bind(sql, params)
        columns = self._describe(query)
        schema = pa.schema((c.name, c.type) for c in columns)
        query = _with_casts(query, columns, self.dialect)
        batches = self._copied_batches if self._copy_out else self._fetched_batches
        for batch in batches(query, schema, batch_size):
            # ADBC sizes its batches in bytes; the caller asked for at most batch_size rows.
            for start in range(0, batch.num_rows, batch_size):
                yield batch.slice(start, batch_size)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def _statement_timeout_ms(self) -> float:
        """The server's statement_timeout for this session in milliseconds; no limit is infinity."""
        with self._reporting("SHOW statement_timeout"), self._connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            (shown,) = cursor.fetchone()
        self._connection.rollback()
        match = _SETTING.match(str(shown).strip())
        if match is None:
            return float("inf")
        milliseconds = int(match[1]) * _SETTING_MS[match[2]]
        return milliseconds or float("inf")

    def _describe(self, sql: str) -> list[ModelColumn]:
        """The columns a query returns, without reading a row."""
        with (
            watched_query(self._connection.cancel) as watch,
            self._reporting(sql, watch),
            self._connection.cursor() as cursor,
        ):
            cursor.execute(probe_sql(sql, self.dialect))
            description = cursor.description
        self._connection.rollback()
        return [model_column(c.name, c.type_code, c.precision, c.scale) for c in description]

    def _bind(self, sql: str, params: Sequence[Any]) -> str:
        """The query with its `?` bounds filled in by psycopg2's own typed quoting (as psycopg2 always binds)."""
        if not params:
            return sql
        with self._connection.cursor() as cursor:
            literals = [
                sqlglot.parse_one(cursor.mogrify("%s", (value,)).decode(), read="postgres")
                for value in params
            ]
        return exp.replace_placeholders(sqlglot.parse_one(sql, read=self.dialect), *literals).sql(
            self.dialect
        )

    def _fetched_batches(self, query: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        """A server-side cursor: the server holds the result; the client fetches FETCH_ROWS at a time as
        Python rows, turned into Arrow at once and joined into batches of batch_size."""
        try:
            with (
                watched_query(self._connection.cancel) as watch,
                self._reporting(query, watch),
                self._connection.cursor(name="wsync_model") as cursor,
            ):
                cursor.execute(query)
                pending: list[pa.RecordBatch] = []
                room = batch_size
                while chunk := _fetch_batch(cursor, schema, min(FETCH_ROWS, room)):
                    pending.append(chunk)
                    room -= chunk.num_rows
                    if room == 0:
                        yield pa.concat_batches(pending)
                        pending, room = [], batch_size
                if pending:
                    yield pa.concat_batches(pending)
        finally:
            self._connection.rollback()

    def _copied_batches(self, query: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        """COPY … TO STDOUT (FORMAT binary) decoded into Arrow by ADBC, streamed as the server sends it."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi
        from psycopg2.extensions import make_dsn

        try:
            # Autocommit: the driver leaves transactions to the statements sent (BEGIN READ ONLY below).
            connection = adbc_driver_postgresql.dbapi.connect(make_dsn(**self._settings), autocommit=True)
        except adbc_driver_manager.Error as error:
            raise WarehouseError(
                f"connection: cannot connect to the {self._label} as {self._settings['user']}: "
                f"{_adbc_reason(error)}"
            ) from None
        watch = None
        try:
            with connection.cursor() as cursor, watched_query(cursor.adbc_cancel) as watch:
                for statement in self._session:
                    cursor.execute(statement)
                # The COPY runs inside an explicit read-only transaction, never in one of its own; closing
                # the connection rolls it back.
                cursor.execute("BEGIN READ ONLY")
                cursor.execute(query)
                for batch in cursor.fetch_record_batch():
                    yield _conformed(batch, schema)
        except (adbc_driver_manager.Error, pa.ArrowException, OSError) as error:  # mid-stream: Arrow's errors
            sqlstate = getattr(error, "sqlstate", None) or _adbc_sqlstate(error)
            raise self._query_error(_adbc_reason(error), sqlstate, query, watch) from None
        finally:
            connection.close()

    @contextmanager
    def _reporting(self, sql: str, watch: QueryWatch | None = None) -> Iterator[None]:
        """Turn psycopg2's errors about running `sql` into one line naming the warehouse."""
        try:
            yield
        except self._psycopg2.Error as error:
            reason = error.diag.message_primary or _reason(str(error))
            raise self._query_error(reason, error.pgcode, sql, watch) from None

    def _query_error(
        self, reason: str, sqlstate: str | None, sql: str, watch: QueryWatch | None
    ) -> BaseException:
        """A query cancelled on a stop signal is an interrupt; one cancelled at query_timeout names the key."""
        # A cancel request: ours on a stop signal, ADBC's own on SIGINT (it cancels and raises no interrupt),
        # or another session's pg_cancel_backend. Each stops the run as Ctrl-C does.
        requested = (
            sqlstate in (_QUERY_CANCELED, None) and "canceling statement due to user request" in reason
        )
        if (watch is not None and watch.stopped) or requested:
            return QueryStopped(f"the query on the {self._label} was cancelled")
        # ADBC's errors from the COPY stream may come without their SQLSTATE: the server's reason says it too.
        cancelled = sqlstate in (_QUERY_CANCELED, None)
        if cancelled and self._timeout_is_ours and "canceling statement due to statement timeout" in reason:
            return query_timeout_error(self._label, self._query_timeout)
        return self._model_error(reason, sql)

    def _model_error(self, reason: str, sql: str) -> WarehouseError:
        """The server's reason without the SQL's string literals: run storage and logs keep every error."""
        message = redact_literals(reason, sql, self.dialect)
        return WarehouseError(f"data_model.sql: the {self._label} cannot run it: {message}")


def _session_sql(connection: PostgresConnection) -> list[str]:
    """Session settings for every connection: UTC (naive timestamps are UTC), read-only, the search path."""
    statements = ["SET TIME ZONE 'UTC'"]
    if connection.copy_out:
        statements.append("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    if connection.search_path:
        schema = exp.to_identifier(resolve(connection.search_path, "schema"), quoted=True)
        statements.append(f"SET search_path TO {schema.sql(connection.dialect)}")
    return statements


def _with_casts(query: str, columns: list[ModelColumn], dialect: str) -> str:
    """The query with the columns that need it converted by the server, so both read paths see one type."""
    if not any(c.cast for c in columns):
        return query
    names = [exp.to_identifier(c.name, quoted=True).sql(dialect) for c in columns]
    select = ", ".join(
        f"CAST({name} AS {c.cast}) AS {name}" if c.cast else name
        for name, c in zip(names, columns, strict=True)
    )
    return f"SELECT {select} FROM ({query}) AS model_columns"


def _fetch_batch(cursor, schema: pa.Schema, batch_size: int) -> pa.RecordBatch | None:
    """The cursor's next rows as one batch of the model's types (their tuples freed on return); None at the end."""
    with cycle_collection_paused():
        rows = cursor.fetchmany(batch_size)
        if not rows:
            return None
        columns = [
            _column(values, field) for values, field in zip(zip(*rows, strict=True), schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=schema)


def _column(values: tuple, field: pa.Field) -> pa.Array:
    """One column of fetched rows: lists as psycopg2 parsed them, scalars from their text."""
    if pa.types.is_list(field.type):
        return pa.array(values, field.type)
    text = pa.array(values, pa.string())
    if pa.types.is_boolean(field.type):
        return pc.equal(text, "t")
    if isinstance(field.type, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(field.type, text)
    try:
        return text.cast(field.type)
    except pa.ArrowInvalid as error:
        raise WarehouseError(
            f"data_model.sql: column {field.name} cannot be read as {field.type}: {error}"
        ) from None


def _conformed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """An ADBC batch in the model's types: NUMERIC arrives as text (an opaque extension) to be cast to decimal."""
    arrays = []
    for array, field in zip(batch.columns, schema, strict=True):
        array = _unwrapped_times(array)
        if array.type != field.type:
            if isinstance(array.type, pa.ExtensionType) and not isinstance(field.type, pa.ExtensionType):
                array = array.storage
            array = array.cast(field.type)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ADBC moves times and dates from PostgreSQL's epoch (2000) to Unix's without checking for overflow: infinity,
# -infinity and times past year 294246 arrive wrapped round to the far past. Put them back as DuckDB holds
# them (infinity, -infinity, its last time), so that the mapping rejects them by what they are.
_EPOCH_SHIFT = {pa.int64(): 946_684_800_000_000, pa.int32(): 10_957}  # µs, days


def _unwrapped_times(array: pa.Array) -> pa.Array:
    """A timestamp or date column with ADBC's wrapped infinities and far-future times put back."""
    if pa.types.is_timestamp(array.type):
        storage = pa.int64()
    elif pa.types.is_date32(array.type):
        storage = pa.int32()
    else:
        return array
    values = array.view(storage)
    top = 2 ** (storage.bit_width - 1) - 1
    floor = -top - 1 + _EPOCH_SHIFT[storage]  # below the earliest time PostgreSQL holds (4714 BC)
    lowest = pc.min(values).as_py()
    if lowest is None or lowest >= floor:
        return array
    fixed = pc.if_else(
        pc.equal(values, floor - 1),
        top,
        pc.if_else(pc.equal(values, floor), -top, pc.if_else(pc.less(values, floor), top - 1, values)),
    )
    return fixed.cast(storage).view(array.type)


def _reason(message: str) -> str:
    """The server's or libpq's reason on one line, without the preamble, the severity or the query quoted."""
    lines = message.split("Query was:", 1)[0].strip().splitlines()
    line = " ".join(lines[0].split()) if lines else message
    for marker in ("ERROR: ", "FATAL: ", " failed: "):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return line


def _adbc_sqlstate(error: Exception) -> str | None:
    """The SQLSTATE of an ADBC error, from its diagnostics when the error does not carry it."""
    details = dict(getattr(error, "details", None) or [])
    code = details.get(b"PG_DIAG_SQLSTATE") or details.get("PG_DIAG_SQLSTATE")
    return code.decode(errors="replace") if isinstance(code, bytes) else code


def _adbc_reason(error: Exception) -> str:
    """The server's message from an ADBC error (its diagnostics, when it has them)."""
    details = dict(getattr(error, "details", None) or [])
    if primary := details.get(b"PG_DIAG_MESSAGE_PRIMARY"):
        return primary.decode(errors="replace")
    return _reason(str(error))
