"""Snowflake change tracking: the `CHANGES` clause between two points in time; versions are epoch µs.

Snowflake has no table versions to read changes by, so a version is a moment: the table's LAST_ALTERED
(rounded up to the microsecond) is its newest, and the range FIRST..LAST reads the net changes between
the table as it was at FIRST - 1 µs and as it was at LAST, so consecutive ranges meet exactly. The net
changes carry no commit time of their own: every row of a range gets LAST as its version.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import sqlglot
from sqlglot import exp

from wsync_dagster.changes.feed import CHANGE, ORDER, VERSION, ChangeFeedError, VersionWindow, feed_model
from wsync_dagster.data_model import change_model_table
from wsync_dagster.iterators import epoch_micros, micros_moment
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.base import Warehouse, WarehouseError, resolve

_DIALECT = "snowflake"
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
SNOWFLAKE_FEED_COLUMNS = ("METADATA$ACTION", "METADATA$ISUPDATE", "METADATA$ROW_ID")
# An update is a DELETE and an INSERT, both with METADATA$ISUPDATE: the DELETE is its pre-image.
_CHANGE_SQL = (
    "CASE WHEN METADATA$ACTION = 'INSERT' THEN CASE WHEN METADATA$ISUPDATE THEN 'update_postimage' "
    "ELSE 'insert' END WHEN METADATA$ISUPDATE THEN 'update_preimage' ELSE 'delete' END"
)


class SnowflakeFeed:
    """Change tracking of the one table a cdc data model reads in Snowflake."""

    def __init__(self, spec: SyncSpec, open_reader):
        self.spec = spec
        table = change_model_table(spec.data_model.sql, _DIALECT)
        connection = spec.connection
        self.database = table.catalog or _name(connection.database, "database")  # type: ignore[union-attr]
        self.schema = table.schema or _name(connection.schema_, "schema") or "PUBLIC"  # type: ignore[union-attr]
        self.table_name = table.name
        parts = [
            exp.to_identifier(part, quoted=not _PLAIN.match(part)) for part in (self.database, self.schema)
        ]
        self.schema_sql = ".".join(part.sql(dialect=_DIALECT) for part in parts)
        self.table = exp.table_(
            exp.to_identifier(table.name, quoted=not _PLAIN.match(table.name)), parts[1], parts[0]
        )
        self.name = self.table.sql(dialect=_DIALECT)
        self._where = f"data_model.sql: table {self.database}.{self.schema}.{table.name}"
        self._open = open_reader
        self._warehouse: Warehouse | None = None

    def __enter__(self) -> SnowflakeFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Log out, unless the reader took the session."""
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def _rows(self, sql: str) -> list[dict]:
        if self._warehouse is None:
            self._warehouse = self._open()
        return pa.Table.from_batches(list(self._warehouse.read_batches(sql))).to_pylist()

    def _shown(self) -> dict:
        """The table's line of SHOW TABLES (LIKE is case-insensitive there)."""
        pattern = exp.Literal.string(self.table_name.replace("\\", "\\\\")).sql(dialect=_DIALECT)
        rows = self._rows(f"SHOW TABLES LIKE {pattern} IN SCHEMA {self.schema_sql}")
        exact = [row for row in rows if row.get("name") == self.table_name] or rows
        if not exact:
            raise ChangeFeedError(f"{self._where}: there is no such table (SHOW TABLES finds none)")
        return exact[0]

    def check(self) -> None:
        """Change tracking is on for the table; else say how to turn it on."""
        if str(self._shown().get("change_tracking", "")).upper() != "ON":
            raise ChangeFeedError(
                f"{self._where}: has change tracking off; turn it on with ALTER TABLE {self.name} SET "
                "CHANGE_TRACKING = TRUE (changes from then on are recorded; the first run reads the table "
                "as it is), or use mode incremental"
            )

    def _info(self) -> dict:
        """The table's CREATED, LAST_ALTERED and RETENTION_TIME (days of history kept)."""
        query = (
            f"SELECT created, last_altered, retention_time FROM {exp.to_identifier(self.database).sql(dialect=_DIALECT)}"
            f".INFORMATION_SCHEMA.TABLES WHERE UPPER(table_schema) = UPPER({_string(self.schema)}) "
            f"AND UPPER(table_name) = UPPER({_string(self.table_name)})"
        )
        rows = self._rows(query)
        if not rows:
            raise ChangeFeedError(f"{self._where}: there is no such table in INFORMATION_SCHEMA.TABLES")
        return rows[0]

    def latest_version(self) -> int:
        """The moment the table last changed, in epoch µs, rounded up (the reader truncates to µs)."""
        return epoch_micros(self._info()["last_altered"]) + 1

    def check_history(self, window: VersionWindow, now: datetime | None = None) -> None:
        """Refuse a range after which the table was re-created, or that starts before its retained history."""
        info = self._info()
        start = window.first - 1
        if epoch_micros(info["created"]) > start:
            raise ChangeFeedError(
                f"{self._where}: was created at {micros_moment(epoch_micros(info['created']))}, after this sync read it up to "
                f"{micros_moment(start)}: it was re-created, so its changes cannot be read from there; start the sync "
                "again (a new name) or use mode incremental"
            )
        if epoch_micros(info["last_altered"]) + 1 < window.last:
            raise ChangeFeedError(
                f"{self._where}: last changed at {micros_moment(epoch_micros(info['last_altered']))}, before {micros_moment(window.last)} "
                "that this sync has read: it was re-created; start the sync again or use mode incremental"
            )
        days = int(info["retention_time"] or 0)
        now = now or datetime.now(UTC)
        if now - timedelta(days=days) > micros_moment(start):
            raise ChangeFeedError(
                f"{self._where}: keeps {days} days of history (DATA_RETENTION_TIME_IN_DAYS), and this run reads "
                f"changes from {micros_moment(start):%Y-%m-%d %H:%M:%S} UTC; raise it with ALTER TABLE {self.name} SET "
                "DATA_RETENTION_TIME_IN_DAYS = n, or use mode incremental"
            )

    def newest_commit(self) -> datetime:
        """When the table last changed."""
        return micros_moment(epoch_micros(self._info()["last_altered"]))

    def reader(self, window: VersionWindow) -> tuple[Warehouse, str]:
        """The session, handed over, and the model over the CHANGES clause (or the snapshot AT LAST)."""
        sql = self.spec.data_model.sql
        model = (
            snapshot_sql(sql, self.name, window.last)
            if window.snapshot
            else changes_sql(sql, self.name, window)
        )
        if self._warehouse is None:
            self._warehouse = self._open()
        warehouse, self._warehouse = self._warehouse, None
        return warehouse, model


def snapshot_sql(sql: str, name: str, last: int) -> str:
    """The model over the table as it was at LAST (time travel); every row's version is LAST."""
    source = _source(f"{name} AT(TIMESTAMP => {_timestamp(last)})")
    return feed_model(sql, _DIALECT, source=source, added={VERSION: exp.Literal.number(last)})


def changes_sql(sql: str, name: str, window: VersionWindow) -> str:
    """The model over the net changes from FIRST - 1 µs to LAST, their metadata as the change kind."""
    source = _source(
        f"{name} CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {_timestamp(window.first - 1)}) "
        f"END(TIMESTAMP => {_timestamp(window.last)})"
    )
    return feed_model(
        sql,
        _DIALECT,
        source=source,
        lift_filter=True,
        hidden=SNOWFLAKE_FEED_COLUMNS,
        added={
            CHANGE: sqlglot.parse_one(_CHANGE_SQL, read=_DIALECT),
            VERSION: exp.Literal.number(window.last),
            ORDER: exp.Literal.number(0),
        },
    )


def _timestamp(value: int) -> str:
    """A version as a TIMESTAMP_TZ literal in UTC, to the microsecond."""
    return f"'{micros_moment(value).isoformat(sep=' ')}'::TIMESTAMP_TZ"


def _string(value: str) -> str:
    return exp.Literal.string(value).sql(dialect=_DIALECT)


def _source(text: str) -> exp.Table:
    table = sqlglot.parse_one(f"SELECT * FROM {text}", read=_DIALECT).find(exp.Table)
    assert table is not None
    return table


def _name(value, field: str) -> str:
    """A connection setting; a name wsync cannot resolve here is the error the connection gives."""
    try:
        return resolve(value, field) or ""
    except WarehouseError as error:
        raise ChangeFeedError(str(error)) from None
