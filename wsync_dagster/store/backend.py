"""The narrow interface the delivery planner talks to: every store backend (SQLite, PostgreSQL) is one.

The planner (store/planner.py's ProfileStore and Delivery) decides everything and speaks portable SQL
(`?` and `:name` placeholders, `INSERT … ON CONFLICT`, `IS NOT DISTINCT FROM`); a backend runs it and
moves Arrow tables in bulk: `insert` appends rows to a table, `stage` replaces a staging table's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa

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

    def begin_write(self) -> None:
        """Open a short write transaction (the destinations' outbox), with the staging tables."""
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

    def stored_owners(self, environment: str, values: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Per (identity type, its values as a JSON array): who owns each value and since which version, as two
        JSON arrays in the values' order (null where no one does); the values and their owners' profiles stay
        locked until the delivery ends."""
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

    def try_hold(self, name: str) -> bool:
        """Take the named lock, if no other connection holds it; held until released or the connection ends."""
        ...

    def release(self, name: str) -> None:
        """Give a named lock back."""
        ...

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back."""
        ...
