"""The SQLite profile store's tables, connection settings and per-connection staging tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 300.0

TABLES: tuple[str, ...] = (
    """CREATE TABLE profiles (
        profile_id TEXT PRIMARY KEY,
        environment TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE identities (
        environment TEXT NOT NULL,
        identity_type TEXT NOT NULL,
        value TEXT NOT NULL,
        profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
        created_at TEXT NOT NULL,
        PRIMARY KEY (environment, identity_type, value)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX identities_one_per_type ON identities (profile_id, identity_type)",
    # value is JSON text; NULL is a tombstone that keeps the version of a removal.
    """CREATE TABLE attributes (
        profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
        name TEXT NOT NULL,
        value TEXT,
        sync TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (profile_id, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE events (
        environment TEXT NOT NULL,
        event_id TEXT NOT NULL,
        profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
        sync TEXT NOT NULL,
        event_type TEXT,
        event_name TEXT,
        timestamp_ms INTEGER,
        data TEXT,
        PRIMARY KEY (environment, event_id)
    )""",
    "CREATE INDEX events_by_profile ON events (profile_id, timestamp_ms)",
    """CREATE TABLE fingerprints (
        sync TEXT NOT NULL,
        environment TEXT NOT NULL,
        row_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (sync, environment, row_key)
    ) WITHOUT ROWID""",
    """CREATE TABLE rejects (
        sync TEXT NOT NULL,
        environment TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        row_number INTEGER,
        reason TEXT NOT NULL,
        row TEXT,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX rejects_by_partition ON rejects (sync, environment, partition_key, row_number)",
    """CREATE TABLE deliveries (
        sync TEXT NOT NULL,
        environment TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        window_start INTEGER,
        window_end INTEGER,
        counts TEXT NOT NULL,
        delivered_at TEXT NOT NULL,
        PRIMARY KEY (sync, environment, partition_key)
    )""",
)

# Staging tables live in the connection's temp schema: invisible to other connections, gone on close.
STAGING: tuple[str, ...] = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_identity (identity_type TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS stage_fingerprint (row_key TEXT, fingerprint TEXT)",
    """CREATE TEMP TABLE IF NOT EXISTS stage_attribute (
        profile_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT, version INTEGER NOT NULL
    )""",
    # The staged values that win over the stored ones; change: 0 none visible, 1 set, 2 removed.
    """CREATE TEMP TABLE IF NOT EXISTS stage_attribute_win (
        profile_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT, version INTEGER NOT NULL,
        change INTEGER NOT NULL
    )""",
    # Profiles created or updated by the open delivery, so each is counted once per delivery.
    """CREATE TEMP TABLE IF NOT EXISTS delivery_profile (
        profile_id TEXT PRIMARY KEY, created INTEGER NOT NULL
    )""",
)


def connect(path: Path) -> sqlite3.Connection:
    """Open the store in WAL mode, creating or upgrading its tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT), one per delivery.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode can lose the last commits on power loss but never corrupts the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -65536")
    # A big delivery's WAL is checkpointed after commit; don't keep the file at its peak size.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    _ensure_schema(conn)
    return conn


def _ensure_schema(conn: sqlite3.Connection) -> None:
    # Checked before taking the write lock so that readers never wait behind a running delivery.
    version = _user_version(conn)
    _check_version(version)
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)
        _check_version(version)
        if version == 0:
            for statement in TABLES:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the profile store has schema version {version}, newer than this wsync ({SCHEMA_VERSION})"
        )


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]
