"""SPEC §2 data_model: a model reads only the warehouse, never a file, URL, setting or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.warehouses import WarehouseError
from wsync_dagster.warehouses.duckdb import DuckDBWarehouse
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

CANARY = "canary-line-that-only-a-file-holds"

ONLY = "a data model reads only the warehouse's tables and views"
TABLE_FUNCTION = (
    f"is not allowed: {ONLY} (table functions allowed: range, generate_series, unnest, explode, posexplode)"
)
FUNCTION = f"is not allowed: {ONLY}"
FILE = f"reads a file or URL: {ONLY}"

# (data model, what the error says after "data_model.sql: ")
OUTSIDE_THE_WAREHOUSE = [
    ("SELECT * FROM read_csv('{file}')", f"read_csv() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_csv_auto('{file}')", f"read_csv_auto() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_text('{file}')", f"read_text() {TABLE_FUNCTION}"),
    ("SELECT content AS customer_id FROM read_blob('{file}')", f"read_blob() {TABLE_FUNCTION}"),
    ("SELECT * FROM glob('/*')", f"glob() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_parquet('{file}')", f"read_parquet() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_json('{file}')", f"read_json() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_json_auto('{file}')", f"read_json_auto() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_ndjson('{file}')", f"read_ndjson() {TABLE_FUNCTION}"),
    ("SELECT * FROM parquet_scan('{file}')", f"parquet_scan() {TABLE_FUNCTION}"),
    ("SELECT * FROM sqlite_scan('{file}', 'users')", f"sqlite_scan() {TABLE_FUNCTION}"),
    ("SELECT * FROM postgres_scan('host=db', 'public', 'users')", f"postgres_scan() {TABLE_FUNCTION}"),
    ("SELECT * FROM sniff_csv('{file}')", f"sniff_csv() {TABLE_FUNCTION}"),
    ("SELECT * FROM query('SELECT 1')", f"query() {TABLE_FUNCTION}"),
    ("SELECT * FROM duckdb_settings()", f"duckdb_settings() {TABLE_FUNCTION}"),
    ("SELECT * FROM read_csv('https://example.com/users.csv')", f"read_csv() {TABLE_FUNCTION}"),
    ("SELECT u.* FROM crm.users AS u, LATERAL read_csv(u.email)", f"read_csv() {TABLE_FUNCTION}"),
    ("SELECT customer_id, (SELECT count(*) FROM read_text('{file}')) AS n FROM crm.users", f"read_text() {TABLE_FUNCTION}"),
    ("SELECT customer_id, read_text('{file}') AS n FROM crm.users", f"read_text() {FUNCTION}"),
    ("SELECT customer_id, getenv('HOME') AS home FROM crm.users", f"getenv() {FUNCTION}"),
    ("SELECT customer_id, current_setting('home_directory') AS h FROM crm.users", f"current_setting() {FUNCTION}"),
    ("SELECT * FROM '{file}'", f"FROM '{{file}}' {FILE}"),
    ("FROM 'users.csv'", f"FROM 'users.csv' {FILE}"),
    ("SELECT * FROM 'https://example.com/users.parquet'", f"FROM 'https://example.com/users.parquet' {FILE}"),
    ("SELECT * FROM 's3://bucket/users/*.parquet'", f"FROM 's3://bucket/users/*.parquet' {FILE}"),
]  # fmt: skip
STATEMENTS = ["ATTACH '{file}' AS other", "INSTALL httpfs", "LOAD httpfs", "COPY crm.users TO '{file}'",
              "PRAGMA database_list", "SET threads = 1", "CALL pragma_version()"]  # fmt: skip


@pytest.fixture
def outside_file(tmp_path: Path) -> Path:
    """A file beside the warehouse that no data model may read."""
    path = tmp_path / "outside.csv"
    path.write_text(f"line\n{CANARY}\n")
    return path


@pytest.mark.parametrize(
    ("sql", "message"), OUTSIDE_THE_WAREHOUSE, ids=[sql for sql, _ in OUTSIDE_THE_WAREHOUSE]
)
def test_a_model_that_reaches_outside_the_warehouse_is_refused(
    write_sync, tmp_path, outside_file, sql, message
):
    path = write_sync(
        user_sync(tmp_path / "w.duckdb", data_model={"sql": sql.replace("{file}", str(outside_file))})
    )
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(error.value) == f"{path}: data_model.sql: {message.replace('{file}', str(outside_file))}"


@pytest.mark.parametrize("statement", STATEMENTS)
def test_a_statement_other_than_select_is_refused_by_name(write_sync, tmp_path, outside_file, statement):
    path = write_sync(
        user_sync(tmp_path / "w.duckdb", data_model={"sql": statement.replace("{file}", str(outside_file))})
    )
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    found = statement.split()[0]
    assert str(error.value) == f"{path}: data_model.sql: the data model must be a SELECT, found {found}"


def test_generated_rows_and_warehouse_tables_stay_allowed(write_sync, tmp_path):
    model = (
        "WITH days AS (SELECT * FROM range(3) AS t(d)) "
        "SELECT u.customer_id, u.email, u.updated_at, d.d, x.tag FROM crm.users AS u "
        "CROSS JOIN days AS d CROSS JOIN unnest(['a', 'b']) AS x(tag) WHERE u.email GLOB '*@example.com'"
    )
    assert load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", data_model={"sql": model})))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('{file}')",
        "SELECT * FROM read_text('{file}')",
        "SELECT * FROM read_blob('{file}')",
        "SELECT * FROM '{file}'",
        "SELECT * FROM glob('{folder}/*')",
        "SELECT * FROM read_json_auto('{file}')",
        "SELECT * FROM read_csv('https://example.com/users.csv')",
    ],
)
def test_the_warehouse_reader_refuses_files_even_when_the_sql_check_is_bypassed(
    make_warehouse, outside_file, sql
):
    warehouse = DuckDBWarehouse(make_warehouse(USERS_SQL))
    query = sql.replace("{file}", str(outside_file)).replace("{folder}", str(outside_file.parent))
    try:
        with pytest.raises(WarehouseError, match=r"data_model.sql: the warehouse cannot run it: .*disabled"):
            rows = [row for batch in warehouse.read_batches(query) for row in batch.to_pylist()]
            assert CANARY not in str(rows)  # reached only if DuckDB read the file
    finally:
        warehouse.close()


def test_the_warehouse_reader_cannot_attach_a_database_or_turn_access_back_on(make_warehouse):
    other = make_warehouse("CREATE TABLE secrets AS SELECT 'x' AS s", name="other.duckdb")
    warehouse = DuckDBWarehouse(make_warehouse(USERS_SQL))
    try:
        with pytest.raises(WarehouseError, match=r"disabled"):
            list(warehouse.read_batches(f"ATTACH '{other}' AS other"))
        with pytest.raises(WarehouseError, match=r"Cannot change configuration option"):
            list(warehouse.read_batches("SET enable_external_access = true"))
    finally:
        warehouse.close()


# Each engine's own ways out, refused in its dialect (wsync_dagster.model_reach); PostgreSQL's are tried on a
# real server in test_postgres_model_reach.py.
SNOWFLAKE = {"type": "snowflake", "account": "xy12345", "user": "WSYNC", "password": {"env": "SF_PASSWORD"},
             "warehouse": "COMPUTE_WH", "database": "ANALYTICS"}
BIGQUERY = {"type": "bigquery", "project": "acme-analytics"}
DATABRICKS = {"type": "databricks", "server_hostname": "dbc.example.com", "http_path": "/sql/1.0/warehouses/x",
              "access_token": {"env": "DATABRICKS_TOKEN"}}
REDSHIFT = {"type": "redshift", "host": "cluster.example.com", "database": "dev", "user": "wsync",
            "password": {"env": "REDSHIFT_PASSWORD"}}
ENGINE_WAYS_OUT = [
    (SNOWFLAKE, "SELECT customer_id, updated_at, SYSTEM$WAIT(60) AS w FROM crm.users",
     f"system$wait() is not allowed: it acts on the account (system functions); {ONLY}"),
    (SNOWFLAKE, "SELECT $1 AS customer_id, $2 AS updated_at FROM @crm.exports/users.csv",
     f"FROM @crm.exports/users.csv is not allowed: it reads a stage's files; {ONLY}"),
    (SNOWFLAKE, "SELECT relative_path AS customer_id, last_modified AS updated_at FROM DIRECTORY(@crm.exports)",
     f"FROM @crm.exports is not allowed: it reads a stage's files; {ONLY}"),
    (SNOWFLAKE, "SELECT * FROM TABLE(INFER_SCHEMA(LOCATION => '@crm.exports'))",
     f"infer_schema() is not allowed: {ONLY} (table functions allowed: range, generate_series, unnest, explode, "
     "posexplode)"),
    (SNOWFLAKE, "SELECT customer_id, updated_at, GET_PRESIGNED_URL(@crm.exports, 'users.csv') AS u FROM crm.users",
     f"get_presigned_url() is not allowed: it reaches a stage's files; {ONLY}"),
    (SNOWFLAKE, "SELECT customer_id, updated_at, crm.ids.NEXTVAL AS n FROM crm.users",
     f"crm.ids.NEXTVAL is not allowed: it advances a sequence; {ONLY}"),
    (SNOWFLAKE, "SELECT user_name AS customer_id, start_time AS updated_at FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY",
     f"FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY is not allowed: it shows the account's usage and other "
     f"sessions' queries; {ONLY}"),
    (BIGQUERY, "SELECT * FROM EXTERNAL_QUERY('eu.crm', 'SELECT customer_id, updated_at FROM users')",
     f"external_query() is not allowed: {ONLY} (table functions allowed: range, generate_series, unnest, "
     "explode, posexplode)"),
    (BIGQUERY, "SELECT customer_id, updated_at, EXTERNAL_OBJECT_TRANSFORM('x', ['SIGNED_URL']) AS u FROM crm.users",
     f"external_object_transform() is not allowed: it queries other databases (federated queries); {ONLY}"),
    (DATABRICKS, "SELECT * FROM read_files('s3://bucket/users/')",
     f"read_files() is not allowed: {ONLY} (table functions allowed: range, generate_series, unnest, explode, "
     "posexplode)"),
    (DATABRICKS, "SELECT customer_id, updated_at, read_kafka('broker') AS k FROM crm.users",
     f"read_kafka() is not allowed: {ONLY}"),
    (DATABRICKS, "SELECT customer_id, updated_at, http_request(conn => 'crm', method => 'GET') AS r FROM crm.users",
     f"http_request() is not allowed: {ONLY}"),
    (DATABRICKS, "SELECT customer_id, updated_at, secret('crm', 'api_key') AS s FROM crm.users",
     f"secret() is not allowed: it reads the workspace's secrets; {ONLY}"),
    (DATABRICKS, "SELECT customer_id, updated_at, reflect('java.lang.System', 'getenv', 'HOME') AS h FROM crm.users",
     f"reflect() is not allowed: it runs Java code; {ONLY}"),
    (DATABRICKS, "SELECT customer_id, updated_at, ai_query('endpoint', email) AS a FROM crm.users",
     f"ai_query() is not allowed: it calls model-serving endpoints; {ONLY}"),
    (DATABRICKS, "SELECT executed_by AS customer_id, start_time AS updated_at FROM system.query.history",
     f"FROM system.query.history is not allowed: it shows the account's usage and other sessions' queries; {ONLY}"),
    (REDSHIFT, "SELECT userid AS customer_id, starttime AS updated_at FROM stl_query",
     f"FROM stl_query is not allowed: it shows other sessions' queries and the cluster's logs; {ONLY} "
     "(name the schema of a table of your own by that name)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("connection", "sql", "message"), ENGINE_WAYS_OUT, ids=[message.split(" is")[0] for *_, message in ENGINE_WAYS_OUT]
)
def test_each_engines_own_ways_out_are_refused_in_its_dialect(write_sync, tmp_path, connection, sql, message):
    path = write_sync(user_sync(tmp_path / "w.duckdb", connection=connection, data_model={"sql": sql}))
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(error.value) == f"{path}: data_model.sql: {message}"


@pytest.mark.parametrize(
    ("connection", "sql"),
    [
        (REDSHIFT, "SELECT customer_id, updated_at FROM crm.stl_query"),
        (SNOWFLAKE, "SELECT customer_id, updated_at FROM crm.users WHERE email LIKE '%@%'"),
        (BIGQUERY, "SELECT customer_id, updated_at FROM pg_settings"),
        (SNOWFLAKE, "SELECT u.customer_id, u.updated_at, f.value AS tag FROM crm.users AS u, "
                    "TABLE(FLATTEN(input => u.tags)) AS f"),
    ],
    ids=["own_table_named_like_a_catalog", "at_sign_in_a_string", "postgres_catalog_name_on_bigquery",
         "snowflake_flatten"],
)  # fmt: skip
def test_a_name_refused_in_one_dialect_or_place_stays_allowed_elsewhere(write_sync, tmp_path, connection, sql):
    assert load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", connection=connection, data_model={"sql": sql})))


def test_a_model_nested_to_the_limit_validates_runs_and_loads_in_the_code_location(make_warehouse, write_sync, capsys):
    from dagster import AssetKey

    from wsync_dagster.cli import main
    from wsync_dagster.data_model import MAX_NESTING
    from wsync_dagster_tests.conftest import code_location

    # Function calls cost the parser the most stack per level: the deepest model allowed still runs everywhere.
    plan = "lower(" * (MAX_NESTING - 1) + "CASE WHEN plan IS NULL THEN 'free' ELSE plan END" + ")" * (MAX_NESTING - 1)
    sql = f"SELECT customer_id, email, first_name, {plan} AS plan, updated_at FROM crm.users"
    write_sync(user_sync(make_warehouse(USERS_SQL), data_model={"sql": sql}))
    assert main(["validate"]) == 0
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    assert "crm_users: partitions 2024-01-01" in capsys.readouterr().out
    assert AssetKey(["crm_users", "delivery"]) in {node.key for node in code_location().resolve_asset_graph().asset_nodes}

    write_sync(user_sync(make_warehouse(USERS_SQL, "other.duckdb"), data_model={"sql": sql.replace("lower(", "lower((", 1)}))
    assert main(["validate"]) == 1
    assert f"data_model.sql: nesting deeper than {MAX_NESTING} levels" in capsys.readouterr().err
