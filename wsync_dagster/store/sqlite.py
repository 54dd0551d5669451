"""SQLite's store backend: one file in WAL mode, written by the delivery planner through `Backend`."""

from __future__ import annotations

import fcntl
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster.store.backend import Params
from wsync_dagster.store.schema import STAGING, connect

# Store files this process has a connection to. Closing any other descriptor of such a file (a plain
# open() to read its header) drops every POSIX lock the process holds on it, WAL locks included, and then
# another process closing its last connection deletes the -wal and -shm files under ours (disk I/O error).
_OPEN_HERE: Counter[Path] = Counter()

# The stored owner of each value of a JSON array of one type's identities, with the version it was last asserted
# with, as two JSON arrays in the values' order (NULL where no one owns it). The LEFT JOIN keeps json_each the
# outer loop, which walks the array in order, and the aggregate takes the rows in that order.
_STORED_OWNERS = """
SELECT json_group_array(i.profile_id), json_group_array(i.version)
FROM json_each(?1) AS s
LEFT JOIN identities AS i ON i.environment = ?2 AND i.identity_type = ?3 AND i.value = s.value
"""


def open_in_this_process(path: Path) -> bool:
    """A connection of this process has the store file open."""
    return _OPEN_HERE[Path(path).resolve()] > 0


# Rows turned into Python values at a time by an insert.
INSERT_ROWS = 8_192


def _literal(column: pa.ChunkedArray) -> str | None:
    """The SQL literal of a column holding one text or integer value on every row; None for any other."""
    if (
        len(column) < 2
        or column.null_count
        or not (pa.types.is_string(column.type) or pa.types.is_integer(column.type))
    ):
        return None
    first = column[0].as_py()
    if not pc.all(pc.equal(column, pa.scalar(first, column.type))).as_py():
        return None
    if isinstance(first, int):
        return str(first)
    # Quoted as SQLite quotes: a text with NUL in it is bound instead (a literal would end at the NUL).
    return None if "\x00" in first else "'" + first.replace("'", "''") + "'"


class SQLiteBackend:
    """One SQLite file in WAL mode: one writer at a time (BEGIN IMMEDIATE), readers never wait."""

    name = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)
        self._registered = self.path.resolve()
        _OPEN_HERE[self._registered] += 1
        self._held: dict[str, IO[bytes]] = {}

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the rows it changed."""
        return self._conn.execute(sql, params).rowcount

    def rows(self, sql: str, params: Params = ()) -> list[tuple]:
        """Run a query; its rows."""
        return self._conn.execute(sql, params).fetchall()

    def insert(self, table: str, data: pa.Table, conflict: str = "") -> int:
        """executemany over the columns: SQLite's fastest plain insert. A column of one value (a delivery's
        sync, run, partition, time) is written into the statement once instead of bound on every row."""
        if not data.num_rows:
            return 0
        literals = {name: _literal(data.column(name)) for name in data.schema.names}
        bound = [name for name, literal in literals.items() if literal is None]
        values_sql = ", ".join(literals[name] or "?" for name in data.schema.names)
        sql = f"INSERT INTO {table} ({', '.join(data.schema.names)}) VALUES ({values_sql}) {conflict}"
        if not bound:  # rows of nothing but constants: the statement once a row
            return self._conn.executemany(sql, [()] * data.num_rows).rowcount
        changed = 0
        # A slice at a time: its Python values, not the whole table's, are what the insert holds.
        for chunk in data.select(bound).to_batches(max_chunksize=INSERT_ROWS):
            values = zip(*(column.to_pylist() for column in chunk.columns), strict=True)
            changed += self._conn.executemany(sql, values).rowcount
        return changed

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
        for table in (
            "delivery_profile",
            "delivery_skipped",
            "mirror_row_key",
            "mirror_profile",
            "history_profile",
            "delivery_fingerprint",
        ):
            self._conn.execute(f"DELETE FROM {table}")
        (seq,) = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM deliveries").fetchone()
        return seq

    def begin_write(self) -> None:
        """BEGIN IMMEDIATE: the one write lock, for a short write outside a delivery."""
        if self._conn.in_transaction:
            raise RuntimeError("a delivery is already open on this profile store")
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in STAGING:
            self._conn.execute(statement)

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

    def stored_owners(self, environment: str, values: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Backend.stored_owners: one look-up per type, with nothing to lock (the delivery holds the file)."""
        return [
            self.rows(_STORED_OWNERS, (array, environment, identity_type))[0]
            for identity_type, array in values
        ]

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

    def try_hold(self, name: str) -> bool:
        """An exclusive flock on a file of the store's lock folder (named by a hash: names are free text);
        the kernel releases it when its holder ends, however it ends."""
        if name in self._held:
            return True
        folder = self.path.with_name(f"{self.path.name}-locks")
        folder.mkdir(exist_ok=True)
        file = open(folder / f"{hashlib.sha1(name.encode()).hexdigest()[:20]}.lock", "ab")  # noqa: SIM115
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        self._held[name] = file
        return True

    def release(self, name: str) -> None:
        """Give the flock back."""
        file = self._held.pop(name, None)
        if file is not None:
            file.close()

    def close(self) -> None:
        """Close; an open delivery is rolled back."""
        for name in list(self._held):
            self.release(name)
        self._conn.close()
        if _OPEN_HERE[self._registered] > 0:
            _OPEN_HERE[self._registered] -= 1
