"""Delta Lake's Change Data Feed, read with delta-rs (`load_cdf`) into the locked-down DuckDB reader."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from sqlglot import exp

from wsync_dagster.changes.feed import CHANGE, ORDER, VERSION, ChangeFeedError, VersionWindow, feed_model
from wsync_dagster.changes.history import (
    DELTA_FEED_COLUMNS,
    Commit,
    check_commits,
    commit_micros,
    no_feed,
)
from wsync_dagster.data_model import change_model_table
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.delta import DeltaWarehouse, error_line, table_name


class DeltaFeed:
    """The Change Data Feed of the one Delta table a cdc data model reads."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec
        table = change_model_table(spec.data_model.sql, spec.connection.dialect)
        self.name = table_name(".".join(table.path))
        self.location, self.options = spec.connection.location(table, spec.base)  # type: ignore[union-attr]
        self._where = f"connection.tables.{'.'.join(table.path)}: Delta table at {self.location}"

    def __enter__(self) -> DeltaFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held open between calls."""

    def _table(self, version: int | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            return DeltaTable(self.location, version=version, storage_options=self.options or None)
        except TableNotFoundError:
            raise ChangeFeedError(f"{self._where}: there is no Delta table there") from None
        except (DeltaError, OSError) as error:
            raise ChangeFeedError(
                f"{self._where}: version {version} cannot be read ({error_line(error)}); its history may have "
                "expired: lengthen delta.logRetentionDuration, or use mode incremental"
            ) from None

    def _commits(self) -> list[Commit]:
        return [
            Commit(
                int(entry["version"]),
                int(entry["timestamp"]) * 1000,
                str(entry.get("operation", "")).upper(),
                str((entry.get("operationParameters") or {}).get("mode", "")).lower(),
            )
            for entry in self._table().history()
            if "version" in entry
        ]

    def check(self) -> None:
        """The table keeps a change feed; else say how to turn it on."""
        configuration = self._table().metadata().configuration
        if configuration.get("delta.enableChangeDataFeed", "false").lower() != "true":
            raise no_feed(self._where)

    def latest_version(self) -> int:
        """The table's newest version."""
        return self._table().version()

    def check_history(self, window: VersionWindow) -> None:
        """Refuse a range across which the table was overwritten or re-created: its feed cannot say what changed."""
        check_commits(self._commits(), window, self._where)

    def newest_commit(self) -> datetime:
        """When the newest version was committed."""
        micros = commit_micros(self._commits(), self.latest_version(), self._where)
        return datetime.fromtimestamp(micros / 1e6, UTC)

    def reader(self, window: VersionWindow) -> tuple[DeltaWarehouse, str]:
        """A reader over the snapshot or the changes of the window, and the model's query for it."""
        sql = self.spec.data_model.sql
        if window.snapshot:
            data = self._table(window.last).to_pyarrow_dataset()
            stamp = commit_micros(self._commits(), window.last, self._where)
            model = feed_model(sql, "duckdb", added={VERSION: exp.cast(exp.Literal.number(stamp), "BIGINT")})
            return DeltaWarehouse.over({self.name: data}), model
        try:
            changes = self._table().load_cdf(starting_version=window.first, ending_version=window.last)
            data = pa.table(changes.read_all())
        except Exception as error:  # delta-rs raises several error types for a feed it cannot read
            raise ChangeFeedError(
                f"{self._where}: the change feed from version {window.first} to {window.last} cannot be read "
                f"({error_line(error)}); if its history expired, lengthen delta.logRetentionDuration and "
                "delta.deletedFileRetentionDuration, or use mode incremental"
            ) from None
        model = feed_model(
            sql,
            "duckdb",
            lift_filter=True,
            hidden=DELTA_FEED_COLUMNS,
            added={
                CHANGE: exp.column("_change_type"),
                VERSION: exp.cast(exp.func("epoch_us", exp.column("_commit_timestamp")), "BIGINT"),
                ORDER: exp.column("_commit_version"),
            },
        )
        return DeltaWarehouse.over({self.name: data}), model
