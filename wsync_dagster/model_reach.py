"""What a data model may not call or read, per SQL dialect: whatever reaches outside the model's tables.

A read-only transaction does not stop all of it (PostgreSQL's large-object functions and dblink write from
a SELECT), and Snowflake, BigQuery and Databricks have no such transaction for wsync at all, so the model is
refused by name at validation. The rule: a data model may call functions that compute on the values it
reads; not ones that reach files, other databases or services, the server's settings, credentials or
administration, other sessions, locks, sleeps, sequences, or that run SQL given as text.
"""

from __future__ import annotations

import re

from sqlglot import exp

# Every dialect: files, URLs, other databases, settings, the environment and SQL run from text (DuckDB's
# names, and the prefixes other engines share: read_files, http_request, …).
EVERY_DIALECT = re.compile(
    r"(read_|scan_|parquet_|sniff_|http|iceberg_|delta_|postgres_|mysql_|sqlite_|duckdb_|pragma_|"
    r"query|glob|getenv|current_setting|which_secret|load_).*|.*_scan",
    re.IGNORECASE,
)

_POSTGRES_FUNCTIONS = (
    ("reaches large objects", r"lo_.*|loread|lowrite"),
    ("queries other databases (dblink)", r"dblink.*"),
    ("reads the server's files", r"pg_read_file|pg_read_binary_file|pg_ls_.*|pg_stat_file|pg_file_.*|pg_logdir_ls|pg_current_logfile"),
    ("changes or reads the server's settings", r"set_config|current_setting"),
    ("holds locks, sleeps or stops other sessions", r"pg_advisory.*|pg_try_advisory.*|pg_sleep.*|pg_terminate_backend|pg_cancel_backend|pg_notify"),
    ("administers the server", r"pg_reload_conf|pg_rotate_logfile|pg_promote|pg_switch_wal|pg_create_restore_point|"
     r"pg_(start|stop)_backup|pg_backup_.*|pg_stat_reset.*|pg_.*replication_(slot|origin).*|pg_logical_.*|pg_wal_replay_.*|"
     r"pg_log_backend_memory_contexts|pg_import_system_collations"),
    ("advances transaction ids or sequences", r"txid_.*|pg_current_xact_id.*|nextval|setval"),
    ("runs SQL given as text", r"(query|cursor|table|schema|database)_to_xml.*|ts_stat|ts_rewrite"),
)  # fmt: skip
# Catalog relations that show settings, credentials, large objects or other sessions' queries.
_POSTGRES_RELATIONS = (
    ("shows the server's settings", r"pg_settings|pg_file_settings|pg_hba_file_rules|pg_ident_file_mappings|pg_db_role_setting|pg_config"),
    ("shows credentials", r"pg_shadow|pg_authid|pg_user_mappings?|user_mapping_options|pg_user_info"),
    ("holds large objects", r"pg_largeobject(_metadata)?"),
    ("shows other sessions' queries", r"pg_stat_activity|pg_stat_statements.*"),
)  # fmt: skip
_REDSHIFT_RELATIONS = (
    *_POSTGRES_RELATIONS,
    ("shows other sessions' queries and the cluster's logs", r"(stl|stv|svl|svcs|sys)_.*"),
)
# Schemas the server looks in before the search path, so an unqualified name is the catalog's.
_SYSTEM_SCHEMAS = ("", "pg_catalog", "information_schema")

FUNCTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgres": _POSTGRES_FUNCTIONS,
    "redshift": _POSTGRES_FUNCTIONS,
    "snowflake": (
        ("acts on the account (system functions)", r"system\$.*"),
        ("reaches a stage's files", r"get_presigned_url|build_scoped_file_url|build_stage_file_url|get_stage_location|"
         r"get_relative_path|get_absolute_path"),
    ),
    "bigquery": (("queries other databases (federated queries)", r"external_query|external_object_transform"),),
    "databricks": (
        ("reads the workspace's secrets", r"secret|try_secret|list_secrets"),
        ("runs Java code", r"reflect|try_reflect|java_method"),
        ("calls model-serving endpoints", r"ai_.*"),
    ),
}  # fmt: skip
RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgres": _POSTGRES_RELATIONS,
    "redshift": _REDSHIFT_RELATIONS,
}
# Databases of the account's own usage, audit logs and query history.
_ACCOUNT_CATALOGS = {"snowflake": "snowflake", "databricks": "system"}


_UNICODE_ESCAPE = re.compile(r"\\(\+[0-9A-Fa-f]{6}|[0-9A-Fa-f]{4}|\\)")


def unicode_unescaped(text: str) -> str:
    """A PostgreSQL U&'…' literal or U&"…" identifier as the server decodes it (escape character \\)."""

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code == "\\":
            return code
        point = int(code.lstrip("+"), 16)
        return chr(point) if point <= 0x10FFFF else match.group(0)

    return _UNICODE_ESCAPE.sub(one, text)


def function_name(function: exp.Func) -> str:
    """A function's name in lower case, as the server reads it (U&"lo\\005funlink" is lo_unlink)."""
    if isinstance(function, exp.Anonymous | exp.AnonymousAggFunc):
        return unicode_unescaped(function.name).lower()
    return function.sql_name().lower()


def _reaching(name: str, groups: tuple[tuple[str, str], ...]) -> str | None:
    return next((does for does, names in groups if re.fullmatch(names, name, re.IGNORECASE)), None)


def refused_function(function: exp.Func, dialect: str) -> str | None:
    """What the function does outside the model's tables in this dialect ('' for any dialect); None if nothing."""
    name = function_name(function)
    if does := _reaching(name, FUNCTIONS.get(dialect, ())):
        return does
    return "" if EVERY_DIALECT.fullmatch(name) else None


def refused_relation(table: exp.Table, dialect: str) -> str | None:
    """What a FROM item does outside the model's tables in this dialect; None if it is a table of the warehouse."""
    stage = isinstance(table.this, exp.Var) and table.this.name.startswith("@")
    if dialect == "snowflake" and (stage or isinstance(table.this, exp.DirectoryStage)):
        return "reads a stage's files"
    if table.catalog.lower() == _ACCOUNT_CATALOGS.get(dialect, "\0"):
        return "shows the account's usage and other sessions' queries"
    if table.db.lower() not in _SYSTEM_SCHEMAS or not isinstance(table.this, exp.Identifier):
        return None
    return _reaching(unicode_unescaped(table.name), RELATIONS.get(dialect, ()))


def refused_column(column: exp.Column, dialect: str) -> bool:
    """A Snowflake `sequence.NEXTVAL`: it advances the sequence."""
    return dialect == "snowflake" and bool(column.table) and column.name.lower() == "nextval"
