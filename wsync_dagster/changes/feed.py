"""What every change feed offers, and the rows a cdc run maps from it.

A feed's reader returns the data model over the table's snapshot or changes, with three columns of its
own whatever the warehouse calls them: the change (Delta's names: insert, update_preimage,
update_postimage, delete), the row's order-safety version (its commit time in epoch µs) and the order
in which the read applies rows (the commit version). `change_rows_sql` turns that into the rows to map.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlglot import exp

from wsync_dagster.data_model import check_read_only_select
from wsync_dagster.iterators import micros_moment
from wsync_dagster.warehouses.base import Warehouse, WarehouseError

CHANGE, VERSION, ORDER = "_wsync_change", "_wsync_version", "_wsync_order"
# Whether the row passes the model's WHERE: a row updated out of the filter has left the model.
IN_MODEL = "_wsync_in_model"
# In the rows to map: the row removes what this sync set on its profile (a delete, or out of the model).
DELETE = "_wsync_delete"
# A name Snowflake stores in upper case when unquoted, and wsync's reader shows in lower case.
_SNOWFLAKE_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*\Z")


class ChangeFeedError(WarehouseError):
    """A change feed that cannot be read for this range; the message says why and what to do."""


@dataclass(frozen=True)
class VersionWindow:
    """The table versions one run reads: a snapshot at `last` when `first` is 0, else changes first..last."""

    first: int
    last: int
    moments: bool = False  # versions are moments in epoch µs (Snowflake), not table versions

    @property
    def snapshot(self) -> bool:
        """The first run of a sync reads the table as it is, not its history."""
        return self.first == 0

    @property
    def micros(self) -> tuple[int, int]:
        """The range as the store records windows."""
        return self.first, self.last + 1

    def describe(self) -> str:
        """The range as the UI shows it."""
        if self.moments:
            last = _moment(self.last)
            return (
                f"snapshot at {last}"
                if self.snapshot
                else f"changes after {_moment(self.first - 1)} to {last}"
            )
        return f"snapshot at version {self.last}" if self.snapshot else f"versions {self.first}..{self.last}"


def _moment(micros: int) -> str:
    return micros_moment(micros).isoformat()


class ChangeFeed(Protocol):
    """One table's change feed in one warehouse; opened by `change_feed`, closed by leaving its `with`."""

    def check(self) -> None:
        """The table keeps a change feed; else an error that says how to turn it on."""
        ...

    def latest_version(self) -> int:
        """The table's newest version."""
        ...

    def check_history(self, window: VersionWindow) -> None:
        """Refuse a range the feed cannot tell row by row: an overwrite, a re-creation, expired history."""
        ...

    def newest_commit(self) -> datetime:
        """When the table last changed (the data-delay check)."""
        ...

    def reader(self, window: VersionWindow) -> tuple[Warehouse, str]:
        """A reader, handed to the caller, and the model's query over the window's snapshot or changes."""
        ...

    def close(self) -> None:
        """Release the connection the feed holds, unless `reader` handed it over."""
        ...

    def __enter__(self) -> ChangeFeed: ...

    def __exit__(self, *exc: object) -> None: ...


def feed_model(
    sql: str,
    dialect: str,
    *,
    source: exp.Table | None = None,
    hidden: Sequence[str] = (),
    added: dict[str, exp.Expression],
    lift_filter: bool = False,
) -> str:
    """The data model over its table's feed: the table replaced by `source`, `hidden` out of each `*`.

    With `lift_filter`, the model's WHERE becomes the IN_MODEL column instead of dropping rows, so that
    a change that takes a row out of the model can remove what the row had set.
    """
    select = check_read_only_select(sql, dialect)
    assert isinstance(select, exp.Select), "change_model_table checked that the model is one SELECT"
    if lift_filter:
        where = select.args.get("where")
        select.set("where", None)
        condition = where.this.copy() if where else exp.true()
        added = {**added, IN_MODEL: exp.func("COALESCE", exp.paren(condition), exp.false())}
    if source is not None:
        table = next(select.find_all(exp.Table))
        source = source.copy()
        if alias := table.args.get("alias"):
            source.set("alias", alias.copy())
        table.replace(source)
    if hidden:
        for star in select.find_all(exp.Star):
            star.set("except_", [exp.column(name) for name in hidden])
    select = select.select(*(expression.as_(name) for name, expression in added.items()), copy=False)
    return select.sql(dialect=dialect)


def column_sql(name: str, dialect: str) -> str:
    """A column of the model as the outer query must name it in the warehouse's SQL."""
    quoted = not (dialect == "snowflake" and _SNOWFLAKE_PLAIN.match(name))
    return exp.to_identifier(name, quoted=quoted).sql(dialect=dialect)


def change_rows_sql(
    model: str, columns: list[str], identities: Sequence[str], *, events: bool, dialect: str = "duckdb"
) -> str:
    """Rows to map from the model over a feed: for a user sync, each customer's last change in the range.

    `identities` are the identity columns in priority order: a customer is its highest-priority identity.

    A delete keeps only its identities and is flagged (DELETE), so that it removes what this sync set on
    a profile that exists and creates none. A row outside the model's filter is such a delete; one with no
    identity at all is left out (it could match no profile, and is no reject of the model). Pre-images go.
    An event sync takes inserted rows in the model.
    """
    if events:
        kept = ", ".join(column_sql(name, dialect) for name in columns)
        return (
            f"SELECT {kept}, {VERSION} FROM ({model}) AS feed "
            f"WHERE {CHANGE} = 'insert' AND {IN_MODEL} ORDER BY {ORDER}"
        )
    removed = f"({CHANGE} = 'delete' OR NOT {IN_MODEL})"
    kept = ", ".join(
        column_sql(name, dialect)
        if name in identities
        else f"CASE WHEN {removed} THEN NULL ELSE {column_sql(name, dialect)} END AS {column_sql(name, dialect)}"
        for name in columns
    )
    keys = [column_sql(name, dialect) for name in identities if name in columns]
    known = " OR ".join(f"{key} IS NOT NULL" for key in keys) or "FALSE"
    # Within a range only a customer's last change counts (Snowflake's CHANGES nets them the same way):
    # a row inserted and deleted in one range leaves nothing behind. A customer is its highest-priority
    # identity, as resolution decides, so a changed e-mail leaves no older image of the customer behind.
    customer = [
        key if n == 0 else f"CASE WHEN {' AND '.join(f'{k} IS NULL' for k in keys[:n])} THEN {key} END"
        for n, key in enumerate(keys)
    ]
    last = (
        f"ROW_NUMBER() OVER (PARTITION BY {', '.join(customer) or '1'} ORDER BY {ORDER} DESC, "
        f"CASE WHEN {removed} THEN 0 ELSE 1 END DESC)"
    )
    changes = (
        f"SELECT feed.*, {last} AS _wsync_last FROM ({model}) AS feed "
        f"WHERE {CHANGE} IN ('insert', 'update_postimage', 'delete') AND ({IN_MODEL} OR {known})"
    )
    return (
        f"SELECT {kept}, {VERSION}, {removed} AS {DELETE} FROM ({changes}) AS net "
        f"WHERE _wsync_last = 1 ORDER BY {ORDER}"
    )
