"""The data model: one read-only SELECT, checked by parsing before anything runs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.tokens import Token, Tokenizer, TokenType

from wsync_dagster.model_reach import (
    function_name,
    refused_column,
    refused_function,
    refused_relation,
    unicode_unescaped,
)

# sqlglot warns with the SQL's text when it falls back to a Command; the check reports that itself.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

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
# Table functions that read nothing beyond the query's own values: they generate or unnest rows
# (Snowflake's LATERAL FLATTEN parses as explode).
_GENERATORS = ("range", "generate_series", "unnest", "explode", "posexplode")
# A table name that is a path, URL or glob: DuckDB reads such a name as a file ("replacement scan").
_FILE_NAME = re.compile(r"[./\\:*?\[]")
_WAREHOUSE_ONLY = "a data model reads only the warehouse's tables and views"
# sqlglot's parser recurses some 25 Python frames per level of parentheses or CASE: 24 levels stay well
# inside Python's 1,000 frames under Dagster's own stack, and hand-written models nest far less.
MAX_NESTING = 24
_OPENERS = {TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE}
_CLOSERS = {TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END}
# Chains that parse flat (a::INT::INT…, a.b.c…) are still generated recursively, some 3 frames a level,
# when the model is wrapped to run.
MAX_EXPRESSION_DEPTH = 160
_TOO_DEEP = (
    f"expressions nested deeper than {MAX_EXPRESSION_DEPTH} levels (a long chain of casts, names or "
    "unary operators such as NOT); simplify the SQL"
)
_STRING_TOKENS = {
    TokenType.STRING,
    TokenType.RAW_STRING,
    TokenType.NATIONAL_STRING,
    TokenType.BYTE_STRING,
    TokenType.HEX_STRING,
    TokenType.BIT_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.UNICODE_STRING,
}
# sqlglot's tokenizer says where a quoted token opened that never closes ("Missing ' from 1:7": line, offset).
_MISSING = re.compile(r"Missing (.+) from \d+:(\d+)\Z", re.DOTALL)
_SHOWN_DELIMITERS = ("'", '"', "`", "'''", '"""', "$$")


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
    """The one statement of the SQL; every error says what is wrong and where, never the SQL's text."""
    reader = Dialect.get_or_raise(dialect)
    tokenizer = reader.tokenizer()
    try:
        tokens = tokenizer.tokenize(sql)
    except TokenError as error:
        raise DataModelError(_unreadable(sql, tokenizer, error)) from None
    _check_nesting(sql, tokens)
    try:
        statements = [s for s in reader.parser().parse(tokens, sql) if s is not None]
    except ParseError as error:
        if not error.errors:
            raise DataModelError("the SQL does not parse") from None
        first = error.errors[0]
        raise DataModelError(
            f"the SQL does not parse at line {first['line']}, column {first['col']}: "
            f"{_described(first['description'], tokens)}"
        ) from None
    except RecursionError:
        raise DataModelError(_TOO_DEEP) from None
    if len(statements) != 1:
        raise DataModelError(f"one SELECT statement is allowed, found {len(statements)} statements")
    if _depth(statements[0]) > MAX_EXPRESSION_DEPTH:
        raise DataModelError(_TOO_DEEP)
    return statements[0]


def _unreadable(sql: str, tokenizer: Tokenizer, error: TokenError) -> str:
    """What cannot be split into tokens: an unterminated string, name or comment, and where it opens."""
    cause = str(error.__cause__ or "")
    if missing := _MISSING.match(cause):
        delimiter, offset = missing[1], int(missing[2])
        names = {quote if isinstance(quote, str) else quote[0] for quote in tokenizer.IDENTIFIERS}
        if delimiter.startswith("$"):
            what = "dollar-quoted string"
        else:
            what = "quoted name" if sql[offset : offset + 1] in names else "string"
        closing = f" (no closing {delimiter})" if delimiter in _SHOWN_DELIMITERS else ""
        return f"the SQL does not parse: unterminated {what} from {_position(sql, offset)}{closing}"
    if cause.startswith("Numeric string"):
        return "the SQL does not parse: a hex or bit string holds a character that is not a digit of its base"
    # The token being read when it failed starts after the last whole one.
    after = tokenizer.tokens[-1].end + 1 if tokenizer.tokens else 0
    comment = sql.find("/*", after)
    if comment >= 0:
        return f"the SQL does not parse: unterminated comment from {_position(sql, comment)} (no closing */)"
    return f"the SQL does not parse: it cannot be read from {_position(sql, after)}"


def _check_nesting(sql: str, tokens: list[Token]) -> None:
    """Refuse parentheses, brackets and CASE nested deeper than MAX_NESTING, before the parser recurses into them."""
    depth = 0
    for token in tokens:
        if token.token_type in _OPENERS:
            depth += 1
            if depth > MAX_NESTING:
                raise DataModelError(
                    f"nesting deeper than {MAX_NESTING} levels at {_position(sql, token.start)}: parentheses, "
                    f"brackets and CASE … END nest at most {MAX_NESTING} deep in a data model"
                )
        elif token.token_type in _CLOSERS:
            depth = max(depth - 1, 0)


def _depth(statement: exp.Expression) -> int:
    """How deep the parsed tree is, walked without recursion."""
    deepest, stack = 0, [(statement, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_expressions())
    return deepest


def _described(description: str, tokens: list[Token]) -> str:
    """sqlglot's description, a token it names by repr shown by its text, and string literals masked."""
    for token in tokens:
        if repr(token) in description:
            shown = "a string literal" if token.token_type in _STRING_TOKENS else f"'{token.text}'"
            description = description.replace(repr(token), shown)
    literals = {token.text for token in tokens if token.token_type in _STRING_TOKENS and len(token.text) >= 6}
    for literal in sorted(literals, key=len, reverse=True):
        description = description.replace(literal, "***")
    return description


def _position(sql: str, offset: int) -> str:
    """Line and column of an offset in the SQL, both counted from 1."""
    line_start = sql.rfind("\n", 0, offset) + 1
    return f"line {sql.count(chr(10), 0, offset) + 1}, column {offset - line_start + 1}"


def check_read_only_select(sql: str, dialect: str = "duckdb") -> exp.Query:
    """Parse the model and make sure it is one SELECT (CTEs allowed) that writes nothing."""
    statement = _parse(sql, dialect)
    if not isinstance(statement, exp.Query):
        # A statement sqlglot does not model is a Command; its first word says what it is.
        found = statement.name if isinstance(statement, exp.Command) else statement.key
        raise DataModelError(f"the data model must be a SELECT, found {found.upper()}")
    for node in statement.walk():
        if isinstance(node, _WRITES):
            raise DataModelError(f"the data model must be read-only, found {node.key.upper()}")
        _check_reads_only_the_warehouse(node, dialect)
    return statement


def _check_reads_only_the_warehouse(node: exp.Expression, dialect: str) -> None:
    """Refuse table functions, file paths used as tables, and what reaches outside the warehouse's tables
    in this dialect (wsync_dagster.model_reach)."""
    # TableFromRows: Snowflake's FROM TABLE(fn(…)).
    source = node.this if isinstance(node, exp.Table | exp.Lateral | exp.TableFromRows) else None
    if isinstance(source, exp.Func) and function_name(source) not in _GENERATORS:
        raise DataModelError(
            f"{function_name(source)}() is not allowed: {_WAREHOUSE_ONLY} "
            f"(table functions allowed: {', '.join(_GENERATORS)})"
        )
    if isinstance(source, exp.Identifier) and _FILE_NAME.search(source.name):
        raise DataModelError(f"FROM '{source.name}' reads a file or URL: {_WAREHOUSE_ONLY}")
    if isinstance(node, exp.Table) and (does := refused_relation(node, dialect)):
        name = ".".join(part.name for part in node.parts)
        # A table of the user's own by a catalog's name is read once its schema is named.
        unqualified = not node.db and isinstance(node.this, exp.Identifier)
        own = " (name the schema of a table of your own by that name)" if unqualified else ""
        raise DataModelError(f"FROM {name} is not allowed: it {does}; {_WAREHOUSE_ONLY}{own}")
    if isinstance(node, exp.Column) and refused_column(node, dialect):
        raise DataModelError(f"{node.sql(dialect)} is not allowed: it advances a sequence; {_WAREHOUSE_ONLY}")
    if isinstance(node, exp.Func) and (does := refused_function(node, dialect)) is not None:
        reason = f"it {does}; " if does else ""
        raise DataModelError(f"{function_name(node)}() is not allowed: {reason}{_WAREHOUSE_ONLY}")


def change_model_table(sql: str, dialect: str = "duckdb") -> SourceTable:
    """The one table a CDC model reads: one SELECT of its columns, optionally filtered; else an error."""
    statement = check_read_only_select(sql, dialect)
    if not isinstance(statement, exp.Select) or statement.args.get("with"):
        raise DataModelError("a cdc data model is one SELECT of columns from one table (no UNION, no WITH)")
    for kind, what in (
        (exp.Join, "a JOIN"),
        (exp.Group, "GROUP BY"),
        (exp.AggFunc, "an aggregate"),
        (exp.Window, "a window function"),
        (exp.Distinct, "DISTINCT"),
        (exp.Limit, "LIMIT"),
        (exp.Subquery, "a subquery"),
    ):
        if statement.find(kind):
            raise DataModelError(
                f"a cdc data model is one SELECT of columns from one table, optionally filtered; it has "
                f"{what}: a change feed says what changed in one table's rows, so model the rest in an "
                "incremental or full sync"
            )
    tables = source_tables(sql, dialect)
    if len(tables) != 1:
        raise DataModelError(f"a cdc data model reads one table; this one reads {len(tables)}")
    return tables[0]


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


def windowed_sql(
    sql: str, iterator: str, dialect: str = "duckdb", *, with_nulls: bool = False, outside: bool = False
) -> str:
    """The model wrapped to read one iterator window, bounds as parameters, ordered by the iterator;
    with_nulls also reads the rows without an iterator value, and outside those below or above two more
    bounds (infinity, BC years), so that they are rejected, not missed."""
    inner = check_read_only_select(sql, dialect).sql(dialect=dialect)
    column = _column(iterator, dialect)
    condition = f"model.{column} >= ? AND model.{column} < ?"
    if with_nulls:
        condition = f"({condition}) OR model.{column} IS NULL"
    if outside:
        condition = f"({condition}) OR model.{column} < ? OR model.{column} > ?"
    return f"SELECT * FROM ({inner}) AS model WHERE {condition} ORDER BY model.{column}"


def _column(iterator: str, dialect: str) -> str:
    """The iterator column as the warehouse names it, quoted."""
    # A lower-case name is folded as the warehouse folds the model's unquoted names (Snowflake: to upper
    # case), then quoted; any other name is quoted as it is written.
    name = normalize_identifiers(iterator, dialect).name if _PLAIN_NAME.match(iterator) else iterator
    return exp.to_identifier(name, quoted=True).sql(dialect=dialect)


def extent_sql(sql: str, iterator: str, dialect: str = "duckdb", *, within: bool = False) -> str:
    """The model wrapped to return one row: the lowest and the newest value of its iterator column;
    within: of the values between two bounds given as parameters."""
    inner = check_read_only_select(sql, dialect).sql(dialect=dialect)
    column = f"model.{_column(iterator, dialect)}"
    where = f" WHERE {column} >= ? AND {column} <= ?" if within else ""
    return f"SELECT MIN({column}) AS lowest, MAX({column}) AS newest FROM ({inner}) AS model{where}"


def limited_sql(sql: str, limit: int, dialect: str = "duckdb") -> str:
    """The model wrapped to read at most `limit` rows."""
    inner = check_read_only_select(sql, dialect).sql(dialect=dialect)
    return f"SELECT * FROM ({inner}) AS model LIMIT {int(limit)}"


def probe_sql(sql: str, dialect: str = "duckdb") -> str:
    """The model wrapped to return no rows, only its columns."""
    return limited_sql(sql, 0, dialect)


def redact_literals(message: str, sql: str, dialect: str = "duckdb") -> str:
    """A message with the SQL's string literals masked, so an error never repeats a value the model holds."""
    try:
        statement = sqlglot.parse_one(sql, read=dialect)
    except (SqlglotError, RecursionError):
        return message
    literals = {node.this for node in statement.find_all(exp.Literal) if node.is_string}
    # PostgreSQL's $$…$$, E'…' (held decoded), N'…' and U&'…' (held as written, shown decoded) literals too.
    literals |= {node.this for node in statement.find_all(exp.RawString, exp.ByteString, exp.National)}
    for node in statement.find_all(exp.UnicodeString):
        literals |= {node.this, unicode_unescaped(node.this)}
    # Short literals (codes, flags) hold no secret, and masking them would garble the message.
    for literal in sorted((text for text in literals if len(text) >= 6), key=len, reverse=True):
        message = message.replace(literal, "***")
    return message
