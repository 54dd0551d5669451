"""The data model: one read-only SELECT, checked by parsing before anything runs."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

_WRITES = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Command,
    exp.Into,
    exp.Copy,
    exp.TruncateTable,
)
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


class DataModelError(ValueError):
    """A data model that is not a single read-only SELECT."""


@dataclass(frozen=True)
class SourceTable:
    """A warehouse table or view that a data model reads."""

    catalog: str
    schema: str
    name: str

    @property
    def path(self) -> tuple[str, ...]:
        """Its qualified name, parts that were given only."""
        return tuple(p for p in (self.catalog, self.schema, self.name) if p)


def _parse(sql: str, dialect: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as error:
        description = error.errors[0]["description"] if error.errors else str(error)
        raise DataModelError(f"the SQL does not parse: {description}") from None
    if len(statements) != 1:
        raise DataModelError(f"one SELECT statement is allowed, found {len(statements)} statements")
    return statements[0]


def check_read_only_select(sql: str, dialect: str = "duckdb") -> exp.Query:
    """Parse the model and make sure it is one SELECT (CTEs allowed) that writes nothing."""
    statement = _parse(sql, dialect)
    if not isinstance(statement, exp.Query):
        raise DataModelError(f"the data model must be a SELECT, found {statement.key.upper()}")
    for node in statement.walk():
        if isinstance(node, _WRITES):
            raise DataModelError(f"the data model must be read-only, found {node.key.upper()}")
    return statement


def source_tables(sql: str, dialect: str = "duckdb") -> list[SourceTable]:
    """The warehouse tables the model reads, without its own CTE names."""
    statement = check_read_only_select(sql, dialect)
    ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    tables: dict[tuple[str, str, str], SourceTable] = {}
    for table in statement.find_all(exp.Table):
        if not table.name or (not table.db and table.name.lower() in ctes):
            continue
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function such as range() reads no warehouse table
        source = SourceTable(table.catalog, table.db, table.name)
        tables[(source.catalog.lower(), source.schema.lower(), source.name.lower())] = source
    return sorted(tables.values(), key=lambda t: t.path)


def windowed_sql(sql: str, iterator: str, dialect: str = "duckdb") -> str:
    """The model wrapped to read one iterator window, bounds as parameters, ordered by the iterator."""
    inner = check_read_only_select(sql, dialect).sql(dialect=dialect)
    # A lower-case name is folded as the warehouse folds the model's unquoted names (Snowflake: to upper
    # case), then quoted; any other name is quoted as it is written.
    name = normalize_identifiers(iterator, dialect).name if _PLAIN_NAME.match(iterator) else iterator
    column = exp.to_identifier(name, quoted=True).sql(dialect=dialect)
    return (
        f"SELECT * FROM ({inner}) AS model WHERE model.{column} >= ? AND model.{column} < ? "
        f"ORDER BY model.{column}"
    )


def limited_sql(sql: str, limit: int, dialect: str = "duckdb") -> str:
    """The model wrapped to read at most `limit` rows."""
    inner = check_read_only_select(sql, dialect).sql(dialect=dialect)
    return f"SELECT * FROM ({inner}) AS model LIMIT {int(limit)}"


def probe_sql(sql: str, dialect: str = "duckdb") -> str:
    """The model wrapped to return no rows, only its columns."""
    return limited_sql(sql, 0, dialect)
