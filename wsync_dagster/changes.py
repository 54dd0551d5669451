"""Change feeds for `mode: cdc`: a table's versions, its snapshot at one, and its changes between two.

Delta's Change Data Feed (delta-rs `load_cdf`; Databricks' `table_changes` has the same columns) is read
into the same locked-down DuckDB reader as the table itself, and the data model runs over it, carrying
each row's change type and commit. Deletes keep only the identity columns, so that the mapping turns them
into tombstones of this sync's attributes; update pre-images are left out; event syncs take inserts only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from wsync_dagster.data_model import change_model_table, check_read_only_select
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.base import WarehouseError
from wsync_dagster.warehouses.delta import DeltaWarehouse, _one_line, table_name

CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP = "_change_type", "_commit_version", "_commit_timestamp"
# Every row's order-safety version: the time of its commit, in epoch µs (a snapshot: its version's commit).
VERSION = "_wsync_version"
_FEED_COLUMNS = (CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP)
# History entries after which the feed no longer says what changed row by row.
_BREAKS = {"CREATE OR REPLACE TABLE", "REPLACE TABLE", "RESTORE", "TRUNCATE"}


class ChangeFeedError(WarehouseError):
    """A change feed that cannot be read for this range; the message says why and what to do."""


@dataclass(frozen=True)
class VersionWindow:
    """The table versions one run reads: a snapshot at `last` when `first` is 0, else changes first..last."""

    first: int
    last: int

    @property
    def snapshot(self) -> bool:
        """The first run of a sync reads the table as it is, not its history."""
        return self.first == 0

    @property
    def micros(self) -> tuple[int, int]:
        """The range as the store records windows."""
        return self.first, self.last + 1

    def bounds(self, iterator_type: str, column_type: pa.DataType | None = None) -> tuple[int, int]:
        """The range (a change feed is read by version, not by a query parameter)."""
        return self.first, self.last

    def describe(self) -> str:
        """The range as the UI shows it."""
        return f"snapshot at version {self.last}" if self.snapshot else f"versions {self.first}..{self.last}"


class DeltaFeed:
    """The Change Data Feed of the one Delta table a cdc data model reads."""

    def __init__(self, spec: SyncSpec):
        self.spec = spec
        table = change_model_table(spec.data_model.sql, spec.connection.dialect)
        self.name = table_name(".".join(table.path))
        self.location, self.options = spec.connection.location(table, spec.base)  # type: ignore[union-attr]
        self._where = f"connection.tables.{'.'.join(table.path)}: Delta table at {self.location}"

    def _table(self, version: int | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            return DeltaTable(self.location, version=version, storage_options=self.options or None)
        except TableNotFoundError:
            raise ChangeFeedError(f"{self._where}: there is no Delta table there") from None
        except (DeltaError, OSError) as error:
            raise ChangeFeedError(
                f"{self._where}: version {version} cannot be read ({_one_line(error)}); its history may have "
                "expired: lengthen delta.logRetentionDuration, or use mode incremental"
            ) from None

    def check(self) -> None:
        """The table keeps a change feed; else say how to turn it on."""
        configuration = self._table().metadata().configuration
        if configuration.get("delta.enableChangeDataFeed", "false").lower() != "true":
            raise ChangeFeedError(
                f"{self._where}: has no change data feed; turn it on with ALTER TABLE … SET TBLPROPERTIES "
                "(delta.enableChangeDataFeed = true) (changes from then on are recorded), or use mode incremental"
            )

    def latest_version(self) -> int:
        """The table's newest version."""
        return self._table().version()

    def check_history(self, window: VersionWindow) -> None:
        """Refuse a range across which the table was overwritten or re-created: its feed cannot say what changed."""
        latest = self.latest_version()
        if latest < window.last:
            raise ChangeFeedError(
                f"{self._where}: is at version {latest}, below version {window.last} that this sync has read: "
                "the table was re-created; start the sync again (a new name) or use mode incremental"
            )
        for entry in self._table().history():
            version = entry.get("version", -1)
            if not window.first <= version <= window.last:
                continue
            operation = str(entry.get("operation", "")).upper()
            mode = str((entry.get("operationParameters") or {}).get("mode", "")).lower()
            if operation in _BREAKS or (operation == "WRITE" and mode == "overwrite"):
                raise ChangeFeedError(
                    f"{self._where}: was overwritten at version {version} ({operation.lower()}"
                    f"{' ' + mode if mode else ''}), so its change feed cannot say which rows changed; model it "
                    "as an incremental sync (an updated_at iterator) or as a full sync"
                )

    def commit_micros(self, version: int) -> int:
        """When a version was committed, in epoch µs."""
        for entry in self._table().history():
            if entry.get("version") == version:
                return int(entry["timestamp"]) * 1000
        raise ChangeFeedError(f"{self._where}: has no version {version} in its history (it may have expired)")

    def reader(self, window: VersionWindow) -> tuple[DeltaWarehouse, str]:
        """A reader over the snapshot or the changes of the window, and the model's query for it."""
        if window.snapshot:
            data = self._table(window.last).to_pyarrow_dataset()
            stamp = self.commit_micros(window.last)
            model = (
                f"SELECT *, CAST({stamp} AS BIGINT) AS {VERSION} FROM ({self.spec.data_model.sql}) AS model"
            )
            return DeltaWarehouse.over({self.name: data}), model
        try:
            changes = self._table().load_cdf(starting_version=window.first, ending_version=window.last)
            data = pa.table(changes.read_all())
        except Exception as error:  # delta-rs raises several error types for a feed it cannot read
            raise ChangeFeedError(
                f"{self._where}: the change feed from version {window.first} to {window.last} cannot be read "
                f"({_one_line(error)}); if its history expired, lengthen delta.logRetentionDuration and "
                "delta.deletedFileRetentionDuration, or use mode incremental"
            ) from None
        return DeltaWarehouse.over({self.name: data}), self._change_sql()

    def _change_sql(self) -> str:
        """The model over the feed, keeping each row's change type and commit (a `*` leaves them out)."""
        select = check_read_only_select(self.spec.data_model.sql, "duckdb")
        assert isinstance(select, exp.Select)
        for star in select.find_all(exp.Star):
            star.set("except", [exp.column(name) for name in _FEED_COLUMNS])
        select = select.select(*(exp.column(name).as_(f"_wsync{name}") for name in _FEED_COLUMNS), copy=False)
        return select.sql(dialect="duckdb")


def change_rows_sql(model: str, columns: list[str], identities: set[str], *, events: bool) -> str:
    """Rows to map from the model over a feed: deletes keep only their identities, pre-images go."""
    kept = ", ".join(
        f'"{name}"'
        if name in identities
        else f'CASE WHEN _wsync{CHANGE_TYPE} = \'delete\' THEN NULL ELSE "{name}" END AS "{name}"'
        for name in columns
    )
    wanted = "('insert')" if events else "('insert', 'update_postimage', 'delete')"
    return (
        f"SELECT {kept}, CAST(epoch_us(_wsync{COMMIT_TIMESTAMP}) AS BIGINT) AS {VERSION} FROM ({model}) AS feed "
        f"WHERE _wsync{CHANGE_TYPE} IN {wanted} ORDER BY _wsync{COMMIT_VERSION}"
    )


def change_feed(spec: SyncSpec) -> DeltaFeed:
    """The change feed of a cdc sync's table."""
    if spec.connection.type != "delta":
        raise ChangeFeedError(
            f"{spec.name}: a {spec.connection.type} connection has no change feed wsync reads"
        )
    return DeltaFeed(spec)
