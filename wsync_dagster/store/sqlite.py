"""Where the profile store is written: the narrow interface the delivery planner talks to, and SQLite's.

The planner (store/planner.py's ProfileStore and Delivery) decides everything and speaks portable SQL
(`?` and `:name` placeholders, `INSERT … ON CONFLICT`, `IS NOT DISTINCT FROM`); a backend runs it and
moves Arrow tables in bulk: `insert` appends rows to a table, `stage` replaces a staging table's rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from wsync_dagster.store.schema import STAGING, connect

Params = Sequence[Any] | dict[str, Any]


class Backend(Protocol):
    """One connection to a profile store: run SQL, move Arrow in bulk, one write transaction at a time."""

    name: str  # what the store is, for messages and the UI (sqlite, postgresql)

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the rows it changed."""
        ...

    def rows(self, sql: str, params: Params = ()) -> list[tuple]:
        """Run a query; its rows."""
        ...

    def insert(self, table: str, data: pa.Table, conflict: str = "") -> int:
        """Append the rows to a table (columns by name), with an `ON CONFLICT …` clause; rows changed."""
        ...

    def stage(self, table: str, data: pa.Table) -> None:
        """Replace a staging table's rows with these."""
        ...

    def begin_delivery(self) -> int:
        """Open the write transaction of a delivery; its sequence number (deliveries in commit order)."""
        ...

    def begin_erasure(self) -> None:
        """Open the write transaction of an erasure: alone against every delivery, deleted bytes overwritten."""
        ...

    def reclaim(self, tables: Sequence[str]) -> bool:
        """After an erasure: leave no deleted bytes in the tables' storage; False if some may remain."""
        ...

    def lock_identities(self, environment: str) -> None:
        """Lock the staged identities (stage_identity) and the profiles owning them until the delivery ends."""
        ...

    def commit(self) -> None:
        """Commit the open transaction."""
        ...

    def rollback(self) -> None:
        """Roll the open transaction back."""
        ...

    def in_transaction(self) -> bool:
        """A transaction is open."""
        ...

    def read(self) -> AbstractContextManager[None]:
        """A context in which several queries see one committed state."""
        ...

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back."""
        ...


class SQLiteBackend:
    """One SQLite file in WAL mode: one writer at a time (BEGIN IMMEDIATE), readers never wait."""

    name = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the rows it changed."""
        return self._conn.execute(sql, params).rowcount

    def rows(self, sql: str, params: Params = ()) -> list[tuple]:
        """Run a query; its rows."""
        return self._conn.execute(sql, params).fetchall()

    def insert(self, table: str, data: pa.Table, conflict: str = "") -> int:
        """executemany over the columns: SQLite's fastest plain insert."""
        if not data.num_rows:
            return 0
        names = data.schema.names
        return self._conn.executemany(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) {conflict}",
            zip(*(column.to_pylist() for column in data.columns), strict=True),
        ).rowcount

    def stage(self, table: str, data: pa.Table) -> None:
        """Empty the temp table, then insert."""
        self._conn.execute(f"DELETE FROM {table}")
        self.insert(table, data)

    def begin_delivery(self) -> int:
        """BEGIN IMMEDIATE takes the one write lock; staging tables are made on first use."""
        if self._conn.in_transaction:
            raise RuntimeError("a delivery is already open on this profile store")
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in STAGING:
            self._conn.execute(statement)
        for table in ("delivery_profile", "mirror_row_key", "mirror_profile"):
            self._conn.execute(f"DELETE FROM {table}")
        (seq,) = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM deliveries").fetchone()
        return seq

    def begin_erasure(self) -> None:
        """BEGIN IMMEDIATE with secure_delete on: what the erasure deletes is overwritten with zeros."""
        if self._conn.in_transaction:
            raise RuntimeError("a delivery is already open on this profile store")
        self._conn.execute("PRAGMA secure_delete = ON")
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in STAGING:
            self._conn.execute(statement)

    def reclaim(self, tables: Sequence[str]) -> bool:
        """VACUUM rewrites the file, so no stale copy of a deleted value survives in free space (older
        deletes ran without secure_delete); then the WAL, which holds old page images, is emptied."""
        self._conn.execute("VACUUM")
        (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def lock_identities(self, environment: str) -> None:
        """Nothing to do: the delivery holds the file's one write lock."""

    def commit(self) -> None:
        """Commit."""
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        """Roll back, if a transaction is open."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def in_transaction(self) -> bool:
        """A transaction is open."""
        return self._conn.in_transaction

    @contextmanager
    def read(self) -> Iterator[None]:
        """Several SELECTs in one read transaction see one state, even if a delivery commits meanwhile."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close; an open delivery is rolled back."""
        self._conn.close()
