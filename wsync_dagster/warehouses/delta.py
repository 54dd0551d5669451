"""Delta Lake warehouse: Delta tables by path or object-store URI, read with delta-rs and queried with DuckDB."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import field_validator
from sqlglot import exp

from wsync_dagster.data_model import SourceTable, source_tables
from wsync_dagster.warehouses.base import (
    DEFAULT_QUERY_TIMEOUT,
    ConnectionSpec,
    EnvValue,
    Setting,
    WarehouseError,
    one_line,
    resolve,
)
from wsync_dagster.warehouses.duckdb import DuckDBWarehouse

# Storage options that are credentials under names spec.py's secret rule does not know (Azure's keys).
_SECRET_OPTION = re.compile(r"account_key|sas_key|master_key", re.IGNORECASE)
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CAUSE_ARROW = re.compile(r"^\s*↳+", re.MULTILINE)
# The model reaches the named tables only: no files, URLs, extensions or variables of this process.
_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
}


def table_name(name: str) -> tuple[str, ...]:
    """A `tables` key as its parts (catalog, schema, table), lower-cased as DuckDB resolves them."""
    try:
        table = exp.to_table(name, dialect="duckdb")
    except Exception:  # sqlglot raises several error types for a name that does not parse
        table = None
    if table is None or not all(isinstance(part, exp.Identifier) for part in table.parts):
        raise ValueError(f"'{name}' is not a table name: write table, schema.table or catalog.schema.table")
    return tuple(part.name.lower() for part in table.parts)


class DeltaConnection(ConnectionSpec):
    """Delta tables named as the data model's SQL names them, each at a path or object-store URI."""

    dialect = "duckdb"  # the model runs in DuckDB over the tables' Arrow datasets
    change_feed: ClassVar[bool] = True  # Delta's Change Data Feed, read by wsync_dagster.changes
    type: Literal["delta"]
    tables: dict[str, Setting]
    storage_options: dict[str, Setting] = {}

    @field_validator("tables")
    @classmethod
    def _table_names(cls, tables: dict[str, Setting]) -> dict[str, Setting]:
        if not tables:
            raise ValueError("name at least one Delta table: {schema.table: path or URI}")
        for name in tables:
            table_name(name)
        return tables

    @field_validator("storage_options")
    @classmethod
    def _secret_options(cls, options: dict[str, Setting]) -> dict[str, Setting]:
        for key, value in options.items():
            if _SECRET_OPTION.search(key) and not isinstance(value, EnvValue):
                raise ValueError(f"{key} is a secret: write it as {{env: VAR_NAME}}, never in the sync file")
        return options

    def open(self, base: Path) -> DeltaWarehouse:
        """Open each Delta table at its current version."""
        locations = {table_name(name): self._location(name, base) for name in self.tables}
        options = {
            key: resolve(value, f"storage_options.{key}") for key, value in self.storage_options.items()
        }
        return DeltaWarehouse(locations, options, self.query_timeout)  # type: ignore[arg-type]

    def location(self, table: SourceTable, base: Path) -> tuple[str, dict[str, str]]:
        """Where the Delta table the SQL names lies, and the storage options to reach it."""
        wanted = tuple(part.lower() for part in table.path)
        name = next((name for name in self.tables if table_name(name)[-len(wanted) :] == wanted), None)
        if name is None:
            known = ", ".join(sorted(self.tables))
            raise WarehouseError(
                f"connection.tables: the data model reads {'.'.join(table.path)}, which is not one of the "
                f"Delta tables of the connection ({known})"
            )
        options = {
            key: resolve(value, f"storage_options.{key}") for key, value in self.storage_options.items()
        }
        return self._location(name, base), options  # type: ignore[return-value]

    def _location(self, name: str, base: Path) -> str:
        """A URI as written; a local path relative to the sync file's folder."""
        location = resolve(self.tables[name], f"tables.{name}")
        if _URI.match(location):  # type: ignore[arg-type]
            return location  # type: ignore[return-value]
        path = Path(location)  # type: ignore[arg-type]
        return str(path if path.is_absolute() else (base / path).resolve())

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """The name the SQL uses, in DuckDB's defaults: catalog `delta`, schema `main`."""
        return (table.catalog or "delta", table.schema or "main", table.name)


class DeltaWarehouse(DuckDBWarehouse):
    """The DuckDB reader over an in-memory database: each Delta table a view on its Arrow dataset.

    DuckDB scans the datasets batch by batch (projections and filters pushed down), so a read holds a
    few batches, not the table. The DuckDB connection cannot reach files, URLs or settings: the model
    reads the named Delta tables and nothing else.
    """

    where = "Delta tables"

    def __init__(
        self,
        locations: dict[tuple[str, ...], str],
        storage_options: dict[str, str],
        query_timeout: timedelta = DEFAULT_QUERY_TIMEOUT,
    ):
        self.query_timeout = query_timeout
        self._open({name: _dataset(name, location, storage_options) for name, location in locations.items()})

    @classmethod
    def over(cls, sources: dict[tuple[str, ...], object]) -> DeltaWarehouse:
        """The same locked-down reader over Arrow data already at hand (a table's changes, a past version)."""
        warehouse = cls.__new__(cls)
        warehouse._open(sources)
        return warehouse

    def _open(self, sources: dict[tuple[str, ...], object]) -> None:
        import duckdb

        self._error = duckdb.Error
        self._connection = duckdb.connect(":memory:", config=_CONFIG)
        try:
            for catalog in sorted({name[0] for name in sources if len(name) == 3}):
                self._connection.execute(f"ATTACH ':memory:' AS {_quoted(catalog)}")
            for index, (name, source) in enumerate(sources.items()):
                self._add_view(name, f"delta_{index}", source)
            self._connection.execute("SET TimeZone = 'UTC'")  # naive timestamps are UTC, as window bounds are
            self._connection.execute("SET lock_configuration = true")
        except BaseException:
            self._connection.close()
            raise
        self._tables = set(sources)

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe, once its tables are known to be Delta tables here."""
        self._check_tables(sql)
        return super().columns(sql)

    def _check_tables(self, sql: str) -> None:
        """Every table the model reads is one of the connection's Delta tables."""
        for table in source_tables(sql, self.dialect):
            if tuple(part.lower() for part in table.path) not in self._tables:
                known = ", ".join(sorted(".".join(name) for name in self._tables))
                raise WarehouseError(
                    f"connection.tables: the data model reads {'.'.join(table.path)}, which is not one of "
                    f"the Delta tables of the connection ({known})"
                )

    def _add_view(self, name: tuple[str, ...], arrow_name: str, dataset) -> None:
        self._connection.register(arrow_name, dataset)
        schema = name[:-1] or ("main",)
        if schema != ("main",):
            self._connection.execute(f"CREATE SCHEMA IF NOT EXISTS {'.'.join(map(_quoted, schema))}")
        view = ".".join(map(_quoted, name))
        self._connection.execute(f"CREATE VIEW {view} AS SELECT * FROM {arrow_name}")


def _dataset(name: tuple[str, ...], location: str, storage_options: dict[str, str]):
    """The Delta table's current version as a pyarrow dataset (its files, read lazily)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    where = f"connection.tables.{'.'.join(name)}: Delta table at {location}"
    try:
        return DeltaTable(location, storage_options=storage_options or None).to_pyarrow_dataset()
    except TableNotFoundError:
        raise WarehouseError(f"{where}: there is no Delta table there") from None
    except (DeltaError, OSError) as error:
        raise WarehouseError(f"{where}: cannot be read: {error_line(error)}") from None


def _quoted(identifier: str) -> str:
    return exp.to_identifier(identifier, quoted=True).sql(dialect="duckdb")


def error_line(error: Exception) -> str:
    """delta-rs errors come as an indented, coloured chain of causes: one line of them, joined by ': '."""
    return one_line(_CAUSE_ARROW.sub("", _ANSI.sub("", str(error))), ": ") or type(error).__name__
