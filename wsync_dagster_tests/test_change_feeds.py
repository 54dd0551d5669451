"""Change feeds beyond Delta: Snowflake change tracking and Databricks' `table_changes`.

Neither runs here as its vendor runs it: fakesnow does not parse CHANGES or change tracking, and Delta on
Spark needs jars from Maven (NOTES.md). So each is tested in the parts that do run:
- the SQL wsync sends is parsed with sqlglot in the warehouse's own dialect;
- what is real in the stand-ins is run: SHOW TABLES on fakesnow (change tracking reads OFF there), SHOW
  TBLPROPERTIES on local Spark, and the rows a run maps from the feed, computed by wsync's SQL on
  fakesnow or Spark over a table holding what CHANGES or table_changes return, the latter from a real
  Delta table's feed, compared with the Delta path;
- the table metadata a feed reads (INFORMATION_SCHEMA.TABLES, DESCRIBE HISTORY) comes from a mocked
  warehouse in the tests whose names say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
from deltalake import DeltaTable, write_deltalake
from sqlglot import exp

from wsync_dagster.changes import ChangeFeedError, VersionWindow, change_feed, change_rows_sql
from wsync_dagster.changes import databricks as databricks_feed
from wsync_dagster.changes import snowflake as snowflake_feed
from wsync_dagster.changes.delta import DeltaFeed
from wsync_dagster.cli import main
from wsync_dagster.iterators import epoch_micros
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.engines.databricks_sql_on_local_spark import (
    LocalSparkEngine,
    standing_in_for_databricks,
)
from wsync_dagster_tests.engines.databricks_sql_on_local_spark import connection as databricks_connection
from wsync_dagster_tests.engines.snowflake import SnowflakeEngine, start

MODEL = "SELECT customer_id, email, plan FROM crm.users"
IDENTITIES = ["customer_id", "email"]  # in priority order
FILTERED = "SELECT customer_id, email, plan FROM crm.users WHERE plan <> 'test'"
CDF = {"delta.enableChangeDataFeed": "true"}
# 2024-11-24 09:00 and 10:00 UTC in epoch µs: a Snowflake range of one hour.
NINE, TEN = 1_732_438_800_000_000, 1_732_442_400_000_000


def cdc_sync(connection: dict, sql: str = MODEL, **sync: object) -> dict:
    return {
        "name": "crm_changes",
        "data_type": "user",
        "connection": connection,
        "data_model": {"sql": sql},
        "sync": {"mode": "cdc", **sync},
    }


def profile(customer_id: str) -> dict | None:
    with open_profile_store(profile_store_url()) as store:
        found = store.profile("customer_id", customer_id)
    return found and found["attributes"]


def users(*rows: tuple[str, str, str]) -> pa.Table:
    return pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(("customer_id", "email", "plan"))}
    )


# Snowflake


@pytest.fixture
def snowflake(tmp_path: Path) -> Iterator[SnowflakeEngine]:
    yield from start(tmp_path)


def test_snowflake_changes_sql_parses_as_a_changes_clause_from_just_before_first_to_last():
    """AT is FIRST - 1 µs, so consecutive ranges meet; END is LAST; the metadata columns leave `*`."""
    window = VersionWindow(NINE + 1, TEN)
    model = snowflake_feed.changes_sql("SELECT u.customer_id, * FROM crm.users AS u", "db.crm.users", window)
    rows = change_rows_sql(
        model, ["customer_id", "email", "Plan"], IDENTITIES, events=False, dialect="snowflake"
    )
    parsed = sqlglot.parse_one(rows, read="snowflake")
    table = parsed.find(exp.Table)
    assert table is not None and table.sql("snowflake").startswith(
        "db.crm.users CHANGES (INFORMATION => DEFAULT)"
    )
    changes = table.args["changes"]
    assert changes.args["information"].name == "DEFAULT"
    at, end = changes.args["at_before"], changes.args["end"]
    assert (at.name, at.args["kind"], end.args["kind"]) == ("AT", "TIMESTAMP", "TIMESTAMP")
    assert at.expression.sql("snowflake") == "CAST('2024-11-24 09:00:00+00:00' AS TIMESTAMPTZ)"
    assert end.expression.sql("snowflake") == "CAST('2024-11-24 10:00:00+00:00' AS TIMESTAMPTZ)"
    assert table.alias == "u"
    star = next(s for s in parsed.find_all(exp.Star) if s.args.get("except_"))
    assert [c.name for c in star.args["except_"]] == [
        "METADATA$ACTION",
        "METADATA$ISUPDATE",
        "METADATA$ROW_ID",
    ]
    # A quoted mixed-case column stays quoted, plain ones are left for Snowflake to fold.
    assert rows.startswith(
        "SELECT customer_id, email, CASE WHEN (_wsync_change = 'delete' OR NOT _wsync_in_model) THEN NULL "
        'ELSE "Plan" END AS "Plan", '
    )

    # The UI shows a Snowflake range as the moments it spans.
    assert VersionWindow(NINE + 1, TEN, moments=True).describe() == (
        "changes after 2024-11-24T09:00:00+00:00 to 2024-11-24T10:00:00+00:00"
    )
    snapshot = sqlglot.parse_one(snowflake_feed.snapshot_sql(MODEL, "db.crm.users", TEN), read="snowflake")
    when = snapshot.find(exp.Table).args["when"]  # type: ignore[union-attr]
    assert when.name == "AT" and "2024-11-24 10:00:00+00:00" in when.expression.sql("snowflake")


def test_snowflake_change_rows_computed_on_fakesnow_from_what_changes_returns(snowflake: SnowflakeEngine):
    """wsync's SQL run on fakesnow over a table holding CHANGES' net rows: post-images and deletes, no pre-images.

    The table stands in for the CHANGES clause (fakesnow cannot run it); it holds what Snowflake returns
    for C1 inserted, C2 updated (its old row as DELETE with ISUPDATE, the new as INSERT with ISUPDATE), C3
    deleted, C4 updated to a plan the model's WHERE leaves out, C5 inserted outside it, and a row outside it
    with no identity.
    """
    snowflake.execute(
        "CREATE SCHEMA crm",
        'CREATE TABLE crm.users_changes (customer_id VARCHAR, email VARCHAR, plan VARCHAR, "METADATA$ACTION" '
        'VARCHAR, "METADATA$ISUPDATE" BOOLEAN, "METADATA$ROW_ID" VARCHAR)',
        "INSERT INTO crm.users_changes VALUES ('C1', 'a@x.io', 'free', 'INSERT', FALSE, 'r1'), "
        "('C2', 'b@x.io', 'free', 'DELETE', TRUE, 'r2'), ('C2', 'b@x.io', 'pro', 'INSERT', TRUE, 'r2'), "
        "('C3', 'c@x.io', 'team', 'DELETE', FALSE, 'r3'), ('C4', 'd@x.io', 'pro', 'DELETE', TRUE, 'r4'), "
        "('C4', 'd@x.io', 'test', 'INSERT', TRUE, 'r4'), ('C5', NULL, 'test', 'INSERT', FALSE, 'r5'), "
        "(NULL, NULL, 'test', 'INSERT', FALSE, 'r6')",
    )
    model = snowflake_feed.changes_sql(
        "SELECT * FROM crm.users WHERE plan <> 'test'", "crm.users", VersionWindow(NINE + 1, TEN)
    )
    rows = {}
    for events in (False, True):
        sql = change_rows_sql(
            model, ["customer_id", "email", "plan"], IDENTITIES, events=events, dialect="snowflake"
        )
        stand_in = sqlglot.parse_one(sql, read="snowflake").transform(
            lambda node: exp.to_table("crm.users_changes") if isinstance(node, exp.Table) else node
        )
        rows[events] = _fakesnow_rows(snowflake, stand_in.sql("snowflake"))
    # (customer_id, email, plan, version, delete)
    assert sorted(rows[False]) == [
        ("C1", "a@x.io", "free", TEN, False),
        ("C2", "b@x.io", "pro", TEN, False),
        (
            "C3",
            "c@x.io",
            None,
            TEN,
            True,
        ),  # a delete keeps its identities only: it removes this sync's attributes
        (
            "C4",
            "d@x.io",
            None,
            TEN,
            True,
        ),  # updated out of the model's filter: it left the model, as a delete
        ("C5", None, None, TEN, True),  # outside the filter from the start: a delete, which creates nothing
    ]  # and a row outside the filter with no identity at all is no row of the model: left out, not rejected
    assert rows[True] == [("C1", "a@x.io", "free", TEN)]  # an event sync takes new rows only


def _fakesnow_rows(snowflake: SnowflakeEngine, sql: str) -> list[tuple]:
    with snowflake.server.connect(database=snowflake.database) as connection:
        return [tuple(row) for row in connection.cursor().execute(sql).fetchall()]


def test_snowflake_cdc_with_change_tracking_off_says_how_to_turn_it_on_on_fakesnow(
    snowflake: SnowflakeEngine, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
):
    """fakesnow's SHOW TABLES reads change_tracking OFF: the run names the table and the ALTER TABLE, writes nothing."""
    connection = snowflake.load({"crm.users": users(("C1", "a@x.io", "free"))})
    write_sync(cdc_sync(connection))
    assert main(["run", "crm_changes"]) == 1
    err = capsys.readouterr().err
    assert "data_model.sql: table" in err and "crm.users: has change tracking off" in err, err
    assert "SET CHANGE_TRACKING = TRUE" in err and "or use mode incremental" in err
    assert profile("C1") is None


class MockedWarehouse:
    """A warehouse answering the metadata queries a feed sends with fixed rows (for what cannot run here)."""

    dialect = "mocked"

    def __init__(self, answers: dict[str, pa.Table]):
        self.answers, self.sent, self.closed = answers, [], False

    def read_batches(self, sql: str, params=(), batch_size: int = 100_000):
        self.sent.append(sql)
        answer = next(table for start, table in self.answers.items() if sql.startswith(start))
        yield from answer.to_batches()

    def close(self) -> None:
        self.closed = True


def _snowflake_feed(tmp_path: Path, warehouse: MockedWarehouse) -> snowflake_feed.SnowflakeFeed:
    spec = load_sync_file(_written(tmp_path, cdc_sync(_snowflake_connection())))
    feed = change_feed(spec, lambda: warehouse)
    assert isinstance(feed, snowflake_feed.SnowflakeFeed)
    return feed


def _snowflake_connection() -> dict:
    return {
        "type": "snowflake",
        "account": "acme",
        "user": "u",
        "password": {"env": "P"},
        "warehouse": "w",
        "database": "analytics",
    }


def _written(tmp_path: Path, sync: dict) -> Path:
    import yaml

    path = tmp_path / "syncs" / f"{sync['name']}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(sync))
    return path


def _tables_row(created: datetime, last_altered: datetime, days: int) -> pa.Table:
    utc = pa.timestamp("us", "UTC")
    return pa.table(
        {
            "created": pa.array([created], utc),
            "last_altered": pa.array([last_altered], utc),
            "retention_time": [days],
        }
    )


def test_snowflake_versions_and_refusals_come_from_the_tables_metadata_mocked_snowflake(tmp_path: Path):
    """Newest version: LAST_ALTERED rounded up; a re-created table or a range older than retention is refused."""
    now = datetime(2024, 11, 24, 10, 0, 0, 123456, UTC)
    created = datetime(2024, 11, 1, tzinfo=UTC)
    warehouse = MockedWarehouse({"SELECT created": _tables_row(created, now, 1)})
    with _snowflake_feed(tmp_path, warehouse) as feed:
        assert feed.latest_version() == epoch_micros(now) + 1
        assert feed.newest_commit() == now
        assert (
            "FROM analytics.INFORMATION_SCHEMA.TABLES WHERE UPPER(table_schema) = UPPER('crm') "
            in warehouse.sent[0]
        )
        feed.check_history(
            VersionWindow(epoch_micros(now - timedelta(hours=2)), feed.latest_version()), now
        )

        with pytest.raises(ChangeFeedError, match=r"keeps 1 days of history \(DATA_RETENTION_TIME_IN_DAYS\)"):
            feed.check_history(
                VersionWindow(epoch_micros(now - timedelta(days=2)), feed.latest_version()), now
            )
        with pytest.raises(
            ChangeFeedError, match="it was re-created, so its changes cannot be read from there"
        ):
            feed.check_history(
                VersionWindow(epoch_micros(created - timedelta(hours=1)), feed.latest_version()), now
            )
    assert warehouse.closed


def test_a_snowflake_cdc_range_reads_with_the_session_the_feed_opened_mocked_snowflake(tmp_path: Path):
    """The reader is handed the feed's session: one login per run, closed by the run, not by the feed."""
    warehouse = MockedWarehouse({})
    with _snowflake_feed(tmp_path, warehouse) as feed:
        reader, model = feed.reader(VersionWindow(NINE + 1, TEN))
    assert reader is warehouse and not warehouse.closed
    assert "CHANGES (INFORMATION => DEFAULT)" in model


# Databricks


@pytest.fixture
def spark_databricks() -> Iterator[LocalSparkEngine]:
    with standing_in_for_databricks() as engine:
        yield engine


def test_databricks_changes_sql_parses_as_table_changes_of_the_range(tmp_path: Path):
    """table_changes(name, FIRST, LAST), the feed columns out of `*`, commit times in µs; the snapshot VERSION AS OF."""
    model = databricks_feed.changes_sql(
        "SELECT u.customer_id, * FROM crm.users AS u", "main.crm.users", VersionWindow(3, 5)
    )
    parsed = sqlglot.parse_one(
        change_rows_sql(model, ["customer_id", "plan"], IDENTITIES, events=False, dialect="databricks"),
        read="databricks",
    )
    call = parsed.find(exp.Table)
    assert call is not None and call.sql("databricks") == "TABLE_CHANGES('main.crm.users', 3, 5) AS u"
    star = next(s for s in parsed.find_all(exp.Star) if s.args.get("except_"))
    assert [c.name for c in star.args["except_"]] == ["_change_type", "_commit_version", "_commit_timestamp"]
    assert "UNIX_MICROS(_commit_timestamp) AS _wsync_version" in parsed.sql("databricks")

    snapshot = databricks_feed.snapshot_sql(MODEL, exp.to_table("main.crm.users"), 5, 1_700_000_000_000_000)
    table = sqlglot.parse_one(snapshot, read="databricks").find(exp.Table)
    assert table is not None and table.sql("databricks") == "main.crm.users VERSION AS OF 5"


def test_databricks_change_rows_on_local_spark_equal_the_delta_path_over_the_same_real_feed(
    tmp_path: Path, spark_databricks: LocalSparkEngine
):
    """A real Delta table's feed (insert, update, delete, re-insert, update out of the model's WHERE) in a Spark view.

    wsync's Databricks SQL, run on Spark over that view, gives the rows wsync's Delta path gives.
    """
    path = str(tmp_path / "users")
    write_deltalake(path, users(("C1", "a@x.io", "free"), ("C2", "b@x.io", "free")), configuration=CDF)
    DeltaTable(path).update({"plan": "'pro'"}, predicate="customer_id = 'C1'")  # 1
    DeltaTable(path).delete("customer_id = 'C2'")  # 2
    write_deltalake(path, users(("C2", "b@x.io", "team"), ("C3", "c@x.io", "free")), mode="append")  # 3
    DeltaTable(path).update({"plan": "'test'"}, predicate="customer_id = 'C3'")  # 4: out of the model
    feed = pa.table(DeltaTable(path).load_cdf(starting_version=1, ending_version=4).read_all())
    # Databricks' _commit_version is a BIGINT; delta-rs gives it unsigned, which Spark does not take.
    version = feed.schema.get_field_index("_commit_version")
    feed = feed.set_column(version, "_commit_version", feed["_commit_version"].cast(pa.int64()))
    spark = spark_databricks.spark
    spark.createDataFrame(feed.to_pandas()).createOrReplaceTempView("users_feed")

    window = VersionWindow(1, 4)
    columns = ["customer_id", "email", "plan"]
    model = databricks_feed.changes_sql(FILTERED, "main.crm.users", window)
    sql = change_rows_sql(model, columns, IDENTITIES, events=False, dialect="databricks")
    stand_in = sqlglot.parse_one(sql, read="databricks").transform(
        lambda node: (
            exp.to_table("users_feed")
            if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous)
            else node
        )
    )
    on_spark = [tuple(row) for row in spark.sql(stand_in.sql("databricks")).collect()]

    spec = load_sync_file(
        _written(tmp_path, cdc_sync({"type": "delta", "tables": {"crm.users": path}}, sql=FILTERED))
    )
    reader, delta_model = DeltaFeed(spec).reader(window)
    try:
        on_delta = [
            tuple(row.values())
            for batch in reader.read_batches(change_rows_sql(delta_model, columns, IDENTITIES, events=False))
            for row in batch.to_pylist()
        ]
    finally:
        reader.close()
    assert on_spark == on_delta
    # Each customer's last change, in commit order: C1's post-image, C2 inserted again after its delete,
    # C3 updated out of the model after its insert (a delete: identities only, flagged).
    assert [(*row[:3], row[4]) for row in on_spark] == [
        ("C1", "a@x.io", "pro", False),
        ("C2", "b@x.io", "team", False),
        ("C3", "c@x.io", None, True),
    ]


def test_a_databricks_table_without_the_feed_property_says_how_to_turn_it_on_local_spark_standing_in(
    spark_databricks: LocalSparkEngine, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
):
    """SHOW TBLPROPERTIES runs on Spark: without delta.enableChangeDataFeed the run says how; with it, validate passes."""
    spark = spark_databricks.spark
    spark.sql("CREATE DATABASE IF NOT EXISTS crm")
    spark.sql("DROP TABLE IF EXISTS crm.users")
    spark.sql("CREATE TABLE crm.users (customer_id STRING, email STRING, plan STRING) USING parquet")
    write_sync(cdc_sync(databricks_connection()))
    assert main(["run", "crm_changes"]) == 1
    err = capsys.readouterr().err
    assert (
        "data_model.sql: table crm.users: has no change data feed; turn it on with ALTER TABLE crm.users "
        in err
    )
    assert "SET TBLPROPERTIES (delta.enableChangeDataFeed = true)" in err, err
    assert profile("C1") is None

    spark.sql("ALTER TABLE crm.users SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    assert main(["validate"]) == 0, capsys.readouterr()


def _history(*commits: tuple[int, datetime, str, dict]) -> pa.Table:
    """DESCRIBE HISTORY's columns as Databricks returns them, newest first."""
    ordered = sorted(commits, key=lambda commit: -commit[0])
    return pa.table(
        {
            "version": pa.array([c[0] for c in ordered], pa.int64()),
            "timestamp": pa.array([c[1] for c in ordered], pa.timestamp("us", "UTC")),
            "operation": [c[2] for c in ordered],
            "operationParameters": pa.array(
                [list(c[3].items()) for c in ordered], pa.map_(pa.string(), pa.string())
            ),
        }
    )


def test_databricks_history_refuses_an_overwrite_or_expired_versions_mocked_describe_history(tmp_path: Path):
    """The same rules as Delta's history, read from DESCRIBE HISTORY's rows."""
    day = datetime(2024, 11, 20, tzinfo=UTC)
    history = _history(
        (4, day, "WRITE", {"mode": "Append"}),
        (5, day + timedelta(hours=1), "MERGE", {}),
        (6, day + timedelta(hours=2), "WRITE", {"mode": "Overwrite"}),
        (7, day + timedelta(hours=3), "DELETE", {}),
    )
    warehouse = MockedWarehouse({"DESCRIBE HISTORY": history})
    spec = load_sync_file(_written(tmp_path, cdc_sync(databricks_connection())))
    with change_feed(spec, lambda: warehouse) as feed:
        assert feed.latest_version() == 7
        assert feed.newest_commit() == day + timedelta(hours=3)
        feed.check_history(VersionWindow(4, 5))
        with pytest.raises(ChangeFeedError, match=r"was overwritten at version 6 \(write overwrite\)"):
            feed.check_history(VersionWindow(5, 7))
        with pytest.raises(ChangeFeedError, match="its history before version 4 has expired"):
            feed.check_history(VersionWindow(2, 5))
    assert set(warehouse.sent) == {"DESCRIBE HISTORY crm.users"}
    assert warehouse.closed


# Delta


def test_a_cdc_model_selecting_star_does_not_map_the_feed_columns(
    tmp_path: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
):
    """`SELECT *` over the feed leaves out _change_type and the commit columns: they never become attributes."""
    path = str(tmp_path / "lake" / "users")
    write_deltalake(path, users(("C1", "a@x.io", "free")), configuration=CDF)
    write_sync(cdc_sync({"type": "delta", "tables": {"crm.users": path}}, sql="SELECT * FROM crm.users"))
    assert main(["run", "crm_changes"]) == 0
    DeltaTable(path).update({"plan": "'pro'"}, predicate="customer_id = 'C1'")
    assert main(["run", "crm_changes"]) == 0, capsys.readouterr().err
    assert profile("C1") == {"plan": "pro"}
