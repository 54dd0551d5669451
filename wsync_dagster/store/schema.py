"""The SQLite profile store's tables, connection settings and per-connection staging tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 5
# The history of attribute changes keeps this many per profile, the newest (wsync profile --explain).
HISTORY_PER_PROFILE = 20
BUSY_TIMEOUT_S = 300.0

# Erasure (store/erasure.py): a per-store random salt, and the erased identities as salted one-way hashes
# (HMAC-SHA256), so a later run can reject a person's rows without the store holding who they are.
# `request` groups the identities of one erased person: `wsync erase --undo` lifts them together.
ERASURE_TABLES: tuple[str, ...] = (
    "CREATE TABLE erasure_salt (id INTEGER PRIMARY KEY CHECK (id = 1), salt TEXT NOT NULL)",
    """CREATE TABLE suppressions (
        environment TEXT NOT NULL,
        identity_hash TEXT NOT NULL,
        erased_on TEXT NOT NULL,
        request TEXT NOT NULL,
        PRIMARY KEY (environment, identity_hash)
    ) WITHOUT ROWID""",
    "CREATE INDEX suppressions_by_request ON suppressions (request)",
)

# The last HISTORY_PER_PROFILE changes of each profile's attribute registers (a value set, replaced or
# removed), one row per register and delivery: `replaced` is the register's value before, NULL if none.
HISTORY_TABLES: tuple[str, ...] = (
    """CREATE TABLE attribute_history (
        profile_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        sync TEXT NOT NULL,
        value TEXT,
        replaced TEXT,
        version INTEGER NOT NULL,
        partition_key TEXT,
        run_id TEXT,
        changed_at TEXT NOT NULL,
        PRIMARY KEY (profile_id, seq, name, sync)
    ) WITHOUT ROWID""",
)

# The outbox of the sync files' destinations (destinations/forwarding.py): a delivery marks, in its own
# transaction, each profile it changed as pending for each destination of its sync, under its sequence
# number; events carry the delivery that wrote them, so the pending (profile, seq) rows say which events go.
# `marks` counts the deliveries that marked a row: a forward removes a row only if nobody marked it since it
# read it. No value and no secret is kept here: the forward reads the profile as it is when it sends.
# `forwarded` lists who each destination received (by profile id): an erasure of one of them queues the
# platform's deletion in `erasure_pending`, which holds the identities to delete by only until it is sent.
FORWARDING_TABLES: tuple[str, ...] = (
    "ALTER TABLE events ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE forward_pending (
        sync TEXT NOT NULL,
        destination TEXT NOT NULL,
        environment TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        marks INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (sync, destination, profile_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE forwarded (
        sync TEXT NOT NULL,
        destination TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        PRIMARY KEY (sync, destination, profile_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX forwarded_by_profile ON forwarded (profile_id)",
    """CREATE TABLE erasure_pending (
        sync TEXT NOT NULL,
        destination TEXT NOT NULL,
        environment TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        identities TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        PRIMARY KEY (sync, destination, profile_id)
    ) WITHOUT ROWID""",
)

# Every value carries `version`: the time it describes (µs), or the sync's own order for integer iterators.
# `seq` is the delivery that wrote it, which breaks ties between syncs in favour of the later delivery.
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
        version INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (environment, identity_type, value)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX identities_one_per_type ON identities (profile_id, identity_type)",
    # One register per sync: value is JSON text, NULL a tombstone that keeps the version of a removal.
    # The profile shows, per name, the newest value of any sync, ties to the later delivery (seq).
    # partition_key and run_id: the delivery that wrote the register, for `wsync profile --explain`.
    """CREATE TABLE attributes (
        profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
        name TEXT NOT NULL,
        sync TEXT NOT NULL,
        value TEXT,
        version INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        partition_key TEXT,
        run_id TEXT,
        PRIMARY KEY (profile_id, name, sync)
    ) WITHOUT ROWID""",
    # An event's id is unique within its sync and environment: two syncs may both number events 1..n.
    """CREATE TABLE events (
        environment TEXT NOT NULL,
        sync TEXT NOT NULL,
        event_id TEXT NOT NULL,
        profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
        event_type TEXT,
        event_name TEXT,
        timestamp_ms INTEGER,
        data TEXT,
        PRIMARY KEY (environment, sync, event_id)
    )""",
    "CREATE INDEX events_by_profile ON events (profile_id, timestamp_ms)",
    """CREATE TABLE fingerprints (
        sync TEXT NOT NULL,
        environment TEXT NOT NULL,
        row_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sync, environment, row_key)
    ) WITHOUT ROWID""",
    # Rows a delivery could not use (kind 'rejected') or applied without an identity (kind 'conflict').
    """CREATE TABLE rejects (
        sync TEXT NOT NULL,
        environment TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        row_number INTEGER,
        reason TEXT NOT NULL,
        row TEXT,
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'rejected'
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
        seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sync, environment, partition_key)
    )""",
    *ERASURE_TABLES,
    *HISTORY_TABLES,
    *FORWARDING_TABLES,
)

# The attributes table as schema versions 2 and 3 had it: what the upgrade from version 1 builds.
_ATTRIBUTES_V2 = """CREATE TABLE attributes (
    profile_id TEXT NOT NULL REFERENCES profiles (profile_id),
    name TEXT NOT NULL,
    sync TEXT NOT NULL,
    value TEXT,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (profile_id, name, sync)
) WITHOUT ROWID"""

# Older stores are upgraded in place, one version at a time; nothing they hold is lost.
UPGRADES: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE identities ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE fingerprints ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE rejects ADD COLUMN kind TEXT NOT NULL DEFAULT 'rejected'",
        "ALTER TABLE deliveries ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attributes RENAME TO attributes_v1",
        _ATTRIBUTES_V2,
        "INSERT INTO attributes (profile_id, name, sync, value, version, seq, updated_at)"
        " SELECT profile_id, name, sync, value, version, 0, updated_at FROM attributes_v1",
        "DROP TABLE attributes_v1",
        "ALTER TABLE events RENAME TO events_v1",
        "DROP INDEX events_by_profile",
        TABLES[4],
        TABLES[5],
        "INSERT INTO events (environment, sync, event_id, profile_id, event_type, event_name, timestamp_ms, data)"
        " SELECT environment, sync, event_id, profile_id, event_type, event_name, timestamp_ms, data"
        " FROM events_v1",
        "DROP TABLE events_v1",
    ),
    2: ERASURE_TABLES,
    3: (
        "ALTER TABLE attributes ADD COLUMN partition_key TEXT",
        "ALTER TABLE attributes ADD COLUMN run_id TEXT",
        *HISTORY_TABLES,
    ),
    4: FORWARDING_TABLES,
}

# Staging tables live in the connection's temp schema: invisible to other connections, gone on close.
STAGING: tuple[str, ...] = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_identity (identity_type TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS stage_profile (profile_id TEXT NOT NULL)",
    # PostgreSQL: a batch's distinct values of each identity type as one JSON array, and their stored owners and
    # versions as two, in the same order (Backend.stored_owners).
    "CREATE TEMP TABLE IF NOT EXISTS stage_identity_values (identity_type TEXT NOT NULL, vals TEXT NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS stage_owner (identity_type TEXT NOT NULL, owners TEXT, versions TEXT)",
    # A mirroring full-mode delivery: every row key it saw and every profile its rows found, unchanged rows included.
    "CREATE TEMP TABLE IF NOT EXISTS mirror_row_key (row_key TEXT NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS mirror_profile (profile_id TEXT NOT NULL)",
    """CREATE TEMP TABLE IF NOT EXISTS stage_identity_version (
        identity_type TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL
    )""",
    "CREATE TEMP TABLE IF NOT EXISTS stage_fingerprint (row_key TEXT, fingerprint TEXT, n INTEGER)",
    # SQLite: the fingerprints a delivery stores, written to `fingerprints` in key order at its end.
    "CREATE TEMP TABLE IF NOT EXISTS delivery_fingerprint (row_key TEXT, fingerprint TEXT, version INTEGER)",
    """CREATE TEMP TABLE IF NOT EXISTS stage_attribute (
        profile_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT, version INTEGER NOT NULL
    )""",
    # The staged values that win this sync's register; change is what the profile shows:
    # 0 nothing visible changes, 1 a value is set, 2 the value is removed.
    # own_value: the sync's register value before, for the history.
    """CREATE TEMP TABLE IF NOT EXISTS stage_attribute_win (
        profile_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT, version INTEGER NOT NULL,
        change INTEGER NOT NULL, own_value TEXT
    )""",
    # Profiles whose attribute history the open delivery added to: trimmed to HISTORY_PER_PROFILE at its end.
    "CREATE TEMP TABLE IF NOT EXISTS history_profile (profile_id TEXT PRIMARY KEY)",
    # Profiles created or updated by the open delivery, per partition, so each is counted once in each.
    """CREATE TEMP TABLE IF NOT EXISTS delivery_profile (
        partition_key TEXT NOT NULL, profile_id TEXT NOT NULL, created INTEGER NOT NULL, n INTEGER,
        PRIMARY KEY (partition_key, profile_id)
    )""",
    # Identity keys the open delivery skipped, per partition: profiles_skipped counts them once.
    """CREATE TEMP TABLE IF NOT EXISTS delivery_skipped (
        partition_key TEXT NOT NULL, identity_key TEXT NOT NULL, PRIMARY KEY (partition_key, identity_key)
    )""",
)


# SQLite's page cache, in KiB; and the smaller one a delivery sorts its fingerprints under (the sorter takes
# as much memory as the cache before it spills to disk).
CACHE_KIB = 65_536
SORT_CACHE_KIB = 8_192


def connect(path: Path) -> sqlite3.Connection:
    """Open the store in WAL mode, creating or upgrading its tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT), one per delivery.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode can lose the last commits on power loss but never corrupts the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
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
        else:
            for step in range(version, SCHEMA_VERSION):
                for statement in UPGRADES[step]:
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
