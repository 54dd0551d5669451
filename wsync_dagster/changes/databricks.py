"""Databricks' Change Data Feed: `table_changes`, `DESCRIBE HISTORY` and table properties, run on the warehouse."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import sqlglot
from sqlglot import exp

from wsync_dagster.changes.feed import (
    CHANGE,
    ORDER,
    VERSION,
    VersionWindow,
    feed_model,
)
from wsync_dagster.changes.history import (
    DELTA_FEED_COLUMNS,
    Commit,
    check_commits,
    commit_micros,
    no_feed,
)
from wsync_dagster.data_model import change_model_table
from wsync_dagster.iterators import epoch_micros, micros_moment
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.base import Warehouse

_DIALECT = "databricks"


class DatabricksFeed:
    """The Change Data Feed of the one Delta table a cdc data model reads on Databricks."""

    def __init__(self, spec: SyncSpec, open_reader):
        self.spec = spec
        table = change_model_table(spec.data_model.sql, _DIALECT)
        path = spec.connection.table_path(table, spec.base)
        # The table's full name as SQL (`catalog`.`schema`.`table`) and as table_changes' string argument.
        self.table = exp.table_(*reversed([exp.to_identifier(part) for part in path]))
        self.name = self.table.sql(dialect=_DIALECT)
        self._where = f"data_model.sql: table {'.'.join(path)}"
        self._open = open_reader
        self._warehouse: Warehouse | None = None

    def __enter__(self) -> DatabricksFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the session, unless the reader took it."""
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def _rows(self, sql: str) -> list[dict]:
        if self._warehouse is None:
            self._warehouse = self._open()
        return pa.Table.from_batches(list(self._warehouse.read_batches(sql))).to_pylist()

    def check(self) -> None:
        """`delta.enableChangeDataFeed` is true on the table; else say how to turn it on."""
        rows = self._rows(f"SHOW TBLPROPERTIES {self.name} ('delta.enableChangeDataFeed')")
        # A table without the property answers with a sentence in `value`, not with no row.
        if not rows or str(rows[0].get("value", "")).strip().lower() != "true":
            raise no_feed(self._where, self.name)

    def _commits(self) -> list[Commit]:
        return [
            Commit(
                int(row["version"]),
                _micros(row["timestamp"]),
                str(row.get("operation") or "").upper(),
                str(dict(row.get("operationParameters") or {}).get("mode", "")).lower(),
            )
            for row in self._rows(f"DESCRIBE HISTORY {self.name}")
        ]

    def latest_version(self) -> int:
        """The table's newest version."""
        return max(commit.version for commit in self._commits())

    def check_history(self, window: VersionWindow) -> None:
        """Refuse a range across which the table was overwritten or re-created, or whose history expired."""
        check_commits(self._commits(), window, self._where)

    def newest_commit(self) -> datetime:
        """When the newest version was committed."""
        commits = self._commits()
        newest = max(commits, key=lambda commit: commit.version)
        return micros_moment(commit_micros(commits, newest.version, self._where))

    def reader(self, window: VersionWindow) -> tuple[Warehouse, str]:
        """The session, handed over, and the model over `table_changes` (or the snapshot `VERSION AS OF`)."""
        if window.snapshot:
            stamp = commit_micros(self._commits(), window.last, self._where)
            model = snapshot_sql(self.spec.data_model.sql, self.table, window.last, stamp)
        else:
            model = changes_sql(self.spec.data_model.sql, self.name, window)
        if self._warehouse is None:
            self._warehouse = self._open()
        warehouse, self._warehouse = self._warehouse, None
        return warehouse, model


def snapshot_sql(sql: str, table: exp.Table, version: int, stamp: int) -> str:
    """The model over the table as it was at `version`; every row's version is that commit's time."""
    source = table.copy()
    source.set("version", exp.Version(this="VERSION", kind="AS OF", expression=exp.Literal.number(version)))
    return feed_model(
        sql, _DIALECT, source=source, added={VERSION: exp.cast(exp.Literal.number(stamp), "BIGINT")}
    )


def changes_sql(sql: str, name: str, window: VersionWindow) -> str:
    """The model over `table_changes(name, first, last)`, its feed columns normalized."""
    call = f"SELECT * FROM table_changes({exp.Literal.string(name).sql(dialect=_DIALECT)}, {window.first}, {window.last})"
    source = sqlglot.parse_one(call, read=_DIALECT).find(exp.Table)
    assert source is not None
    return feed_model(
        sql,
        _DIALECT,
        source=source,
        lift_filter=True,
        hidden=DELTA_FEED_COLUMNS,
        added={
            CHANGE: exp.column("_change_type"),
            VERSION: exp.func("unix_micros", exp.column("_commit_timestamp")),
            ORDER: exp.column("_commit_version"),
        },
    )


def _micros(value: datetime | int) -> int:
    """A history timestamp as epoch µs (a naive one is UTC: the session runs in UTC)."""
    return epoch_micros(value) if isinstance(value, datetime) else int(value)
