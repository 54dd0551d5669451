"""The PostgreSQL profile store: the same tables and rules as SQLite's, written with COPY and set-based merges.

Many runs write at once: a delivery locks the identities it resolves and the profiles owning them
(transaction-scoped advisory locks, taken in a sorted order), so deliveries that share no customer never
wait for each other. Everything a delivery writes is one transaction: a killed run leaves nothing.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as csv

from wsync_dagster.settings import lock_timeout
from wsync_dagster.store.backend import Params
from wsync_dagster.store.lock_waits import LOCK_NOT_AVAILABLE, LockWaitWatch
from wsync_dagster.store.schema import SCHEMA_VERSION, STAGING, TABLES, UPGRADES

# The SQLite DDL, in PostgreSQL's words: 64-bit integers (versions are epoch µs), no rowid tables.
_TYPES = ((re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\)\s*WITHOUT ROWID"), ")"))
_SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS wsync_schema (version INTEGER NOT NULL)"
_SEQUENCE = "CREATE SEQUENCE IF NOT EXISTS delivery_seq"
# Deliveries hold it shared, an erasure alone: no delivery reads the suppression list while one changes it.
_ERASURE_LOCK = "hashtext('wsync erasure')"
# The key space of named locks (try_hold): 1 and 2 are the deliveries' identities and profiles.
_NAMED_LOCKS = 3
_NAMED = re.compile(r"(?<!:):([a-z_]+)")
CONNECT_TIMEOUT_S = 10
# Lock buckets per kind (identities, profiles): far below PostgreSQL's lock table of 64 per connection.
LOCK_BUCKETS = 256


def _lock_buckets(kind: int, key: str, rows: str) -> str:
    """Take the advisory locks of a kind (1 identities, 2 profiles) on the hash buckets of `key` over `rows`, in
    bucket order: every path that locks identities or profiles hashes them here, so they meet in one bucket."""
    return (
        f"SELECT pg_advisory_xact_lock({kind}, k) FROM (SELECT DISTINCT"
        f" mod(abs(hashtextextended({key}, 0)), {LOCK_BUCKETS})::int AS k FROM {rows} ORDER BY 1) AS buckets"
    )


def _identity(identity_type: str, value: str) -> str:
    """An identity as the text its bucket is hashed from, the environment first (a parameter)."""
    return f"? || '|' || {identity_type} || '|' || {value}"


# The buckets of the staged identities, one JSON array of values per type, and of their owners' profiles.
_LOCK_VALUES = _lock_buckets(
    1,
    _identity("j.identity_type", "v.value"),
    "stage_identity_values AS j, json_array_elements_text(j.vals::json) AS v(value)",
)
_LOCK_OWNERS = _lock_buckets(
    2,
    "p.profile_id",
    "stage_owner AS o, json_array_elements_text(o.owners::json) AS p(profile_id) WHERE p.profile_id IS NOT NULL",
)
# The stored owner of each staged value and its version, as two JSON arrays per type in the values' order (null
# where no one owns it). The values go in by COPY, never in a statement's text: a statement's text shows in
# pg_stat_activity and, when it fails (a lock timeout), in the server's log. One type at a time: its type a
# constant, the planner probes the identities' key per value (joined to the staged types, it scanned them all).
_LOOK_UP_OWNERS = """
INSERT INTO stage_owner (identity_type, owners, versions)
SELECT ?, coalesce(json_agg(i.profile_id ORDER BY s.n), '[]')::text, coalesce(json_agg(i.version ORDER BY s.n), '[]')::text
FROM (SELECT vals FROM stage_identity_values WHERE identity_type = ?) AS j
CROSS JOIN LATERAL json_array_elements_text(j.vals::json) WITH ORDINALITY AS s(value, n)
LEFT JOIN identities AS i ON i.environment = ? AND i.identity_type = ? AND i.value = s.value
"""
# Rows written as CSV text at a time by a COPY.
COPY_ROWS = 65_536
# The delivery's planner cost of a page read out of order (the server's default is 4, for spinning disks): at
# 4 a batch's look-ups (its 50,000 staged identities against the stored ones, its row keys against the
# fingerprints) hash-joined the whole table once the store outgrew the batch, a scan per batch that at 1M
# users took 1.2-1.5 s each, where probing the index takes 0.05-0.25 s. For this transaction only.
RANDOM_PAGE_COST = 1.1
# A table a transaction has grown by this many rows, and by as many as it held, is analyzed again.
ANALYZE_ROWS = 20_000


class PostgresStoreError(RuntimeError):
    """A PostgreSQL store that cannot be used; the message names the store (never its password)."""


def _pg(sql: str) -> str:
    return sql if "?" not in sql and ":" not in sql else _NAMED.sub(r"%(\1)s", sql.replace("?", "%s"))


def _ddl(statement: str) -> str:
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


# Where a URL's user:password@host:port part ends, for Python and for libpq alike.
_AUTHORITY_END = re.compile(r"[/?#]")
_UNREADABLE = "profile store URL: cannot be read"


def check_url(url: str) -> None:
    """Refuse a URL that libpq and Python would split differently, without repeating any part of it: the
    part that one of them takes for a host, a port or a path may be a piece of the password."""
    rest = url.split("://", 1)[-1]
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if authority.count("@") > 1 or "@" in tail:
        raise PostgresStoreError(
            f"{_UNREADABLE}: a user or password holding /, ?, # or @ must be percent-encoded "
            "(%2F, %3F, %23, %40)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise PostgresStoreError(
            f"{_UNREADABLE}: the host and port are not HOST[:PORT] with a port from 1 to 65535 (a password "
            "holding /, ?, # or @ must be percent-encoded: %2F, %3F, %23, %40)"
        )


def describe(url: str) -> str:
    """The store as messages name it: user, host, port and database, never the password."""
    check_url(url)
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{user}{parts.hostname or 'localhost'}{port}{parts.path}"


class PostgresBackend:
    """One psycopg2 connection to the store's database."""

    name = "postgresql"

    def __init__(self, url: str):
        import psycopg2

        self.url = url
        self.where = describe(url)
        limit = lock_timeout()
        # libpq may quote the password as written or decoded: both are masked.
        written = urlsplit(url).password or ""
        self._passwords = sorted({written, unquote(written)} - {""}, key=len, reverse=True)
        dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        try:
            self._conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name="wsync")
        except psycopg2.Error as error:
            raise PostgresStoreError(
                f"profile store {self.where}: cannot connect: {self._clean(error)}"
            ) from None
        self._conn.autocommit = False
        # Tables a COPY of this transaction found a held row in (insert's DO NOTHING fast path).
        self._conflicted: set[str] = set()
        # Per table this transaction inserted into: rows at its last statistics, rows written since.
        self._growth: dict[str, list[int]] = {}
        # Outside a delivery or a read, each statement's implicit transaction ends with it.
        self._holding = False
        # Every lock wait of this connection ends at the limit, and says who it waits for after a second.
        with self._conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (int(limit / timedelta(milliseconds=1)),))
        self._conn.commit()
        self._locks = LockWaitWatch(
            dsn, self._conn.get_backend_pid(), self.where, limit, logging.getLogger("wsync").info
        )
        try:
            self._ensure_schema()
        except BaseException:
            self.close()
            raise

    def _clean(self, error: Exception) -> str:
        """The driver's message on one line, the password masked wherever it might appear."""
        # The server's own sentence, without the `LINE 1: CREATE TABLE …` excerpt that str() appends.
        diagnostics = getattr(error, "diag", None)
        message = " ".join(((diagnostics and diagnostics.message_primary) or str(error)).split())
        for password in self._passwords:
            message = message.replace(password, "***")
        return message

    def _ensure_schema(self) -> None:
        import psycopg2

        try:
            with self._locks.statement(), self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('wsync schema'))")
                cur.execute(_SCHEMA_TABLE)
                cur.execute("SELECT max(version) FROM wsync_schema")
                (version,) = cur.fetchone()
                if version is not None and version > SCHEMA_VERSION:
                    raise PostgresStoreError(
                        f"profile store {self.where}: has schema version {version}, newer than this wsync "
                        f"({SCHEMA_VERSION}); upgrade wsync"
                    )
                if version is None:
                    for statement in TABLES:
                        cur.execute(_ddl(statement))
                    cur.execute(_SEQUENCE)
                    cur.execute("INSERT INTO wsync_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                elif version < SCHEMA_VERSION:  # upgraded in place, one version at a time
                    for step in range(version, SCHEMA_VERSION):
                        for statement in UPGRADES[step]:
                            cur.execute(_ddl(statement))
                    cur.execute("UPDATE wsync_schema SET version = %s", (SCHEMA_VERSION,))
            self._conn.commit()
        except psycopg2.Error as error:
            self._conn.rollback()
            detail = self._clean(error)
            if getattr(error, "pgcode", None) == LOCK_NOT_AVAILABLE:
                raise PostgresStoreError(self._locks.gave_up()) from None
            if getattr(error, "pgcode", None) == "42501":  # insufficient_privilege
                detail = f"no permission to create the store's tables ({detail}); grant CREATE on the schema"
            elif getattr(error, "pgcode", None) == "3F000":  # invalid_schema_name: no schema to create in
                detail = (
                    f"no schema of its search path ({self._search_path()}) exists; create it, or name an "
                    "existing schema in the URL (?options=-csearch_path%3DSCHEMA)"
                )
            raise PostgresStoreError(f"profile store {self.where}: {detail}") from None
        except BaseException:
            self._conn.rollback()
            raise

    def _search_path(self) -> str:
        """The search path the connection has (after a failed statement was rolled back)."""
        with self._conn.cursor() as cur:
            cur.execute("SHOW search_path")
            (path,) = cur.fetchone()
        self._conn.rollback()
        return path

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the rows it changed."""
        with self._waiting(), self._conn.cursor() as cur:
            cur.execute(_pg(sql), params or None)
            changed = cur.rowcount
        self._end_alone()
        return changed

    def rows(self, sql: str, params: Params = ()) -> list[tuple]:
        """Run a query; its rows."""
        with self._waiting(), self._conn.cursor() as cur:
            cur.execute(_pg(sql), params or None)
            found = cur.fetchall()
        self._end_alone()
        return found

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """Around a statement that may wait for a lock: said while it waits, one line when it gives up."""
        import psycopg2

        try:
            with self._locks.statement():
                yield
        except psycopg2.Error as error:
            if error.pgcode != LOCK_NOT_AVAILABLE:
                raise
            if not self._holding:
                self._conn.rollback()
            raise PostgresStoreError(self._locks.gave_up()) from None

    def _end_alone(self) -> None:
        if not self._holding:
            self._conn.commit()

    def _copy(self, table: str, data: pa.Table) -> None:
        """COPY the rows in (CSV: an empty unquoted field is NULL, a quoted one an empty string), a slice
        at a time: the CSV text of a slice, not of the whole table, is what is held."""
        sql = f"COPY {table} ({', '.join(data.schema.names)}) FROM STDIN WITH (FORMAT csv)"
        for chunk in data.to_batches(max_chunksize=COPY_ROWS):
            buffer = io.BytesIO()
            csv.write_csv(chunk, buffer, csv.WriteOptions(include_header=False))
            buffer.seek(0)
            with self._waiting(), self._conn.cursor() as cur:
                cur.copy_expert(sql, buffer)

    def insert(self, table: str, data: pa.Table, conflict: str = "") -> int:
        """COPY straight in; with a conflict clause, COPY to a temp table and merge from it in one statement."""
        if not data.num_rows:
            return 0
        written = self._insert(table, data, conflict)
        if self._holding and written:
            self._grew(table, written)
        return written

    def _grew(self, table: str, written: int) -> None:
        """ANALYZE a table this transaction doubled: with autovacuum off or behind, a store filled by one
        delivery keeps its empty table's statistics, and its look-ups hash-join the whole table."""
        if table not in self._growth:
            [(estimate,)] = self.rows("SELECT reltuples FROM pg_class WHERE oid = to_regclass(?)", (table,))
            self._growth[table] = [max(int(estimate or 0), 0), 0]
        growth = self._growth[table]
        growth[1] += written
        if growth[1] < max(ANALYZE_ROWS, growth[0]):
            return
        growth[0], growth[1] = growth[0] + growth[1], 0
        import psycopg2.errors

        # ANALYZE holds its lock to commit: a table another delivery is analyzing is left to it, not waited on.
        lock = f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE NOWAIT"
        if self._attempt("wsync_analyze", lambda cur: cur.execute(lock), psycopg2.errors.LockNotAvailable):
            with self._conn.cursor() as cur:
                cur.execute(f"ANALYZE {table}")

    def _insert(self, table: str, data: pa.Table, conflict: str) -> int:
        if not conflict:
            self._copy(table, data)
            return data.num_rows
        if self._holding and table not in self._conflicted:
            if self._copy_new(table, data):
                return data.num_rows
            # Rows already held: this transaction's next batches of the table take the merge at once.
            self._conflicted.add(table)
        staging = f"copy_{table}"
        self.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
        self.execute(f"TRUNCATE {staging}")
        self._copy(staging, data)
        names = ", ".join(data.schema.names)
        return self.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} WHERE true {conflict}"
        )

    def _copy_new(self, table: str, data: pa.Table) -> bool:
        """COPY straight into the table inside a savepoint; False (and nothing written) if a row was held.

        Rows new to the table (a first delivery of events, an initial sync's fingerprints) skip the temp table
        and the merge: whatever its ON CONFLICT clause does, a batch without a conflict is written the same
        either way. Only inside a transaction."""
        import psycopg2.errors

        return self._attempt("wsync_copy", lambda _: self._copy(table, data), psycopg2.errors.UniqueViolation)

    def _attempt(self, savepoint: str, statement: Callable[[Any], object], error: type[Exception]) -> bool:
        """Run `statement` (given a cursor) in a savepoint: False, and nothing of it kept, if it raised `error`."""
        # A raw cursor, not execute(): its lock-wait handling would turn a NOWAIT lock's refusal into a failure.
        with self._conn.cursor() as cur:
            cur.execute(f"SAVEPOINT {savepoint}")
            try:
                statement(cur)
                kept = True
            except error:
                cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                kept = False
            # Any other error propagates as it was: releasing in an aborted transaction would hide it.
            cur.execute(f"RELEASE SAVEPOINT {savepoint}")
        return kept

    def stage(self, table: str, data: pa.Table) -> None:
        """Empty the staging table, then COPY."""
        self.execute(f"TRUNCATE {table}")
        if data.num_rows:
            self._copy(table, data)

    def begin_delivery(self) -> int:
        """A transaction (psycopg2 opens one on the first statement), the staging tables, a sequence number."""
        if self._holding:
            raise RuntimeError("a delivery is already open on this profile store")
        self._holding = True
        self.execute(f"SELECT pg_advisory_xact_lock_shared({_ERASURE_LOCK})")  # an erasure waits for us
        self.execute(f"SET LOCAL random_page_cost = {RANDOM_PAGE_COST}")
        # A delivery's statements probe indexes row by row, which the planner costs high enough to compile
        # with JIT: 20-100 ms a statement that saves nothing (at 1M users, a 1%-changed delivery's look-ups).
        self.execute("SET LOCAL jit = off")
        for statement in STAGING:
            self.execute(_ddl(statement))
        self.execute(
            "TRUNCATE delivery_profile, delivery_skipped, mirror_row_key, mirror_profile, history_profile"
        )
        [(seq,)] = self.rows("SELECT nextval('delivery_seq')")
        return seq

    def begin_write(self) -> None:
        """A transaction holding the erasure lock shared (as a delivery does), with the staging tables."""
        if self._holding:
            raise RuntimeError("a delivery is already open on this profile store")
        self._holding = True
        self.execute(f"SELECT pg_advisory_xact_lock_shared({_ERASURE_LOCK})")
        for statement in STAGING:
            self.execute(_ddl(statement))

    def begin_erasure(self) -> None:
        """A transaction alone against every delivery (they hold the erasure lock shared), with staging tables."""
        if self._holding:
            raise RuntimeError("a delivery is already open on this profile store")
        self._holding = True
        self.execute(f"SELECT pg_advisory_xact_lock({_ERASURE_LOCK})")
        for statement in STAGING:
            self.execute(_ddl(statement))

    def reclaim(self, tables: Sequence[str]) -> bool:
        """VACUUM the tables (outside a transaction), so the deleted rows' dead tuples go."""
        self._conn.autocommit = True
        try:
            with self._waiting(), self._conn.cursor() as cur:
                for table in tables:
                    cur.execute(f"VACUUM {table}")
        finally:
            self._conn.autocommit = False
        return True

    def lock_identities(self, environment: str) -> None:
        """Wait for other deliveries holding these identities or their profiles; hold them until commit.

        Locks are taken on hash buckets, in bucket order: a lock per identity would overflow PostgreSQL's
        lock table (max_locks_per_transaction) on a delivery of 100k customers. Small deliveries of
        different customers still meet in no bucket; big ones take most buckets and run one after another.
        """
        self.execute(_lock_buckets(1, _identity("identity_type", "value"), "stage_identity"), (environment,))
        owners = (
            "stage_identity AS s JOIN identities AS i ON i.environment = ?"
            " AND i.identity_type = s.identity_type AND i.value = s.value"
        )
        self.execute(_lock_buckets(2, "i.profile_id", owners), (environment,))

    def stored_owners(self, environment: str, values: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Backend.stored_owners: the values' locks, their owners, then the owners' locks (lock_identities'
        order), with JSON in and out, so no owner becomes a Python row."""
        if not values:
            return []
        types = [identity_type for identity_type, _ in values]
        self.stage(
            "stage_identity_values", pa.table({"identity_type": types, "vals": [a for _, a in values]})
        )
        self.execute(_LOCK_VALUES, (environment,))

        def look_up() -> str:
            """The owners into stage_owner; the snapshot before the look-up."""
            [(snapshot,)] = self.rows("SELECT pg_current_snapshot()::text")
            self.execute("TRUNCATE stage_owner")
            for identity_type in types:
                self.execute(_LOOK_UP_OWNERS, (identity_type, identity_type, environment, identity_type))
            return snapshot

        looked = look_up()
        self.execute(_LOCK_OWNERS)
        # Waiting for an owner's lock means its holder may have moved these identities; so may a delivery that
        # ended between the look-up and the locks. Either ended a transaction, which changes the snapshot: only
        # then is the look-up repeated (under the locks now held, as lock_identities' callers look).
        [(now,)] = self.rows("SELECT pg_current_snapshot()::text")
        if now != looked:
            look_up()
        found = {
            t: (owners, versions)
            for t, owners, versions in self.rows("SELECT identity_type, owners, versions FROM stage_owner")
        }
        return [found.get(identity_type, ("[]", "[]")) for identity_type in types]

    def commit(self) -> None:
        """Commit."""
        self._conn.commit()
        self._holding = False
        self._conflicted.clear()
        self._growth.clear()

    def rollback(self) -> None:
        """Roll back."""
        if not self._conn.closed:
            self._conn.rollback()
        self._holding = False
        self._conflicted.clear()
        self._growth.clear()

    def in_transaction(self) -> bool:
        """A delivery or a read is open."""
        return self._holding

    @contextmanager
    def read(self) -> Iterator[None]:
        """Queries in one REPEATABLE READ snapshot, unless a delivery is open (which sees its own writes)."""
        if self._holding:
            yield
            return
        self._holding = True
        try:
            self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield
        finally:
            self._conn.rollback()
            self._holding = False

    def try_hold(self, name: str) -> bool:
        """A session advisory lock: it outlives the transactions and goes with the connection, however the
        holder ends."""
        [(held,)] = self.rows("SELECT pg_try_advisory_lock(?, hashtext(?))", (_NAMED_LOCKS, name))
        return bool(held)

    def release(self, name: str) -> None:
        """Give the session advisory lock back."""
        self.rows("SELECT pg_advisory_unlock(?, hashtext(?))", (_NAMED_LOCKS, name))

    def close(self) -> None:
        """Close; an open delivery is rolled back."""
        self._locks.close()
        self._conn.close()

    def __getstate__(self) -> dict[str, Any]:  # a connection does not travel between processes
        raise TypeError("a PostgreSQL profile store connection cannot be pickled")
