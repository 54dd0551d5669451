"""Erasure (`wsync erase`): a person removed from the profile store and kept out of it.

The erased identities stay in the store only as HMAC-SHA256 hashes keyed with a per-store random salt
(table `suppressions`), so a later delivery can turn the person's rows into rejects (`erased on DATE`)
without the store holding who they were. Each erased person is one request: `--undo` lifts it whole.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wsync_dagster import batches as b
from wsync_dagster.identities import IDENTITY_PRIORITY
from wsync_dagster.store import outbox
from wsync_dagster.store.backend import Backend

Identity = tuple[str, str]  # (identity type, value)

ERASED = "erased"  # the kind of a reject the suppression list made
# Every table an erasure deletes from: what PostgreSQL vacuums afterwards.
TOUCHED_TABLES = (
    "events",
    "attributes",
    "attribute_history",
    "identities",
    "profiles",
    "fingerprints",
    "rejects",
    "suppressions",
    "forward_pending",
    "forwarded",
)

_duckdb = threading.local()
# HMAC-SHA256 (RFC 2104) in DuckDB, vectorized over a column: sha256(K ^ opad || sha256(K ^ ipad || message)).
_HMAC = "SELECT sha256($outer || unhex(sha256($inner || encode(message)))) AS h FROM messages"

# Rejects whose stored row may hold one of the staged values: a set-based first pass by substring; each
# found row is then read as JSON (Python's reader: the raw rows may hold NaN, which SQL JSON refuses).
_REJECTS_MENTIONING = """
SELECT sync, partition_key, kind, row_number, "row" FROM rejects
WHERE environment = ? AND "row" IS NOT NULL
  AND EXISTS (SELECT 1 FROM stage_identity AS s WHERE {position}(rejects."row", s.value) > 0)
"""
_POSITION = {"sqlite": "instr", "postgresql": "strpos"}


@dataclass
class Erasure:
    """What one erasure did, as counts; `values` (the person's identities) is only for the batch files."""

    found: dict[Identity, int]  # per identity asked for: the identities suppressed with it (0: no profile)
    profiles: int = 0
    identities: int = 0
    attributes: int = 0
    history: int = 0  # changes of the profiles' attribute history
    events: int = 0
    rejects: int = 0
    fingerprints: int = 0
    syncs_refingerprinted: list[str] = field(default_factory=list)
    suppressed: int = 0
    deletions_queued: int = 0  # the platforms' deletion requests queued for destinations that had the person
    erased_on: str = ""
    wal_emptied: bool = True
    values: dict[str, set[str]] = field(default_factory=dict, repr=False)


def identity_hashes(salt: str, identity_type: str, values: pa.Array) -> pa.Array:
    """The salted one-way hash of each identity value of a type (null stays null): the one place it is made."""
    key = bytes.fromhex(salt).ljust(64, b"\0")
    messages = pa.table(
        {"message": pc.binary_join_element_wise(pa.scalar(identity_type), values.cast(pa.string()), "\x1f")}
    )
    if not hasattr(_duckdb, "connection"):  # opening one costs ~30 ms: one per thread, kept
        _duckdb.connection = duckdb.connect()
    connection = _duckdb.connection
    connection.register("messages", messages)
    try:
        result = connection.sql(
            _HMAC, params={"inner": bytes(k ^ 0x36 for k in key), "outer": bytes(k ^ 0x5C for k in key)}
        ).to_arrow_table()
    finally:
        connection.unregister("messages")
    return result.column("h").combine_chunks()


class Suppression:
    """A delivery's check of incoming rows against the suppression list: an erased person's rows are
    dropped and kept as rejects `erased on DATE` (no values stored), counted as rows_suppressed."""

    def __init__(self, db: Backend, *, sync: str, environment: str, partitions: Sequence[str]):
        self._db, self._sync, self._environment = db, sync, environment
        # Found again by this delivery, so those of an earlier delivery of its partitions go.
        if db.rows(
            "SELECT 1 FROM rejects WHERE sync = ? AND environment = ? AND kind = ? LIMIT 1",
            (sync, environment, ERASED),
        ):
            for partition in partitions:
                db.execute(
                    "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ? AND kind = ?",
                    (sync, environment, partition, ERASED),
                )
        salt = db.rows("SELECT salt FROM erasure_salt")
        listed = db.rows(
            "SELECT identity_hash, erased_on FROM suppressions WHERE environment = ?", (environment,)
        )
        self._salt = salt[0][0] if salt else ""
        self._hashes = pa.array([h for h, _ in listed], pa.string())
        self._erased_on = pa.array([on for _, on in listed], pa.string())
        self._types: set[str] = set()  # the identity types of the batches seen, for the rejects

    def drop(self, batch: pa.RecordBatch, partition: str) -> tuple[pa.RecordBatch, int]:
        """The batch without the rows of erased people, and how many there were (stored as rejects)."""
        if not len(self._hashes) or not batch.num_rows:
            return batch, 0
        erased_on = pa.nulls(batch.num_rows, pa.string())
        for identity_type, column in b.identity_columns(batch.schema).items():
            self._types.add(identity_type)
            erased_on = pc.coalesce(erased_on, self._erased_on_of(identity_type, batch.column(column)))
        suppressed = pc.is_valid(erased_on)
        n = int(pc.sum(suppressed).as_py() or 0)
        if not n:
            return batch, 0
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        self._db.insert(
            "rejects",
            pa.table(
                {
                    "sync": pa.repeat(self._sync, n),
                    "environment": pa.repeat(self._environment, n),
                    "partition_key": pa.repeat(partition, n),
                    "row_number": batch.column(b.ROW).filter(suppressed),
                    "reason": pc.binary_join_element_wise("erased on ", erased_on.filter(suppressed), ""),
                    "row": pa.nulls(n, pa.string()),
                    "created_at": pa.repeat(now, n),
                    "kind": pa.repeat(ERASED, n),
                }
            ),
        )
        return batch.filter(pc.invert(suppressed)), n

    def redact(self, rejects: pa.Table) -> pa.Table:
        """Mapping rejects whose raw row holds an erased identity: kept by number, reason `erased on DATE`,
        without the row (a rejected row must not bring the person's values back either)."""
        if not len(self._hashes) or not rejects.num_rows:
            return rejects
        rows = rejects.column("row").to_pylist()
        # Rejects are few, and the raw row's columns are not yet identities: every value is tried as each.
        held = [(i, value) for i, row in enumerate(rows) if row for value in _json_values(_parsed(row))]
        if not held:
            return rejects
        values = pa.array([value for _, value in held], pa.string())
        erased_on = pa.nulls(len(held), pa.string())
        for identity_type in sorted(self._types) or IDENTITY_PRIORITY:
            erased_on = pc.coalesce(erased_on, self._erased_on_of(identity_type, values))
        reasons = rejects.column("reason").to_pylist()
        for (i, _), on in zip(held, erased_on.to_pylist(), strict=True):
            if on is not None:
                reasons[i], rows[i] = f"erased on {on}", None
        return rejects.set_column(
            rejects.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string())
        ).set_column(rejects.schema.get_field_index("row"), "row", pa.array(rows, pa.string()))

    def _erased_on_of(self, identity_type: str, values: pa.Array) -> pa.Array:
        """Per value, the day its identity was erased, or null."""
        hashes = identity_hashes(self._salt, identity_type, values)
        return self._erased_on.take(pc.index_in(hashes, value_set=self._hashes))


def erase(db: Backend, identities: Sequence[Identity], environment: str) -> Erasure:
    """Remove the people these identities find, in one transaction, and suppress all their identities."""
    erased_on = datetime.now(UTC).date().isoformat()
    db.begin_erasure()
    try:
        salt = _salt(db)
        db.stage("stage_identity", _table(identities))
        owner = {
            (t, v): p
            for t, v, p in db.rows(
                "SELECT s.identity_type, s.value, i.profile_id FROM stage_identity AS s JOIN identities AS i"
                " ON i.environment = ? AND i.identity_type = s.identity_type AND i.value = s.value",
                (environment,),
            )
        }
        profile_ids = sorted(set(owner.values()))
        db.stage("stage_profile", pa.table({"profile_id": pa.array(profile_ids, pa.string())}))
        held = db.rows(
            "SELECT profile_id, identity_type, value FROM identities"
            " WHERE profile_id IN (SELECT profile_id FROM stage_profile)"
        )
        # One request per person asked for: the identities their profile holds are suppressed with it.
        of_profile: dict[str, list[Identity]] = {}
        for profile_id, identity_type, value in held:
            of_profile.setdefault(profile_id, []).append((identity_type, value))
        request: dict[Identity, str] = {}
        found: dict[Identity, int] = {}
        for identity in identities:
            request[identity] = uuid.uuid4().hex
            person = of_profile.get(owner.get(identity, ""), [])
            for other in person:
                request[other] = request[identity]
            found[identity] = len({*person, identity}) if person else 0
        result = Erasure(found=found, erased_on=erased_on)
        result.suppressed = _suppress(db, salt, request, environment, erased_on)
        in_profiles = "profile_id IN (SELECT profile_id FROM stage_profile)"
        # A fingerprint's row key is an unsalted hash of a row's identities: the syncs that wrote the
        # person lose them all, so their next run re-applies every row (as a first run would).
        syncs = db.rows(
            f"SELECT sync FROM attributes WHERE {in_profiles}"
            f" UNION SELECT sync FROM events WHERE environment = ? AND {in_profiles} ORDER BY 1",
            (environment,),
        )
        result.syncs_refingerprinted = [sync for (sync,) in syncs]
        for sync in result.syncs_refingerprinted:
            result.fingerprints += db.execute(
                "DELETE FROM fingerprints WHERE sync = ? AND environment = ?", (sync, environment)
            )
        result.deletions_queued = _queue_deletions(db, environment, of_profile)
        db.execute(f"DELETE FROM forward_pending WHERE {in_profiles}")
        result.events = db.execute(f"DELETE FROM events WHERE {in_profiles}")
        result.attributes = db.execute(f"DELETE FROM attributes WHERE {in_profiles}")
        # The history holds the person's past values: they go too.
        result.history = db.execute(f"DELETE FROM attribute_history WHERE {in_profiles}")
        result.identities = db.execute(f"DELETE FROM identities WHERE {in_profiles}")
        result.profiles = db.execute(f"DELETE FROM profiles WHERE {in_profiles}")
        everyone = sorted(set(identities) | {(t, v) for _, t, v in held})
        db.stage("stage_identity", _table(everyone))
        result.rejects = _delete_rejects_holding(db, {value for _, value in everyone}, environment)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    result.wal_emptied = db.reclaim(TOUCHED_TABLES)
    for identity_type, value in everyone:
        result.values.setdefault(identity_type, set()).add(value)
    return result


def lift(db: Backend, identities: Sequence[Identity], environment: str) -> dict[Identity, int]:
    """Lift the suppression of each identity's request (the person's identities together); how many went."""
    salt = db.rows("SELECT salt FROM erasure_salt")
    lifted: dict[Identity, int] = {identity: 0 for identity in identities}
    if not salt:
        return lifted
    db.begin_erasure()
    try:
        for identity in identities:
            (hashed,) = identity_hashes(salt[0][0], identity[0], pa.array([identity[1]])).to_pylist()
            lifted[identity] = db.execute(
                "DELETE FROM suppressions WHERE environment = ? AND request IN ("
                " SELECT request FROM suppressions WHERE environment = ? AND identity_hash = ?)",
                (environment, environment, hashed),
            )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return lifted


def remove_from_batch_files(directory: Path, values: dict[str, set[str]]) -> int:
    """Rewrite the undelivered batch files under a folder without the rows holding these identities."""
    if not directory.is_dir():
        return 0
    wanted = {value for person in values.values() for value in person}
    removed = 0
    for sync_folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        b.remove_stale_files(sync_folder)  # a killed writer's temporary files go first
        for path in sorted(sync_folder.glob("*.mapped.parquet")):
            removed += _rewrite(path, lambda table: _mapped_rows_of(table, values))
        for path in sorted(sync_folder.glob("*.rejects.parquet")):
            removed += _rewrite(path, lambda table: _reject_rows_of(table, wanted))
    return removed


def _mapped_rows_of(table: pa.Table, values: dict[str, set[str]]) -> pa.Array:
    holds = pa.repeat(False, table.num_rows)
    for identity_type, column in b.identity_columns(table.schema).items():
        if identity_type in values:
            found = pc.is_in(table.column(column), value_set=pa.array(sorted(values[identity_type])))
            holds = pc.or_(holds, pc.fill_null(found, False))
    return holds


def _reject_rows_of(table: pa.Table, wanted: set[str]) -> pa.Array:
    # Rejects files are small and erasure is rare: each stored row is read as JSON here.
    rows = table.column("row").to_pylist()
    return pa.array([row is not None and _holds(row, wanted) for row in rows])


def _delete_rejects_holding(db: Backend, values: set[str], environment: str) -> int:
    """Delete the stored rejects (rejected rows, conflicts) whose row holds one of the staged values."""
    deleted = 0
    for sync, partition, kind, row_number, row in db.rows(
        _REJECTS_MENTIONING.format(position=_POSITION[db.name]), (environment,)
    ):
        if _holds(row, values):
            deleted += db.execute(
                "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ? AND kind = ?"
                ' AND row_number IS NOT DISTINCT FROM ? AND "row" = ?',
                (sync, environment, partition, kind, row_number, row),
            )
    return deleted


def _holds(row: str, values: set[str]) -> bool:
    """A stored row (JSON text) holds one of the values; a row that does not parse, if its text has one."""
    parsed = _parsed(row)
    return bool(_json_values(parsed) & values) if parsed is not None else any(v in row for v in values)


def _parsed(row: str) -> object:
    try:
        return json.loads(row)
    except ValueError:
        return None


def _json_values(node: object) -> set[str]:
    if isinstance(node, dict):
        return set().union(*map(_json_values, node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*map(_json_values, node)) if node else set()
    return set() if node is None else {str(node).strip()}


def _rewrite(path: Path, rows_of_person) -> int:
    """Replace a Parquet file by itself without the person's rows (atomically, keeping its age)."""
    before = path.stat()
    table = pq.read_table(path)
    holds = rows_of_person(table)
    n = int(pc.sum(holds).as_py() or 0)
    if not n:
        return 0
    staged = path.with_name(f"{path.name}.erase{b.TEMPORARY_SUFFIX}")
    pq.write_table(table.filter(pc.invert(holds)), staged)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))  # the retention sweep goes by age
    staged.replace(path)
    return n


def _queue_deletions(db: Backend, environment: str, of_profile: dict[str, list[Identity]]) -> int:
    """Each destination that received an erased profile, or may have (it was pending there), gets the
    platform's deletion request, queued in this transaction with the identities it deletes by."""
    # Pending too: a send of them may have been under way (killed, or stopped before its acknowledgement).
    received = db.rows(
        "SELECT sync, destination, profile_id FROM forwarded"
        " WHERE profile_id IN (SELECT profile_id FROM stage_profile)"
        " UNION SELECT sync, destination, profile_id FROM forward_pending"
        " WHERE profile_id IN (SELECT profile_id FROM stage_profile) ORDER BY 1, 2, 3"
    )
    db.execute("DELETE FROM forwarded WHERE profile_id IN (SELECT profile_id FROM stage_profile)")
    people = [(sync, destination, p, dict(of_profile.get(p, []))) for sync, destination, p in received]
    return outbox.queue_deletions(db, environment, people)


def _salt(db: Backend) -> str:
    """The store's salt, made (32 random bytes) on the first erasure."""
    db.execute(
        "INSERT INTO erasure_salt (id, salt) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
        (secrets.token_hex(32),),
    )
    return db.rows("SELECT salt FROM erasure_salt")[0][0]


def _suppress(db: Backend, salt: str, request: dict[Identity, str], environment: str, erased_on: str) -> int:
    """Add the identities' hashes to the suppression list (a repeated erasure moves them to its request)."""
    hashes, requests = [], []
    for identity_type in sorted({t for t, _ in request}):
        mine = sorted(v for t, v in request if t == identity_type)
        hashes.append(identity_hashes(salt, identity_type, pa.array(mine, pa.string())))
        requests.extend(request[(identity_type, v)] for v in mine)
    n = len(requests)
    return db.insert(
        "suppressions",
        pa.table(
            {
                "environment": pa.repeat(environment, n),
                "identity_hash": pa.concat_arrays(hashes) if hashes else pa.array([], pa.string()),
                "erased_on": pa.repeat(erased_on, n),
                "request": pa.array(requests, pa.string()),
            }
        ),
        "ON CONFLICT (environment, identity_hash) DO UPDATE SET"
        " erased_on = excluded.erased_on, request = excluded.request",
    )


def _table(identities: Sequence[Identity]) -> pa.Table:
    return pa.table(
        {
            "identity_type": pa.array([t for t, _ in identities], pa.string()),
            "value": pa.array([v for _, v in identities], pa.string()),
        }
    )
