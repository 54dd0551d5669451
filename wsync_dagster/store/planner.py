"""The delivery planner of both store backends: what a delivery does, in portable SQL over a Backend."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster import batches as b
from wsync_dagster.disk_space import DiskFullError, is_disk_full
from wsync_dagster.identities import priority
from wsync_dagster.store import erasure, outbox
from wsync_dagster.store.backend import Backend
from wsync_dagster.store.counts import DeliveryCounts, MirrorHold
from wsync_dagster.store.explain import explain as explained
from wsync_dagster.store.resolution import (
    CREATE_AND_UPDATE,
    INPUT_PROTECTIONS,
    READ_ONLY,
    Identity,
    IdentityGraph,
    IdentityKey,
    Resolution,
    match_existing,
    profile_id_for,
    resolve,
)
from wsync_dagster.store.schema import CACHE_KIB, HISTORY_PER_PROFILE, SORT_CACHE_KIB
from wsync_dagster.store.settle import BatchKeys, Settled, StoredOwners, settle
from wsync_dagster.store.sqlite import SQLiteBackend

PREVIEW_PROFILES = 20
# Past this many identities (about 500 bytes each in Python) a delivery starts its graph over from the
# store, which holds all of it anyway: memory stays bounded by the batch however big the delivery.
RESOLUTION_ENTRIES_MAX = 100_000
# Re-asserted identities whose newer stamps wait to be written: past this many they are written at once.
RESTAMPS_MAX = 100_000
# Easy identity keys are settled for the whole batch at once (store/settle.py); off, resolve does every key.
SET_WISE = True
_MD5_HEX = 32
_HASH_HEX = 16  # a fingerprint: the 64-bit hash of the mapped row, in hex

# The stored owner of each staged identity, with the version it was last asserted with.
_STORED_OWNERS = """
SELECT i.identity_type, i.value, i.profile_id, i.version
FROM stage_identity AS s
JOIN identities AS i ON i.environment = ? AND i.identity_type = s.identity_type AND i.value = s.value
"""

# Every identity held by a profile that owns one of the staged identities.
_REACHABLE_IDENTITIES = """
SELECT held.profile_id, held.identity_type, held.value, held.version
FROM identities AS held
WHERE held.profile_id IN (
    SELECT owned.profile_id
    FROM stage_identity AS s
    JOIN identities AS owned
      ON owned.environment = ? AND owned.identity_type = s.identity_type AND owned.value = s.value
)
"""

# The staged rows whose fingerprint is not the stored one of their row key: an anti-join, so only the
# changed rows (few, on a re-sync) come back, by their place in the batch.
_CHANGED_ROWS = """
SELECT s.n FROM stage_fingerprint AS s
WHERE NOT EXISTS (
    SELECT 1 FROM fingerprints AS f
    WHERE f.sync = ? AND f.environment = ? AND f.row_key = s.row_key AND f.fingerprint = s.fingerprint
)
"""


def _newest_other(column: str, row: str) -> str:
    """A column of the newest value another sync set for the attribute of `row` (a correlated subquery)."""
    return (
        f"(SELECT a.{column} FROM attributes AS a WHERE a.profile_id = {row}.profile_id AND a.name = {row}.name"
        " AND a.sync <> :sync AND a.value IS NOT NULL ORDER BY a.version DESC, a.seq DESC LIMIT 1)"
    )


# A staged value wins this sync's register when it is newer, or as new and greater (its JSON text in byte
# order, a removal lowest), so two values of one version settle alike in any order. What the profile shows
# is the newest value of any sync, so the change is worked out against the newest value of the other syncs:
# found by its version first, and its value and delivery looked up only where there is one (where no other
# sync sets the attribute, a register costs two probes of the attributes' key, not four). `was` is the newest
# stored value of any sync: this sync's, unless another's is newer (or as new and of a later delivery).
_WINNING_ATTRIBUTES = f"""
INSERT INTO stage_attribute_win (profile_id, name, value, version, change, own_value)
WITH staged AS MATERIALIZED (
    SELECT s.profile_id, s.name, s.value, s.version,
           own.value AS own_value, own.version AS own_version, own.seq AS own_seq,
           {_newest_other("version", "s")} AS other_version
    FROM stage_attribute AS s
    LEFT JOIN attributes AS own ON own.profile_id = s.profile_id AND own.name = s.name AND own.sync = :sync
    WHERE own.profile_id IS NULL
       OR s.version > own.version
       OR (s.version = own.version AND s.value IS NOT NULL AND (own.value IS NULL OR s.value > own.value {{binary}}))
), other AS MATERIALIZED (
    SELECT t.*,
           CASE WHEN t.other_version IS NOT NULL THEN
               {_newest_other("value", "t")} END AS other_value,
           CASE WHEN t.other_version = t.own_version THEN
               {_newest_other("seq", "t")} END AS other_seq
    FROM staged AS t
), decided AS MATERIALIZED (
    SELECT profile_id, name, value, version, own_value,
           CASE WHEN other_version IS NULL THEN own_value
                WHEN own_value IS NOT NULL AND (own_version > other_version
                     OR (own_version = other_version AND own_seq > other_seq)) THEN own_value
                ELSE other_value END AS was,
           CASE WHEN value IS NOT NULL AND (other_version IS NULL OR version >= other_version) THEN value
                ELSE other_value END AS shown
    FROM other
)
SELECT profile_id, name, value, version,
       CASE WHEN shown IS NOT NULL AND (was IS NULL OR was <> shown) THEN 1
            WHEN shown IS NULL AND was IS NOT NULL THEN 2
            ELSE 0 END,
       own_value
FROM decided
ORDER BY profile_id, name
"""

# The staged winners are already decided, so the update is unconditional. "WHERE true" keeps SQLite
# from reading ON CONFLICT as a join constraint.
_UPSERT_ATTRIBUTES = """
INSERT INTO attributes (profile_id, name, sync, value, version, seq, updated_at, partition_key, run_id)
SELECT profile_id, name, :sync, value, version, :seq, :now, :partition, :run FROM stage_attribute_win WHERE true
ON CONFLICT (profile_id, name, sync) DO UPDATE SET
    value = excluded.value, version = excluded.version, seq = excluded.seq, updated_at = excluded.updated_at,
    partition_key = excluded.partition_key, run_id = excluded.run_id
"""

# A register written twice by one delivery keeps one history row: the value before the delivery, the last after.
_HISTORY_ONCE = """
ON CONFLICT (profile_id, seq, name, sync) DO UPDATE SET
    value = excluded.value, version = excluded.version, partition_key = excluded.partition_key,
    run_id = excluded.run_id, changed_at = excluded.changed_at
"""

# The staged winners whose register value changes (a version bump of the same value is no change), on
# profiles that existed before the delivery: what a profile created by it holds, its registers explain.
_CHANGED_WINNERS = """
FROM stage_attribute_win WHERE own_value IS DISTINCT FROM value
  AND profile_id NOT IN (SELECT profile_id FROM delivery_profile WHERE created = 1)
"""

_HISTORY_OF_WINNERS = f"""
INSERT INTO attribute_history
    (profile_id, seq, name, sync, value, replaced, version, partition_key, run_id, changed_at)
SELECT profile_id, :seq, name, :sync, value, own_value, version, :partition, :run, :now
{_CHANGED_WINNERS}
{_HISTORY_ONCE}
"""

# Each profile the delivery changed keeps the newest HISTORY_PER_PROFILE changes of its history: what is
# older than its HISTORY_PER_PROFILE-th newest goes (found by walking the primary key back, per profile).
_TRIM_HISTORY = f"""
DELETE FROM attribute_history
WHERE profile_id IN (SELECT profile_id FROM history_profile)
  AND (seq, name, sync) < (
    SELECT h.seq, h.name, h.sync FROM attribute_history AS h
    WHERE h.profile_id = attribute_history.profile_id
    ORDER BY h.seq DESC, h.name DESC, h.sync DESC LIMIT 1 OFFSET {HISTORY_PER_PROFILE - 1}
  )
"""

# Per name, the newest value of any sync; ties go to the later delivery.
_SHOWN_ATTRIBUTES = """
SELECT name, value FROM (
    SELECT name, value, ROW_NUMBER() OVER (PARTITION BY name ORDER BY version DESC, seq DESC) AS newest
    FROM attributes WHERE profile_id = ? AND value IS NOT NULL
) AS ranked
WHERE newest = 1 ORDER BY name
"""

_EVENTS_ONCE = "ON CONFLICT (environment, sync, event_id) DO NOTHING"

# Stored for a row key whose differing rows of one run came in two batches: matches no row, so they are all
# applied again (within a batch they share one fingerprint, _fingerprints_of_ties).
NO_FINGERPRINT = ""
# A fingerprint says what the store holds for a row, so an older run never replaces a newer one's; two
# different ones of one version (rows of one key in two batches of a run) leave NO_FINGERPRINT.
_NEWER_FINGERPRINT = f"""
ON CONFLICT (sync, environment, row_key) DO UPDATE SET
    fingerprint = CASE WHEN excluded.version = fingerprints.version
                        AND excluded.fingerprint <> fingerprints.fingerprint THEN '{NO_FINGERPRINT}'
                       ELSE excluded.fingerprint END,
    updated_at = excluded.updated_at, version = excluded.version
WHERE excluded.version >= fingerprints.version
"""

_UPSERT_DELIVERY = """
INSERT INTO deliveries (sync, environment, partition_key, window_start, window_end, counts, delivered_at, seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (sync, environment, partition_key) DO UPDATE SET
    window_start = excluded.window_start, window_end = excluded.window_end,
    counts = excluded.counts, delivered_at = excluded.delivered_at, seq = excluded.seq
"""

_MARKED_ONCE = "ON CONFLICT (partition_key, profile_id) DO NOTHING"

Window = tuple[int | None, int | None]


class ProfileStore:
    """Profiles in a store (a SQLite file, or PostgreSQL): one write transaction per delivery; readers see
    the last commit. What a delivery does is decided here; the backend only runs it."""

    def __init__(self, store: Path | str | Backend):
        self._db: Backend = SQLiteBackend(Path(store)) if isinstance(store, Path | str) else store
        self.path: Path | None = getattr(self._db, "path", None)

    @property
    def url(self) -> str:
        """The URL that opens this store again."""
        return f"sqlite:///{self.path}" if self.path is not None else self._db.url  # type: ignore[attr-defined]

    @property
    def backend(self) -> str:
        """Which kind of store this is: sqlite or postgresql."""
        return self._db.name

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def delivery(
        self,
        *,
        sync: str,
        environment: str,
        partitions: Sequence[str],
        input_protection: str,
        windows: Sequence[Window] | None = None,
        mirror: bool = False,
        mirror_max_removal: float = 1.0,
        allow_mass_removal: bool = False,
        run_id: str | None = None,
        recorded: bool = True,
        destinations: Sequence[str] = (),
    ) -> Iterator[Delivery]:
        """Partitions of one sync, delivered together: all of it commits on normal exit, none on error.

        `recorded=False` (an incomplete window, `wsync run --now`): its rows are applied, but the partition is
        not listed as delivered, so it is read again when it completes. `destinations`: the sync's destinations,
        whose outbox the delivery fills with what it changed, in its own transaction (store/outbox.py)."""
        if input_protection not in INPUT_PROTECTIONS:
            raise ValueError(f"input_protection must be one of {', '.join(INPUT_PROTECTIONS)}")
        if not partitions:
            raise ValueError("a delivery covers at least one partition")
        # Deliveries are numbered as they begin: the number breaks ties between syncs.
        seq = self._db.begin_delivery()
        try:
            delivery = Delivery(
                self._db,
                sync=sync,
                environment=environment,
                partitions=list(partitions),
                input_protection=input_protection,
                seq=seq,
                mirror=mirror,
                mirror_max_removal=mirror_max_removal,
                allow_mass_removal=allow_mass_removal,
                run_id=run_id,
                destinations=destinations,
            )
            yield delivery
            delivery.finish()
            now = _now()
            listed = zip(partitions, windows or repeat((None, None)), strict=False) if recorded else ()
            for partition, window in listed:
                counts = json.dumps(delivery.partition_counts[partition].as_dict())
                self._db.execute(_UPSERT_DELIVERY, (sync, environment, partition, *window, counts, now, seq))
            self._db.commit()
        except BaseException as error:
            self._db.rollback()
            if self.path is not None and is_disk_full(error):
                raise DiskFullError(
                    f"no space left on the disk of the profile store folder {self.path.parent}: the delivery "
                    f"was rolled back and nothing of it is in the store; free space there and run again"
                ) from None
            raise

    def delivered_partitions(self, sync: str, environment: str) -> list[str]:
        """Every partition delivered for the sync, sorted."""
        rows = self._db.rows(
            "SELECT partition_key FROM deliveries WHERE sync = ? AND environment = ? ORDER BY partition_key",
            (sync, environment),
        )
        return [partition for (partition,) in rows]

    def partition_counts(self, sync: str, environment: str) -> dict[str, dict[str, int]]:
        """The counts of each delivered partition of the sync."""
        rows = self._db.rows(
            "SELECT partition_key, counts FROM deliveries WHERE sync = ? AND environment = ?"
            " ORDER BY partition_key",
            (sync, environment),
        )
        return {partition: json.loads(counts) for partition, counts in rows}

    def deliveries(self, sync: str, environment: str) -> list[dict[str, Any]]:
        """Each delivered partition of the sync with when it was delivered, its delivery's number and counts;
        oldest delivery first."""
        rows = self._db.rows(
            "SELECT partition_key, delivered_at, seq, counts FROM deliveries WHERE sync = ? AND environment = ?"
            " ORDER BY seq, partition_key",
            (sync, environment),
        )
        return [
            {"partition": partition, "delivered_at": delivered_at, "seq": seq, "counts": json.loads(counts)}
            for partition, delivered_at, seq, counts in rows
        ]

    def profile(
        self,
        identity_type: str,
        value: str,
        environment: str = "production",
        events_limit: int = 20,
        explain: bool = False,
    ) -> dict[str, Any] | None:
        """The profile owning an identity, with its identities, attributes and newest events; or None.
        With explain, also where each value came from and the last changes (store/explain.py)."""
        with self._db.read():
            rows = self._db.rows(
                "SELECT profile_id FROM identities WHERE environment = ? AND identity_type = ? AND value = ?",
                (environment, identity_type, value),
            )
            profile = self._profile(rows[0][0], events_limit) if rows else None
            if profile is not None and explain:
                profile["explain"] = explained(self._db, profile["profile_id"])
            return profile

    def profiles_by_id(self, profile_ids: list[str], events_limit: int = 20) -> list[dict[str, Any]]:
        """The profiles with these ids (unknown ids left out), in the order given."""
        with self._db.read():
            found = (self._profile(profile_id, events_limit) for profile_id in profile_ids)
            return [profile for profile in found if profile is not None]

    def rejects(
        self, sync: str, environment: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored rejected and conflicting rows of a sync, by environment, partition and row."""
        sql = (
            "SELECT sync, environment, partition_key, row_number, kind, reason, row FROM rejects"
            " WHERE sync = ?"
        )
        params: list[Any] = [sync]
        if environment is not None:
            sql += " AND environment = ?"
            params.append(environment)
        sql += " ORDER BY environment, partition_key, row_number, kind"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            {
                "sync": sync_name,
                "environment": env,
                "partition": partition,
                "row_number": row_number,
                "kind": kind,
                "reason": reason,
                "row": _decode(row),
            }
            for sync_name, env, partition, row_number, kind, reason, row in self._db.rows(sql, params)
        ]

    def fingerprints(self, sync: str, environment: str) -> pa.Table:
        """The sync's stored row fingerprints that can match a row, as the unsigned 64-bit hashes the mapping
        writes in hex (BatchMapper): what a warehouse compares its rows with, 8 bytes a row. A fingerprint
        covers the row's identity values, so it names its row key too; a changed row passes for unchanged
        only if its hash collides with a stored one. Those of ties (an md5) and of older stores never match."""
        concat = "string_agg" if self._db.name == "postgresql" else "group_concat"
        # A key's first hex digit at a time, the fingerprints as one text, decoded at once: no Python tuple
        # per row (a sixteenth of 10M rows is 10 MB of text).
        sql = (
            f"SELECT {concat}(fingerprint, '') FROM fingerprints"
            " WHERE sync = ? AND environment = ? AND row_key >= ? AND row_key < ?"
            f" AND length(row_key) = {_MD5_HEX} AND length(fingerprint) = {_HASH_HEX}"
        )
        fingerprints = []
        with self._db.read():
            for low, high in itertools.pairwise("0123456789abcdefg"):
                [(text,)] = self._db.rows(sql, (sync, environment, low, high))
                if text:
                    fingerprints.append(np.frombuffer(bytes.fromhex(text), ">u8").astype(np.uint64))
        return pa.table({"fingerprint": _uint64_array(fingerprints)})

    def seed_destination(
        self, sync: str, destination: str, environment: str, partitions: Sequence[str] | None = None
    ) -> int:
        """Mark the profiles holding the sync's data (of these partitions) as pending for a destination."""
        return outbox.seed(self._db, sync, destination, environment, partitions)

    def try_hold(self, name: str) -> bool:
        """Take a named lock of the store if free: held until released, or until this connection or its
        process ends, however it ends."""
        return self._db.try_hold(name)

    def release(self, name: str) -> None:
        """Give a named lock back."""
        self._db.release(name)

    def pending_forward(
        self, sync: str, destination: str, environment: str, after: str | None, limit: int
    ) -> outbox.PendingSlice:
        """The next pending profiles of a destination, each one change with its newest values."""
        return outbox.read_pending(self._db, sync, destination, environment, after, limit)

    def acknowledge_forward(
        self,
        sync: str,
        destination: str,
        environment: str,
        read: pa.Table,
        rejects: Sequence[Any],
        sent: Sequence[Any] = (),
    ) -> int:
        """A slice the platform took: its outbox rows go (unless marked again), its rejects are kept, the
        profiles sent are listed as received."""
        return outbox.acknowledge(self._db, sync, destination, environment, read, rejects, sent)

    def erasure_requests(self, sync: str, destination: str, limit: int) -> list[outbox.PendingErasure]:
        """The oldest deletion requests a destination has yet to receive, with the identities to delete by."""
        return outbox.read_erasures(self._db, sync, destination, limit)

    def erasures_sent(
        self,
        sync: str,
        destination: str,
        environment: str,
        profile_ids: Sequence[str],
        rejects: Sequence[Any],
    ) -> int:
        """Deletions the platform took or refused: the requests and their identities go, refusals are kept."""
        return outbox.erasures_done(self._db, sync, destination, environment, profile_ids, rejects)

    def pending_erasures(self, sync: str, destination: str) -> int:
        """How many deletion requests a destination has yet to receive."""
        return outbox.pending_erasures(self._db, sync, destination)

    def pending_profiles(self, sync: str, destination: str) -> int:
        """How many profiles a destination has yet to receive."""
        return outbox.pending_profiles(self._db, sync, destination)

    def erase(self, identities: Sequence[erasure.Identity], environment: str) -> erasure.Erasure:
        """Remove the people these identities find and keep them out (store/erasure.py)."""
        return erasure.erase(self._db, identities, environment)

    def lift_erasure(
        self, identities: Sequence[erasure.Identity], environment: str
    ) -> dict[erasure.Identity, int]:
        """Lift the suppression of these identities' erasures; per identity, the identities lifted."""
        return erasure.lift(self._db, identities, environment)

    def close(self) -> None:
        """Close the connection; an open delivery is rolled back."""
        self._db.close()

    def _profile(self, profile_id: str, events_limit: int) -> dict[str, Any] | None:
        db = self._db
        found = db.rows("SELECT environment FROM profiles WHERE profile_id = ?", (profile_id,))
        if not found:
            return None
        row = found[0]
        identities = db.rows(
            "SELECT identity_type, value FROM identities WHERE profile_id = ?", (profile_id,)
        )
        attributes = db.rows(_SHOWN_ATTRIBUTES, (profile_id,))
        events = db.rows(
            "SELECT event_type, event_name, timestamp_ms, data FROM events WHERE profile_id = ?"
            " ORDER BY timestamp_ms DESC, sync, event_id DESC LIMIT ?",
            (profile_id, events_limit),
        )
        return {
            "profile_id": profile_id,
            "environment": row[0],
            "identities": dict(sorted(identities, key=lambda identity: priority(identity[0]))),
            "attributes": {name: _decode(value) for name, value in attributes},
            "events": [
                {
                    "event_type": event_type,
                    "event_name": event_name,
                    "timestamp_unixtime_ms": timestamp_ms,
                    "data": _decode(data),
                }
                for event_type, event_name, timestamp_ms, data in events
            ],
        }


class Delivery:
    """The open transaction of one delivery: apply mapped batches, store rejects and conflicts."""

    def __init__(
        self,
        db: Backend,
        *,
        sync: str,
        environment: str,
        partitions: list[str],
        input_protection: str,
        seq: int,
        mirror: bool = False,
        mirror_max_removal: float = 1.0,
        allow_mass_removal: bool = False,
        run_id: str | None = None,
        destinations: Sequence[str] = (),
    ):
        self._db = db
        self._destinations = tuple(destinations)
        self._run_id = run_id  # the Dagster run delivering, kept with each register it writes
        self._mirror = mirror
        self._mirror_max_removal = mirror_max_removal
        # Values compare byte by byte on both backends, as Arrow compares them within a batch.
        binary = 'COLLATE "C"' if db.name == "postgresql" else "COLLATE BINARY"
        self._winning_attributes = _WINNING_ATTRIBUTES.replace("{binary}", binary)
        self._allow_mass_removal = allow_mass_removal
        self.mirror_hold: MirrorHold | None = None  # set when a mirroring delivery held its removals back
        self._newest_version: int | None = None  # of the rows seen: a mirroring run's own version
        self._sync = sync
        self._environment = environment
        self._partitions = partitions
        self._input_protection = input_protection
        self._seq = seq
        self.counts = DeliveryCounts()
        self.partition_counts = {partition: DeliveryCounts() for partition in partitions}
        self.profile_ids_touched: list[str] = []
        # Kept across the batches: the delivery holds the write lock, so only it changes identities.
        self._graph = IdentityGraph()
        # Identities re-asserted by newer rows: their new stamps are written once, when the delivery ends
        # (an events delivery re-asserts every user in every batch).
        self._restamps: dict[Identity, int] = {}
        self._marked = 0  # profiles marked so far: the order the preview shows them in
        # The profiles this sync had set when the run began: what a mirror's removals are a share of.
        self._mirror_before = self._profiles_set() if mirror else 0
        self._suppression = erasure.Suppression(db, sync=sync, environment=environment, partitions=partitions)
        # SQLite writes the delivery's fingerprints at its end (_store_fingerprints): those its batches compare
        # with stay as they were when it began, and a sync that held none then (a first run) has none to match.
        self._fingerprints_at_end = db.name == "sqlite"
        self._compare_fingerprints = not self._fingerprints_at_end or bool(
            db.rows(
                "SELECT 1 FROM fingerprints WHERE sync = ? AND environment = ? LIMIT 1", (sync, environment)
            )
        )
        # Conflicts are found again by this delivery, so those of an earlier delivery of its partitions go.
        for partition in partitions:
            db.execute(
                "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ? AND kind = 'conflict'",
                (sync, environment, partition),
            )

    def apply_batch(self, batch: pa.RecordBatch, partition: str | None = None) -> DeliveryCounts:
        """Apply one mapped user or event batch of a partition (the first, if not named); returns its counts."""
        partition = self._partition(partition)
        counts = DeliveryCounts(rows=batch.num_rows)
        batch = _in_row_order(batch)
        batch, counts.rows_suppressed = self._suppression.drop(batch, partition)
        full_mode = b.ROW_KEY in batch.schema.names and b.FINGERPRINT in batch.schema.names
        if self._mirror and full_mode and batch.num_rows:
            self._remember_present(batch)
        unchanged = batch.slice(0, 0)
        if full_mode and batch.num_rows and self._compare_fingerprints:
            batch, unchanged = self._drop_unchanged(batch)
            counts.rows_unchanged = unchanged.num_rows
        removals = batch.slice(0, 0)
        if batch.num_rows and b.DELETE in batch.schema.names:
            is_removal = pc.fill_null(batch.column(b.DELETE), False)
            removals, batch = batch.filter(is_removal), batch.filter(pc.invert(is_removal))
        if batch.num_rows:
            self._apply(batch, counts, full_mode, partition)
        # After the upserts: a removal then finds a profile an earlier row of the batch created, and its
        # tombstones win or lose on their version, so the outcome is that of applying the rows in order.
        removal_counts = DeliveryCounts()
        if removals.num_rows:
            self._apply_removals(removals, removal_counts, partition)
        if self._mirror and unchanged.num_rows:
            self._remember_profiles(self._matched_profiles(unchanged))
        counts.add(removal_counts)
        self.partition_counts[partition].add(counts)
        self.counts.add(counts)
        return counts

    def add_unchanged(self, rows: int, partition: str | None = None) -> None:
        """Rows the warehouse compared with the stored fingerprints and left out unchanged: counted as the
        rows of a batch found unchanged here are."""
        counts = DeliveryCounts(rows=rows, rows_unchanged=rows)
        self.partition_counts[self._partition(partition)].add(counts)
        self.counts.add(counts)

    def replace_rejects(self, rejects: pa.Table, partition: str | None = None) -> None:
        """Replace the partition's stored rejects (rows of batches.REJECT_SCHEMA) with these."""
        partition = self._partition(partition)
        self._db.execute(
            "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ? AND kind = 'rejected'",
            (self._sync, self._environment, partition),
        )
        # What is stored is what is counted, also if this is called twice.
        self.counts.rejects -= self.partition_counts[partition].rejects
        self.partition_counts[partition].rejects = 0
        self.add_rejects(rejects, partition)

    def add_rejects(self, rejects: pa.Table, partition: str | None = None) -> None:
        """Add rows of batches.REJECT_SCHEMA to the partition's stored rejects: a big partition's rejects
        arrive a batch at a time, after replace_rejects emptied them."""
        partition = self._partition(partition)
        rejects = self._suppression.redact(rejects)
        self._insert_rejects(
            partition,
            rejects.column(b.ROW).to_pylist(),
            rejects.column("reason").to_pylist(),
            rejects.column("row").to_pylist(),
            "rejected",
        )
        self.counts.rejects += rejects.num_rows
        self.partition_counts[partition].rejects += rejects.num_rows

    def finish(self) -> None:
        """Write the pending identity stamps and fingerprints, and settle the delivery's totals: a profile
        counts once."""
        self._flush_restamps()
        if self._fingerprints_at_end:
            self._store_fingerprints()
        if self._mirror:
            self._remove_the_departed()
        self._db.execute(_TRIM_HISTORY)
        [(created, touched)] = self._db.rows(
            "SELECT COUNT(DISTINCT CASE WHEN created = 1 THEN profile_id END), COUNT(DISTINCT profile_id)"
            " FROM delivery_profile"
        )
        self.counts.profiles_created = created
        self.counts.profiles_updated = touched - created
        [(self.counts.profiles_skipped,)] = self._db.rows(
            "SELECT COUNT(DISTINCT identity_key) FROM delivery_skipped"
        )
        for partition, skipped in self._db.rows(
            "SELECT partition_key, COUNT(*) FROM delivery_skipped GROUP BY partition_key"
        ):
            self.partition_counts[partition].profiles_skipped = skipped
        # Last: a mirror's removals are marked above only when not held back, so nothing held is forwarded.
        outbox.mark_delivery(self._db, self._sync, self._environment, self._seq, self._destinations)

    def _store_fingerprints(self) -> None:
        """The delivery's fingerprints (SQLite), in key order, as its batches would have upserted them one
        after the other (a key's later rows upsert after its earlier ones)."""
        # SQLite sorts in memory up to the page cache's size before it spills: beside a full cache, that was
        # the delivery's peak (+40 MB at 1M users). A small cache for the sort keeps it to a few runs on disk.
        self._db.execute(f"PRAGMA cache_size = -{SORT_CACHE_KIB}")
        try:
            self._db.execute(
                "INSERT INTO fingerprints (sync, environment, row_key, fingerprint, updated_at, version)"
                " SELECT ?, ?, row_key, fingerprint, ?, version FROM delivery_fingerprint"
                f" WHERE true ORDER BY row_key, rowid {_NEWER_FINGERPRINT}",
                (self._sync, self._environment, _now()),
            )
        finally:
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._db.execute("DELETE FROM delivery_fingerprint")

    def _profiles_set(self) -> int:
        """How many profiles of the environment hold a value this sync set."""
        [(count,)] = self._db.rows(
            "SELECT COUNT(DISTINCT a.profile_id) FROM attributes AS a"
            " JOIN profiles AS p ON p.profile_id = a.profile_id AND p.environment = ?"
            " WHERE a.sync = ? AND a.value IS NOT NULL",
            (self._environment, self._sync),
        )
        return count

    def _remember_present(self, batch: pa.RecordBatch) -> None:
        """Every row key of a mirroring run, whether its row changed or not, and its newest version."""
        self._db.insert("mirror_row_key", pa.table({"row_key": batch.column(b.ROW_KEY)}))
        newest = pc.max(batch.column(b.VERSION)).as_py()
        self._newest_version = newest if self._newest_version is None else max(self._newest_version, newest)

    def _remember_profiles(self, profile_ids: pa.Array) -> None:
        """mirror: profiles a row of this run found (by the upsert rule), so they keep this sync's values."""
        self._db.insert("mirror_profile", pa.table({"profile_id": profile_ids.cast(pa.string())}))

    def _matched_profiles(self, batch: pa.RecordBatch) -> pa.Array:
        """The profiles the rows' identities find by the upsert rule, creating and moving nothing."""
        key_of_row = batch.column(b.IDENTITY_KEY).dictionary_encode().indices.to_numpy(zero_copy_only=False)
        identities = self._identities_of_keys(batch, key_of_row)
        self._look_up({identity for key in identities for identity in key})
        found = (match_existing(key, self._graph)[0] for key in identities)
        return pa.array([profile_id for profile_id in found if profile_id is not None], pa.string())

    def _remove_the_departed(self) -> None:
        """mirror: profiles no row of this run found lose the attributes this sync set on them (as
        tombstones of this run's version), and their rows' fingerprints go, so a row that returns is applied.

        Held back, removing nothing, when the run mapped no rows (an emptied table, every row rejected), or
        when more than mirror_max_removal of the profiles this sync had set would lose them, unless allowed.
        """
        if self._input_protection == READ_ONLY:
            return  # read_only writes nothing, removals included
        env, sync, db = self._environment, self._sync, self._db
        version = self._newest_version if self._newest_version is not None else _now_micros()
        departed = db.rows(
            "SELECT DISTINCT a.profile_id FROM attributes AS a"
            " JOIN profiles AS p ON p.profile_id = a.profile_id AND p.environment = ?"
            " WHERE a.sync = ? AND a.value IS NOT NULL AND a.version <= ? AND NOT EXISTS ("
            "  SELECT 1 FROM mirror_profile AS m WHERE m.profile_id = a.profile_id)"
            " ORDER BY a.profile_id",
            (env, sync, version),
        )
        ids = [profile_id for (profile_id,) in departed]
        if self._newest_version is None:
            if ids:
                self.mirror_hold = MirrorHold(len(ids), self._mirror_before, no_rows=True)
            return
        hold = MirrorHold(len(ids), self._mirror_before)
        if ids and hold.share > self._mirror_max_removal and not self._allow_mass_removal:
            self.mirror_hold = hold
            return
        if ids:
            db.stage("stage_profile", pa.table({"profile_id": pa.array(ids, pa.string())}))
            first, now = self._partitions[0], _now()
            departing = (
                " FROM attributes WHERE sync = :sync AND value IS NOT NULL AND version <= :version"
                " AND profile_id IN (SELECT profile_id FROM stage_profile)"
            )
            where = {"sync": sync, "version": version, "seq": self._seq, "now": now, "partition": first}
            db.execute(
                "INSERT INTO attribute_history"
                " (profile_id, seq, name, sync, value, replaced, version, partition_key, run_id, changed_at)"
                f" SELECT profile_id, :seq, name, sync, NULL, value, :version, :partition, :run, :now {departing}"
                f" {_HISTORY_ONCE}",
                {**where, "run": self._run_id},
            )
            db.execute(
                "INSERT INTO history_profile (profile_id) SELECT profile_id FROM stage_profile WHERE true"
                " ON CONFLICT (profile_id) DO NOTHING"
            )
            removed = db.execute(
                "UPDATE attributes SET value = NULL, version = :version, seq = :seq, updated_at = :now,"
                " partition_key = :partition, run_id = :run"
                " WHERE sync = :sync AND value IS NOT NULL AND version <= :version"
                " AND profile_id IN (SELECT profile_id FROM stage_profile)",
                {**where, "run": self._run_id},
            )
            self._mark(ids, first)
            self.counts.attributes_removed += removed
            self.partition_counts[first].attributes_removed += removed
        db.execute(
            "DELETE FROM fingerprints WHERE sync = ? AND environment = ? AND NOT EXISTS ("
            " SELECT 1 FROM mirror_row_key AS m WHERE m.row_key = fingerprints.row_key)",
            (sync, env),
        )

    def _partition(self, partition: str | None) -> str:
        if partition is None:
            return self._partitions[0]
        if partition not in self.partition_counts:
            raise ValueError(f"partition {partition} is not part of this delivery")
        return partition

    def _insert_rejects(
        self,
        partition: str,
        rows: Sequence[int],
        reasons: Sequence[str],
        raw: Sequence[str | None],
        kind: str,
    ) -> None:
        n = len(rows)
        self._db.insert(
            "rejects",
            pa.table(
                {
                    "sync": pa.array([self._sync] * n, pa.string()),
                    "environment": pa.array([self._environment] * n, pa.string()),
                    "partition_key": pa.array([partition] * n, pa.string()),
                    "row_number": pa.array(rows, pa.int64()),
                    "reason": pa.array(reasons, pa.string()),
                    "row": pa.array(raw, pa.string()),
                    "created_at": pa.array([_now()] * n, pa.string()),
                    "kind": pa.array([kind] * n, pa.string()),
                }
            ),
        )

    def _drop_unchanged(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """The rows whose fingerprint differs from the stored one, and the unchanged rest."""
        staged = pa.table(
            {
                "row_key": batch.column(b.ROW_KEY),
                "fingerprint": _fingerprints_of_ties(batch),
                "n": pa.array(np.arange(batch.num_rows), pa.int64()),
            }
        )
        # In key order the anti-join walks the stored fingerprints' primary key forward: on SQLite about
        # twice as fast as probing it at random.
        self._db.stage("stage_fingerprint", staged.sort_by("row_key"))
        # By key and fingerprint: an incremental read may hold several rows of one key, not all unchanged.
        changed = np.zeros(batch.num_rows, dtype=bool)
        changed[[n for (n,) in self._db.rows(_CHANGED_ROWS, (self._sync, self._environment))]] = True
        if not b.is_event_schema(batch.schema):  # events have no values to settle, and are written once
            changed = _sharing_an_identity(batch, changed)
        if changed.all():
            return batch, batch.slice(0, 0)
        return batch.filter(pa.array(changed)), batch.filter(pa.array(~changed))

    def _apply(self, batch: pa.RecordBatch, counts: DeliveryCounts, full_mode: bool, partition: str) -> None:
        # Resolution runs once per distinct identity key, in first-occurrence (= _row) order.
        encoded = batch.column(b.IDENTITY_KEY).dictionary_encode()
        keys = encoded.dictionary.cast(pa.string())
        if self._input_protection == READ_ONLY:
            counts.rows_skipped = batch.num_rows
            self._skip(keys, partition)
            counts.profiles_skipped = len(keys)
            return
        key_of_row = encoded.indices.to_numpy(zero_copy_only=False)
        resolution = self._resolve(batch, key_of_row)
        now = _now()
        self._write_identities(resolution, now)
        if len(self._restamps) > RESTAMPS_MAX:
            self._flush_restamps()
        profile_of_key = pa.array(resolution.profile_ids, pa.string())
        skipped_key = np.array([p is None for p in resolution.profile_ids], dtype=bool)
        conflict_key = np.array([c is not None for c in resolution.conflicts], dtype=bool)
        rows_per_key = np.bincount(key_of_row, minlength=len(keys))
        counts.rows_skipped = int(rows_per_key[skipped_key].sum())
        counts.profiles_skipped = int(skipped_key.sum())
        self._skip(keys.filter(pa.array(skipped_key)), partition)
        counts.identity_conflicts = int(rows_per_key[conflict_key].sum())
        counts.rows_applied = batch.num_rows - counts.rows_skipped - counts.identity_conflicts
        counts.identities_changed = resolution.identities_changed
        counts.profiles_created = self._mark(resolution.created, partition, created=True)
        counts.profiles_updated = self._mark(resolution.updated, partition)
        if conflict_key.any():
            self._record_conflicts(batch, key_of_row, resolution.conflicts, partition)

        if self._mirror:
            self._remember_profiles(profile_of_key.drop_null())
        profile_of_row = profile_of_key.take(encoded.indices)
        applied = pc.is_valid(profile_of_row)
        if b.attribute_columns(batch.schema):
            code_of_key = pc.dictionary_encode(profile_of_key).indices.fill_null(-1)
            code_of_row = code_of_key.to_numpy(zero_copy_only=False).astype(np.int64)[key_of_row]
            self._apply_attributes(
                batch, profile_of_row, code_of_row, resolution.created, counts, now, partition
            )
        if b.is_event_schema(batch.schema):
            events = batch.filter(applied)
            counts.events_written = self._write_events(events, profile_of_row.filter(applied))
            if self._destinations and counts.events_written:
                outbox.mark_profiles(
                    self._db,
                    self._sync,
                    self._environment,
                    self._seq,
                    self._destinations,
                    profile_of_row.filter(applied),
                )
            counts.events_duplicate = events.num_rows - counts.events_written
        if full_mode:
            # Only what the store now holds: a conflicting row lacks an identity, so it is tried again.
            held = pc.and_(applied, pa.array(~conflict_key[key_of_row]))
            self._write_fingerprints(batch.filter(held), now)
        if len(self.profile_ids_touched) < PREVIEW_PROFILES:
            rows = self._db.rows(
                "SELECT profile_id FROM delivery_profile GROUP BY profile_id"
                " ORDER BY MIN(COALESCE(n, 9223372036854775807)) LIMIT ?",
                (PREVIEW_PROFILES,),
            )
            self.profile_ids_touched = [profile_id for (profile_id,) in rows]

    def _apply_removals(self, batch: pa.RecordBatch, counts: DeliveryCounts, partition: str) -> None:
        """Deletes: the profile a row's identities find by the upsert rule (the highest-priority identity
        decides) loses what this sync set on it. Nothing is created and no identity moves; a row that finds
        no profile is skipped, one whose identities also belong to another profile is a conflict."""
        encoded = batch.column(b.IDENTITY_KEY).dictionary_encode()
        keys = encoded.dictionary.cast(pa.string())
        if self._input_protection == READ_ONLY:
            counts.rows_skipped = batch.num_rows
            self._skip(keys, partition)
            return
        key_of_row = encoded.indices.to_numpy(zero_copy_only=False)
        identities = self._identities_of_keys(batch, key_of_row)
        self._look_up({identity for key in identities for identity in key})
        matches = [match_existing(key, self._graph) for key in identities]
        reasons = [reason for _, reason in matches]
        profile_of_key = pa.array(
            [profile_id if reason is None else None for profile_id, reason in matches], pa.string()
        )
        skipped_key = pa.array([profile_id is None for profile_id, _ in matches], pa.bool_())
        conflict_key = np.array([reason is not None for reason in reasons], dtype=bool)
        self._skip(keys.filter(skipped_key), partition)
        profile_of_row = profile_of_key.take(encoded.indices)
        found = pc.is_valid(profile_of_row)
        rows_per_key = np.bincount(key_of_row, minlength=len(keys))
        counts.rows_applied = int(pc.sum(found).as_py() or 0)
        counts.identity_conflicts = int(rows_per_key[conflict_key].sum())
        counts.rows_skipped = batch.num_rows - counts.rows_applied - counts.identity_conflicts
        counts.profiles_skipped = int(pc.sum(skipped_key).as_py() or 0)
        if conflict_key.any():
            self._record_conflicts(batch, key_of_row, reasons, partition)
        if not counts.rows_applied or not b.attribute_columns(batch.schema):
            return
        profiles = profile_of_row.filter(found)
        code_of_row = pc.dictionary_encode(profiles).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self._apply_attributes(batch.filter(found), profiles, code_of_row, [], counts, _now(), partition)

    def _identities_of_keys(
        self, batch: pa.RecordBatch, key_of_row: np.ndarray, only: np.ndarray | None = None
    ) -> list[list[Identity]]:
        """Per distinct identity key (in key order; only those indexed by `only`, if given), its identities in
        priority order."""
        columns = b.identity_columns(batch.schema)
        if not columns:
            raise ValueError("a mapped batch needs at least one identity column")
        types = sorted(columns, key=priority)
        _, first_rows = np.unique(key_of_row, return_index=True)
        first = pa.array(first_rows if only is None else first_rows[only], pa.int64())
        values = [batch.column(columns[t]).take(first).to_pylist() for t in types]
        return [
            [(t, v) for t, v in zip(types, key_values, strict=True) if v is not None]
            for key_values in zip(*values, strict=True)
        ]

    def _resolve(self, batch: pa.RecordBatch, key_of_row: np.ndarray) -> Resolution:
        """Resolve each distinct identity key of the batch, with the stamp of its newest row: the easy keys
        set-wise (store/settle.py), the rest by resolve."""
        rows = batch.column(b.ROW).to_numpy()
        versions = batch.column(b.VERSION).to_numpy()
        # Per key, its newest row: the highest version, ties to the later row.
        newest = np.lexsort((rows, versions, key_of_row))
        last_of_key = newest[np.r_[key_of_row[newest][1:] != key_of_row[newest][:-1], True]]
        create = self._input_protection == CREATE_AND_UPDATE
        settled = self._settle(batch, key_of_row, last_of_key, create) if SET_WISE else None
        rest = np.flatnonzero(~settled.settled) if settled is not None else np.arange(len(last_of_key))
        identities = self._identities_of_keys(batch, key_of_row, rest)
        last = last_of_key[rest]
        stamps = zip(versions[last].tolist(), rows[last].tolist(), strict=True)
        keys = [IdentityKey(key, stamp) for key, stamp in zip(identities, stamps, strict=True)]
        if not keys:  # every key settled: nothing to look up or resolve
            resolution = Resolution()
        else:
            self._look_up({identity for key in keys for identity in key.identities})
            resolution = resolve(
                keys,
                self._graph,
                self._environment,
                create=create,
                profile_exists=self._profile_checker(keys) if create else self._profile_exists,
            )
        return resolution if settled is None else _merged(settled, rest, resolution)

    def _settle(
        self, batch: pa.RecordBatch, key_of_row: np.ndarray, last_of_key: np.ndarray, create: bool
    ) -> Settled:
        """The batch's easy keys settled set-wise, against the store's owners of its identities."""
        columns = b.identity_columns(batch.schema)
        if not columns:
            raise ValueError("a mapped batch needs at least one identity column")
        types = sorted(columns, key=priority)
        _, first_rows = np.unique(key_of_row, return_index=True)
        first = pa.array(first_rows, pa.int64())
        keys = BatchKeys(
            types=types,
            values=[batch.column(columns[t]).take(first).cast(pa.string()) for t in types],
            versions=batch.column(b.VERSION).to_numpy()[last_of_key],
            rows=batch.column(b.ROW).to_numpy()[last_of_key],
        )
        # Identities the graph holds may have stamps newer than the store's (written when the delivery ends),
        # and unowned ones it looked up would be stale once settled here: their keys go to resolve.
        graph = self._graph
        known = np.zeros(keys.count, dtype=bool)
        if graph.owner or graph.looked_up:
            owner, looked_up = graph.owner, graph.looked_up
            for identity_type, values in zip(keys.types, keys.values, strict=True):
                known |= np.fromiter(
                    (
                        (identity_type, value) in owner or (identity_type, value) in looked_up
                        for value in values.to_pylist()
                    ),
                    dtype=bool,
                    count=keys.count,
                )
        return settle(
            keys, self._stored_owners(keys), known, self._environment, create, self._taken_profile_ids
        )

    def _stored_owners(self, keys: BatchKeys) -> StoredOwners:
        """Who owns each key's identities in the store, and since which version: each type's distinct values
        go in as one JSON array and the owners come back as two, so no row of the look-up becomes Python
        objects (another delivery resolving the same identities is waited for, PostgreSQL)."""
        if any(_has_nul(values) for values in keys.values):
            return self._stored_owners_staged(keys)
        # Sorted, the look-ups walk the identities' primary key forward, page after page.
        distinct = [pc.unique(values.drop_null()).sort() for values in keys.values]
        found = self._db.stored_owners(
            self._environment,
            [(t, json.dumps(values.to_pylist())) for t, values in zip(keys.types, distinct, strict=True)],
        )
        profile_ids, versions = [], []
        for values, of_type, (owners, stamps) in zip(keys.values, distinct, found, strict=True):
            at = pc.index_in(values, value_set=of_type)
            profile_ids.append(pa.array(json.loads(owners), pa.string()).take(at))
            version = pa.array(json.loads(stamps), pa.int64()).take(at)
            versions.append(pc.fill_null(version, 0).to_numpy(zero_copy_only=False))
        return StoredOwners(profile_ids, versions)

    def _stored_owners_staged(self, keys: BatchKeys) -> StoredOwners:
        """_stored_owners for values JSON cannot carry as text (a NUL): staged, joined, read back as rows."""
        staged = []
        for identity_type, values in zip(keys.types, keys.values, strict=True):
            distinct = pc.unique(values.drop_null())
            staged.append(
                pa.table(
                    {
                        "identity_type": pa.array([identity_type] * len(distinct), pa.string()),
                        "value": distinct,
                    }
                )
            )
        # In key order the look-ups probe the identities' primary key (and their rows, stored in about that
        # order) page after page: an events batch names customers at random, which at 1M users on PostgreSQL
        # read a page of the index and one of the table per identity.
        by_key = [("identity_type", "ascending"), ("value", "ascending")]
        self._db.stage("stage_identity", pa.concat_tables(staged).sort_by(by_key))
        # Another delivery may be resolving the same identities (PostgreSQL): wait for it, then look.
        self._db.lock_identities(self._environment)
        found = self._db.rows(_STORED_OWNERS, (self._environment,))
        columns = list(zip(*found, strict=True)) or [(), (), (), ()]
        stored = pa.table(
            {
                "identity_type": pa.array(columns[0], pa.string()),
                "value": pa.array(columns[1], pa.string()),
                "profile_id": pa.array(columns[2], pa.string()),
                "version": pa.array(columns[3], pa.int64()),
            }
        )
        profile_ids, versions = [], []
        for identity_type, values in zip(keys.types, keys.values, strict=True):
            of_type = stored.filter(pc.equal(stored.column("identity_type"), identity_type))
            at = pc.index_in(values, value_set=of_type.column("value").combine_chunks())
            profile_ids.append(of_type.column("profile_id").combine_chunks().take(at))
            version = of_type.column("version").combine_chunks().take(at)
            versions.append(pc.fill_null(version, 0).to_numpy(zero_copy_only=False))
        return StoredOwners(profile_ids, versions)

    def _taken_profile_ids(self, profile_ids: list[str]) -> set[str]:
        """Those of the profile ids the store already has."""
        if not profile_ids:
            return set()
        self._db.stage("stage_profile", pa.table({"profile_id": pa.array(sorted(profile_ids), pa.string())}))
        found = self._db.rows(
            "SELECT s.profile_id FROM stage_profile AS s JOIN profiles AS p ON p.profile_id = s.profile_id"
        )
        return {profile_id for (profile_id,) in found}

    def _profile_checker(self, keys: list[IdentityKey]) -> Callable[[str], bool]:
        """Whether a profile id is taken, asked of the store once for every id the batch's new identities
        would seed, rather than once per new profile."""
        env, owner = self._environment, self._graph.owner
        # A key seeds a new profile with its first identity no one owns.
        firsts = ((next((i for i in key.identities if i not in owner), None), key.stamp[1]) for key in keys)
        seeds = {profile_id_for(env, *identity, row) for identity, row in firsts if identity is not None}
        self._db.stage("stage_profile", pa.table({"profile_id": pa.array(sorted(seeds), pa.string())}))
        taken = {
            profile_id
            for (profile_id,) in self._db.rows(
                "SELECT s.profile_id FROM stage_profile AS s JOIN profiles AS p ON p.profile_id = s.profile_id"
            )
        }
        return lambda profile_id: (
            profile_id in taken if profile_id in seeds else self._profile_exists(profile_id)
        )

    def _profile_exists(self, profile_id: str) -> bool:
        return bool(self._db.rows("SELECT 1 FROM profiles WHERE profile_id = ?", (profile_id,)))

    def _look_up(self, identities: set[Identity]) -> None:
        """Add to the graph the stored profiles that own any of these identities it has not looked up."""
        if len(self._graph.owner) + len(self._graph.looked_up) > RESOLUTION_ENTRIES_MAX:
            self._flush_restamps()  # a fresh graph reads the stamps back from the store
            self._graph = IdentityGraph()
        new = self._graph.not_looked_up(identities)
        if not new:
            return
        self._db.stage("stage_identity", _identities(sorted(new)))
        # Another delivery may be resolving the same identities (PostgreSQL): wait for it, then look.
        self._db.lock_identities(self._environment)
        self._graph.add_stored(new, self._db.rows(_REACHABLE_IDENTITIES, (self._environment,)))

    def _write_identities(self, resolution: Resolution, now: str) -> None:
        """Write the profiles created and every identity whose owner or stamp the resolution changed."""
        env, graph = self._environment, self._graph
        created = sorted(resolution.created)  # in key order the B-tree writes stay local
        self._db.insert(
            "profiles",
            pa.table(
                {
                    "profile_id": pa.array(created, pa.string()),
                    "environment": pa.array([env] * len(created), pa.string()),
                    "created_at": pa.array([now] * len(created), pa.string()),
                }
            ),
        )
        settled = resolution.settled
        if settled is not None and settled.restamps.num_rows:
            self._write_stamps(settled.restamps)  # not in the graph: the store must hold them now
        released: list[Identity] = []
        attached: list[tuple[str, str, str, int]] = []
        for identity, before in sorted(resolution.touched.items()):
            after = graph.owner.get(identity)
            if after is not None and after == before:
                self._restamps[identity] = graph.stamp[identity][0]
                continue
            # A stamp its former owner left waiting is not the new owner's: it goes with the old row.
            self._restamps.pop(identity, None)
            if before is not None:
                released.append(identity)
            if after is not None:
                attached.append((*identity, after, graph.stamp[identity][0]))
        # Released first: a profile holds one value per type, and its new value may be attached below.
        if released:
            self._db.stage("stage_identity", _identities(released))
            self._db.execute(
                "DELETE FROM identities WHERE environment = ? AND EXISTS (SELECT 1 FROM stage_identity AS s"
                " WHERE s.identity_type = identities.identity_type AND s.value = identities.value)",
                (env,),
            )
        rows = pa.table(
            {
                "identity_type": pa.array([a[0] for a in attached], pa.string()),
                "value": pa.array([a[1] for a in attached], pa.string()),
                "profile_id": pa.array([a[2] for a in attached], pa.string()),
                "version": pa.array([a[3] for a in attached], pa.int64()),
            }
        )
        if settled is not None and settled.new_identities.num_rows:
            rows = pa.concat_tables([rows, settled.new_identities]).sort_by(
                [("identity_type", "ascending"), ("value", "ascending")]
            )
        n = rows.num_rows
        self._db.insert(
            "identities",
            pa.table(
                {
                    "environment": pa.array([env] * n, pa.string()),
                    "identity_type": rows.column("identity_type"),
                    "value": rows.column("value"),
                    "profile_id": rows.column("profile_id"),
                    "created_at": pa.array([now] * n, pa.string()),
                    "version": rows.column("version"),
                }
            ),
        )

    def _flush_restamps(self) -> None:
        """Write the newest stamp of each re-asserted identity; a stamp never goes back."""
        if not self._restamps:
            return
        ordered = sorted(self._restamps.items())
        staged = _identities([identity for identity, _ in ordered])
        self._write_stamps(
            staged.append_column("version", pa.array([version for _, version in ordered], pa.int64()))
        )
        self._restamps.clear()

    def _write_stamps(self, stamps: pa.Table) -> None:
        """Raise the stored version of identities (identity_type, value, version) that are older."""
        self._db.stage("stage_identity_version", stamps)
        self._db.execute(
            "UPDATE identities SET version = s.version FROM stage_identity_version AS s"
            " WHERE identities.environment = ? AND identities.identity_type = s.identity_type"
            " AND identities.value = s.value AND identities.version < s.version",
            (self._environment,),
        )

    def _mark(self, profile_ids: Iterable[str], partition: str, created: bool = False) -> int:
        """Record profiles as created or updated in the partition; returns how many were not yet counted."""
        ids = list(profile_ids)
        n = len(ids)
        marked = self._db.insert(
            "delivery_profile",
            pa.table(
                {
                    "partition_key": pa.array([partition] * n, pa.string()),
                    "profile_id": pa.array(ids, pa.string()),
                    "created": pa.array([int(created)] * n, pa.int64()),
                    "n": pa.array(range(self._marked, self._marked + n), pa.int64()),
                }
            ),
            _MARKED_ONCE,
        )
        self._marked += n
        return marked

    def _skip(self, identity_keys: pa.Array, partition: str) -> None:
        """Record identity keys skipped in the partition (in the store: profiles_skipped counts distinct keys)."""
        n = len(identity_keys)
        self._db.insert(
            "delivery_skipped",
            pa.table(
                {"partition_key": pa.array([partition] * n, pa.string()), "identity_key": identity_keys}
            ),
            "ON CONFLICT (partition_key, identity_key) DO NOTHING",
        )

    def _record_conflicts(
        self, batch: pa.RecordBatch, key_of_row: np.ndarray, reasons: list[str | None], partition: str
    ) -> None:
        conflicted = np.flatnonzero(np.array([r is not None for r in reasons], dtype=bool)[key_of_row])
        picked = pa.array(conflicted, pa.int64())
        self._insert_rejects(
            partition,
            batch.column(b.ROW).take(picked).to_pylist(),
            [reasons[key] for key in key_of_row[conflicted]],
            batch.column(b.IDENTITY_KEY).take(picked).to_pylist(),
            "conflict",
        )

    def _apply_attributes(
        self,
        batch: pa.RecordBatch,
        profile_of_row: pa.Array,
        code_of_row: np.ndarray,
        created: list[str],
        counts: DeliveryCounts,
        now: str,
        partition: str,
    ) -> None:
        # All attribute columns of a row share its version: the newest row of a profile wins for all of them,
        # and rows tied on it are settled attribute by attribute, as the register settles them.
        winners = pa.array(_newest_rows_per_profile(code_of_row, batch.column(b.VERSION).to_numpy()))
        profile_ids = profile_of_row.take(winners)
        # A profile created by this batch has no stored attributes to merge with: its values go straight in,
        # NULLs too, as the tombstones the merge would have stored.
        is_new = pc.is_in(profile_ids, value_set=pa.array(created, pa.string()))
        fresh = _attribute_rows(batch, winners.filter(is_new), profile_ids.filter(is_new))
        n = fresh.num_rows
        self._db.insert(
            "attributes",
            pa.table(
                {
                    "profile_id": fresh.column("profile_id"),
                    "name": fresh.column("name"),
                    "sync": pa.array([self._sync] * n, pa.string()),
                    "value": fresh.column("value"),
                    "version": fresh.column("version"),
                    "seq": pa.array([self._seq] * n, pa.int64()),
                    "updated_at": pa.array([now] * n, pa.string()),
                    "partition_key": pa.array([partition] * n, pa.string()),
                    "run_id": pa.array([self._run_id] * n, pa.string()),
                }
            ),
        )
        # No history rows: the registers just written say where each value of a new profile came from.
        counts.attributes_set = fresh.num_rows - fresh.column("value").null_count

        is_stored = pc.invert(is_new)
        stored = _attribute_rows(batch, winners.filter(is_stored), profile_ids.filter(is_stored))
        if not stored.num_rows:
            return
        db = self._db
        db.stage("stage_attribute", stored)
        db.execute("DELETE FROM stage_attribute_win")
        db.execute(self._winning_attributes, {"sync": self._sync})
        [(set_count, removed_count)] = db.rows(
            "SELECT COUNT(CASE WHEN change = 1 THEN 1 END), COUNT(CASE WHEN change = 2 THEN 1 END)"
            " FROM stage_attribute_win"
        )
        counts.attributes_set += set_count
        counts.attributes_removed = removed_count
        counts.profiles_updated += db.execute(
            "INSERT INTO delivery_profile (partition_key, profile_id, created)"
            " SELECT DISTINCT ?, profile_id, 0 FROM stage_attribute_win WHERE change > 0"
            " ON CONFLICT (partition_key, profile_id) DO NOTHING",
            (partition,),
        )
        where = {
            "sync": self._sync,
            "seq": self._seq,
            "now": now,
            "partition": partition,
            "run": self._run_id,
        }
        db.execute(_HISTORY_OF_WINNERS, where)
        db.execute(
            f"INSERT INTO history_profile (profile_id) SELECT DISTINCT profile_id {_CHANGED_WINNERS}"
            " ON CONFLICT (profile_id) DO NOTHING"
        )
        db.execute(_UPSERT_ATTRIBUTES, where)

    def _write_events(self, batch: pa.RecordBatch, profile_ids: pa.Array) -> int:
        # Events have no merge rule, so they go straight in and the primary key makes re-delivery a no-op.
        # In profile order the events-by-profile index is written locally; event ids are random anyway.
        order = pc.sort_indices(profile_ids)

        n = batch.num_rows

        def column(name: str, arrow_type: pa.DataType) -> pa.Array:
            if name not in batch.schema.names:
                return pa.nulls(n, arrow_type)
            return batch.column(name).take(order).cast(arrow_type)

        return self._db.insert(
            "events",
            pa.table(
                {
                    "environment": pa.array([self._environment] * n, pa.string()),
                    "sync": pa.array([self._sync] * n, pa.string()),
                    "event_id": column(b.EVENT_ID, pa.string()),
                    "profile_id": profile_ids.take(order),
                    "event_type": column(b.EVENT_TYPE, pa.string()),
                    "event_name": column(b.EVENT_NAME, pa.string()),
                    "timestamp_ms": column(b.EVENT_TIMESTAMP_MS, pa.int64()),
                    "data": column(b.EVENT_DATA, pa.string()),
                    "seq": pa.array([self._seq] * n, pa.int64()),
                }
            ),
            _EVENTS_ONCE,
        )

    def _write_fingerprints(self, batch: pa.RecordBatch, now: str) -> None:
        if self._fingerprints_at_end:
            # Row keys are hashes: batch by batch, 1M upserts land on random pages of a growing key (6.0 s of
            # an initial sync); kept aside, they are written in key order once, at the end (_store_fingerprints).
            keys = _one_fingerprint_per_row_key(batch)
            self._db.insert("delivery_fingerprint", keys.select(["row_key", "fingerprint", "version"]))
            return
        # In key order a batch's upserts walk the primary key forward, page by page.
        keys = _one_fingerprint_per_row_key(batch).sort_by("row_key")
        n = keys.num_rows
        self._db.insert(
            "fingerprints",
            pa.table(
                {
                    "sync": pa.array([self._sync] * n, pa.string()),
                    "environment": pa.array([self._environment] * n, pa.string()),
                    "row_key": keys.column("row_key"),
                    "fingerprint": keys.column("fingerprint"),
                    "updated_at": pa.array([now] * n, pa.string()),
                    "version": keys.column("version"),
                }
            ),
            _NEWER_FINGERPRINT,
        )


def _uint64_array(parts: list[np.ndarray]) -> pa.Array:
    """The parts as one Arrow array, from their buffer (pa.array would import pandas to look at them)."""
    values = np.concatenate([np.empty(0, np.uint64), *parts])
    return pa.Array.from_buffers(pa.uint64(), len(values), [None, pa.py_buffer(values)])


def _one_fingerprint_per_row_key(batch: pa.RecordBatch) -> pa.Table:
    """Row key, fingerprint and version, once per row key: that of the key's newest rows, one for all of
    them (_fingerprints_of_ties). Older rows of the key (an incremental read of several changes) are applied
    again and lose on their version."""
    rows = pa.table({"row_key": batch.column(b.ROW_KEY), "fingerprint": _fingerprints_of_ties(batch)})
    rows = rows.append_column("version", batch.column(b.VERSION))
    if len(pc.unique(rows.column("row_key"))) == rows.num_rows:
        return rows
    newest = rows.group_by("row_key", use_threads=False).aggregate([("version", "max")])
    rows = rows.join(newest, "row_key", use_threads=False)
    rows = rows.filter(pc.equal(rows.column("version"), rows.column("version_max")))
    per_key = rows.group_by("row_key", use_threads=False).aggregate(
        [("fingerprint", "min"), ("version", "max")]
    )
    return pa.table(
        {
            "row_key": per_key.column("row_key"),
            "fingerprint": per_key.column("fingerprint_min"),
            "version": per_key.column("version_max"),
        }
    ).sort_by("row_key")


def _fingerprints_of_ties(batch: pa.RecordBatch) -> pa.Array:
    """Each row's fingerprint; rows of one key and version that differ (tied rows, settled together by the
    tie rule) all get one fingerprint of the lot, so they are stored, found unchanged and applied again
    together: re-applied alone, under a newer run's version, some of them would beat what the others set."""
    keys, fingerprints = batch.column(b.ROW_KEY), batch.column(b.FINGERPRINT)
    if len(pc.unique(keys)) == len(keys):
        return fingerprints
    rows = pa.table({"row_key": keys, "version": batch.column(b.VERSION), "fingerprint": fingerprints})
    groups = rows.group_by(["row_key", "version"], use_threads=False).aggregate([("fingerprint", "distinct")])
    tied = groups.filter(pc.greater(pc.list_value_length(groups.column("fingerprint_distinct")), 1))
    if not tied.num_rows:
        return fingerprints
    combined = [
        hashlib.md5(" ".join(sorted(distinct)).encode()).hexdigest()
        for distinct in tied.column("fingerprint_distinct").to_pylist()
    ]
    tied = tied.drop_columns(["fingerprint_distinct"]).append_column("tied", pa.array(combined, pa.string()))
    rows = rows.append_column("n", pa.array(np.arange(len(keys)))).join(
        tied, ["row_key", "version"], use_threads=False
    )
    rows = rows.sort_by("n")
    return pc.coalesce(rows.column("tied"), rows.column("fingerprint")).combine_chunks()


def _sharing_an_identity(batch: pa.RecordBatch, changed: np.ndarray) -> np.ndarray:
    """The changed rows and every row of their version linked to one by a shared identity value (one
    customer's rows under two e-mails in a full-mode run): applied together, as their first run applied them,
    since a customer's rows of one version are settled together; applied alone, under a newer run's version,
    a changed row would beat the others. Rows of other versions settle on their version: they stay out."""
    if changed.all() or not changed.any():
        return changed
    version = pc.cast(batch.column(b.VERSION), pa.string())
    columns = [
        pc.binary_join_element_wise(batch.column(column), version, " ")
        for column in b.identity_columns(batch.schema).values()
    ]
    linked = changed
    while True:
        grown = linked.copy()
        for values in columns:
            held = pc.unique(values.filter(pa.array(linked)).drop_null())
            grown |= pc.fill_null(pc.is_in(values, value_set=held), False).to_numpy(zero_copy_only=False)
        if (grown == linked).all():
            return linked
        linked = grown


def _merged(settled: Settled, rest: np.ndarray, resolved: Resolution) -> Resolution:
    """The set-wise settled keys and those resolve took (`rest`, by their index among the batch's keys) as
    one resolution, its created profiles in key order as resolve gives them."""
    profile_ids = settled.profile_ids
    conflicts: list[str | None] = [None] * len(profile_ids)
    for index, profile_id, conflict in zip(
        rest.tolist(), resolved.profile_ids, resolved.conflicts, strict=True
    ):
        profile_ids[index] = profile_id
        conflicts[index] = conflict
    return Resolution(
        profile_ids=profile_ids,
        conflicts=conflicts,
        created=_in_key_order(settled.created + resolved.created, profile_ids),
        touched=resolved.touched,
        updated=resolved.updated,
        identities_changed=resolved.identities_changed,
        settled=settled,
    )


def _in_key_order(created: list[str], profile_ids: list[str | None]) -> list[str]:
    """The created profiles in the order of the first key each belongs to."""
    if not created:  # an events batch of known customers: no walk over every key's profile
        return created
    first: dict[str, int] = {}
    for index, profile_id in enumerate(profile_ids):
        if profile_id is not None:
            first.setdefault(profile_id, index)
    return sorted(created, key=lambda p: first.get(p, len(profile_ids)))


def _has_nul(values: pa.Array) -> bool:
    """A value with NUL in it, which SQLite's JSON functions would cut short (PostgreSQL's text holds none)."""
    return bool(pc.any(pc.match_substring(values, "\x00")).as_py())


def _identities(identities: Sequence[Identity]) -> pa.Table:
    """Identities as a table to stage."""
    return pa.table(
        {
            "identity_type": pa.array([t for t, _ in identities], pa.string()),
            "value": pa.array([v for _, v in identities], pa.string()),
        }
    )


def _attribute_rows(batch: pa.RecordBatch, rows: pa.Array, profile_ids: pa.Array) -> pa.Table:
    """The attributes of these batch rows (a profile's newest), one row per (profile, name), in that order;
    of rows tied on a profile's version, each attribute takes the greatest value (a removal lowest)."""
    columns = b.attribute_columns(batch.schema)
    names = sorted(columns)
    by_profile = pc.sort_indices(profile_ids)
    rows, profile_ids = rows.take(by_profile), profile_ids.take(by_profile)
    # Each row repeated once per name; the values taken name by name, then interleaved to match.
    repeated = pa.array(np.repeat(np.arange(len(rows)), len(names)))
    by_name = pa.concat_arrays([batch.column(columns[name]).take(rows).cast(pa.string()) for name in names])
    interleaved = (np.arange(len(names)) * len(rows) + np.arange(len(rows))[:, None]).ravel()
    table = pa.table(
        {
            "profile_id": profile_ids.take(repeated),
            "name": pa.array(names * len(rows), pa.string()),
            "value": by_name.take(pa.array(interleaved)),
            "version": batch.column(b.VERSION).take(rows).take(repeated),
        }
    )
    if len(pc.unique(profile_ids)) == len(profile_ids):
        return table
    # Arrow's max compares strings byte by byte and skips NULLs, as the register's merge does.
    greatest = table.group_by(["profile_id", "name"], use_threads=False).aggregate(
        [("value", "max"), ("version", "max")]
    )
    columns = {"profile_id": "profile_id", "name": "name", "value": "value_max", "version": "version_max"}
    chosen = pa.table({name: greatest.column(column) for name, column in columns.items()})
    return chosen.sort_by([("profile_id", "ascending"), ("name", "ascending")])


def _in_row_order(batch: pa.RecordBatch) -> pa.RecordBatch:
    rows = batch.column(b.ROW)
    if len(rows) < 2 or pc.all(pc.greater_equal(rows[1:], rows[:-1])).as_py():
        return batch
    return batch.take(pc.sort_indices(rows))


def _newest_rows_per_profile(profile_code: np.ndarray, version: np.ndarray) -> np.ndarray:
    """Per profile code (≥ 0), the indexes of its rows with the highest version (usually one)."""
    order = np.lexsort((version, profile_code))
    codes, versions = profile_code[order], version[order]
    last_of_profile = np.ones(len(order), dtype=bool)
    last_of_profile[:-1] = codes[1:] != codes[:-1]
    # Each row's profile's highest version, spread back over the profile's rows (sorted by code).
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    highest = np.repeat(versions[last_of_profile], np.diff(np.r_[starts, len(order)]))
    return np.sort(order[(versions == highest) & (codes >= 0)])


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _now_micros() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
