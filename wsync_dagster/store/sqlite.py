"""The embedded profile store: profiles, identities, attributes and events in one SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster import batches as b
from wsync_dagster.identities import priority
from wsync_dagster.store.counts import DeliveryCounts
from wsync_dagster.store.resolution import (
    CREATE_AND_UPDATE,
    INPUT_PROTECTIONS,
    READ_ONLY,
    Identity,
    IdentityGraph,
    Resolution,
    SettledKeys,
    resolve,
)
from wsync_dagster.store.schema import STAGING, connect

PREVIEW_PROFILES = 20
# Past this many identities and settled keys a delivery starts its graph over from the store, which holds
# all of it anyway: memory stays bounded however big the delivery.
RESOLUTION_ENTRIES_MAX = 4_000_000

# Every identity held by a profile that owns one of the staged identities.
_REACHABLE_IDENTITIES = """
SELECT held.profile_id, held.identity_type, held.value
FROM identities AS held
WHERE held.profile_id IN (
    SELECT owned.profile_id
    FROM stage_identity AS s
    JOIN identities AS owned
      ON owned.environment = ? AND owned.identity_type = s.identity_type AND owned.value = s.value
)
"""

_UNCHANGED_ROW_KEYS = """
SELECT s.row_key
FROM stage_fingerprint AS s
JOIN fingerprints AS f ON f.sync = ? AND f.environment = ? AND f.row_key = s.row_key
WHERE f.fingerprint = s.fingerprint
"""

# Same sync: the newer (or equal) version wins and a NULL stays as a tombstone. Another sync: only a value
# wins, moving the attribute to that sync, since attributes belong to the sync that set them.
_WINNING_ATTRIBUTES = """
INSERT INTO stage_attribute_win (profile_id, name, value, version, change)
SELECT s.profile_id, s.name, s.value, s.version,
       CASE WHEN s.value IS NOT NULL AND (a.value IS NULL OR a.value <> s.value) THEN 1
            WHEN s.value IS NULL AND a.value IS NOT NULL THEN 2
            ELSE 0 END
FROM stage_attribute AS s
LEFT JOIN attributes AS a ON a.profile_id = s.profile_id AND a.name = s.name
WHERE a.profile_id IS NULL
   OR (a.sync = :sync AND s.version >= a.version AND NOT (s.version = a.version AND s.value IS a.value))
   OR (a.sync <> :sync AND s.value IS NOT NULL)
ORDER BY s.profile_id, s.name
"""

# The staged winners are already decided, so the update is unconditional. "WHERE true" keeps SQLite
# from reading ON CONFLICT as a join constraint.
_UPSERT_ATTRIBUTES = """
INSERT INTO attributes (profile_id, name, value, sync, version, updated_at)
SELECT profile_id, name, value, :sync, version, :now FROM stage_attribute_win WHERE true
ON CONFLICT (profile_id, name) DO UPDATE SET
    value = excluded.value, sync = excluded.sync, version = excluded.version, updated_at = excluded.updated_at
"""

_INSERT_EVENT = """
INSERT INTO events (environment, event_id, profile_id, sync, event_type, event_name, timestamp_ms, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (environment, event_id) DO NOTHING
"""

_UPSERT_FINGERPRINT = """
INSERT INTO fingerprints (sync, environment, row_key, fingerprint, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (sync, environment, row_key) DO UPDATE SET
    fingerprint = excluded.fingerprint, updated_at = excluded.updated_at
"""

_UPSERT_DELIVERY = """
INSERT INTO deliveries (sync, environment, partition_key, window_start, window_end, counts, delivered_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (sync, environment, partition_key) DO UPDATE SET
    window_start = excluded.window_start, window_end = excluded.window_end,
    counts = excluded.counts, delivered_at = excluded.delivered_at
"""


class ProfileStore:
    """Profiles in a SQLite file: one write transaction per delivery; readers see the last commit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)

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
        partition: str,
        input_protection: str,
        window: tuple[int | None, int | None] = (None, None),
    ) -> Iterator[Delivery]:
        """One partition (or range) of one sync: all of it commits on normal exit, none of it on error."""
        if input_protection not in INPUT_PROTECTIONS:
            raise ValueError(f"input_protection must be one of {', '.join(INPUT_PROTECTIONS)}")
        if self._conn.in_transaction:
            raise RuntimeError("a delivery is already open on this profile store")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            delivery = Delivery(
                self._conn,
                sync=sync,
                environment=environment,
                partition=partition,
                input_protection=input_protection,
            )
            yield delivery
            counts = json.dumps(delivery.counts.as_dict())
            self._conn.execute(
                _UPSERT_DELIVERY, (sync, environment, partition, window[0], window[1], counts, _now())
            )
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def last_delivered_partition(self, sync: str, environment: str) -> str | None:
        """The partition of the sync's most recent delivery, or None."""
        row = self._conn.execute(
            "SELECT partition_key FROM deliveries WHERE sync = ? AND environment = ?"
            " ORDER BY delivered_at DESC, partition_key DESC LIMIT 1",
            (sync, environment),
        ).fetchone()
        return None if row is None else row[0]

    def delivered_partitions(self, sync: str, environment: str) -> list[str]:
        """Every partition delivered for the sync, sorted."""
        rows = self._conn.execute(
            "SELECT partition_key FROM deliveries WHERE sync = ? AND environment = ? ORDER BY partition_key",
            (sync, environment),
        )
        return [partition for (partition,) in rows]

    def profile(
        self, identity_type: str, value: str, environment: str = "production", events_limit: int = 20
    ) -> dict[str, Any] | None:
        """The profile owning an identity, with its identities, attributes and newest events; or None."""
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE environment = ? AND identity_type = ? AND value = ?",
                (environment, identity_type, value),
            ).fetchone()
            return None if row is None else self._profile(row[0], events_limit)

    def profiles_by_id(self, profile_ids: list[str], events_limit: int = 20) -> list[dict[str, Any]]:
        """The profiles with these ids (unknown ids left out), in the order given."""
        with self._snapshot():
            found = (self._profile(profile_id, events_limit) for profile_id in profile_ids)
            return [profile for profile in found if profile is not None]

    def rejects(
        self, sync: str, environment: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored rejected rows of a sync, by environment, partition and row."""
        sql = "SELECT sync, environment, partition_key, row_number, reason, row FROM rejects WHERE sync = ?"
        params: list[Any] = [sync]
        if environment is not None:
            sql += " AND environment = ?"
            params.append(environment)
        sql += " ORDER BY environment, partition_key, row_number"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            {
                "sync": sync_name,
                "environment": env,
                "partition": partition,
                "row_number": row_number,
                "reason": reason,
                "row": _decode(row),
            }
            for sync_name, env, partition, row_number, reason, row in self._conn.execute(sql, params)
        ]

    def close(self) -> None:
        """Close the connection; an open delivery is rolled back."""
        self._conn.close()

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        # Several SELECTs in one read transaction see one state, even if a delivery commits meanwhile.
        if self._conn.in_transaction:
            yield self._conn
            return
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _profile(self, profile_id: str, events_limit: int) -> dict[str, Any] | None:
        conn = self._conn
        row = conn.execute("SELECT environment FROM profiles WHERE profile_id = ?", (profile_id,)).fetchone()
        if row is None:
            return None
        identities = conn.execute(
            "SELECT identity_type, value FROM identities WHERE profile_id = ?", (profile_id,)
        ).fetchall()
        attributes = conn.execute(
            "SELECT name, value FROM attributes WHERE profile_id = ? AND value IS NOT NULL ORDER BY name",
            (profile_id,),
        )
        events = conn.execute(
            "SELECT event_type, event_name, timestamp_ms, data FROM events WHERE profile_id = ?"
            " ORDER BY timestamp_ms DESC, event_id DESC LIMIT ?",
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
    """The open transaction of one delivery: apply mapped batches, store rejects."""

    def __init__(
        self, conn: sqlite3.Connection, *, sync: str, environment: str, partition: str, input_protection: str
    ):
        self._conn = conn
        self._sync = sync
        self._environment = environment
        self._partition = partition
        self._input_protection = input_protection
        self.counts = DeliveryCounts()
        self.profile_ids_touched: list[str] = []
        # Kept across the batches: the delivery holds the write lock, so only it changes identities.
        self._graph = IdentityGraph()
        self._settled = SettledKeys()
        for statement in STAGING:
            conn.execute(statement)
        conn.execute("DELETE FROM delivery_profile")

    def apply_batch(self, batch: pa.RecordBatch) -> DeliveryCounts:
        """Apply one mapped user or event batch; its counts are returned and added to the delivery's."""
        counts = DeliveryCounts(rows=batch.num_rows)
        batch = _in_row_order(batch)
        full_mode = b.ROW_KEY in batch.schema.names and b.FINGERPRINT in batch.schema.names
        if full_mode and batch.num_rows:
            batch, counts.rows_unchanged = self._drop_unchanged(batch)
        if batch.num_rows:
            self._apply(batch, counts, full_mode)
        self.counts.add(counts)
        return counts

    def replace_rejects(self, rejects: pa.Table) -> None:
        """Replace the partition's stored rejects (rows of batches.REJECT_SCHEMA) with these."""
        self._conn.execute(
            "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ?",
            (self._sync, self._environment, self._partition),
        )
        self._conn.executemany(
            "INSERT INTO rejects (sync, environment, partition_key, row_number, reason, row, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            zip(
                repeat(self._sync),
                repeat(self._environment),
                repeat(self._partition),
                rejects.column(b.ROW).to_pylist(),
                rejects.column("reason").to_pylist(),
                rejects.column("row").to_pylist(),
                repeat(_now()),
                strict=False,
            ),
        )
        # What is stored is what is counted, also if this is called twice.
        self.counts.rejects = rejects.num_rows

    def _drop_unchanged(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
        row_keys = batch.column(b.ROW_KEY)
        self._conn.execute("DELETE FROM stage_fingerprint")
        self._conn.executemany(
            "INSERT INTO stage_fingerprint (row_key, fingerprint) VALUES (?, ?)",
            zip(row_keys.to_pylist(), batch.column(b.FINGERPRINT).to_pylist(), strict=True),
        )
        unchanged = [
            key for (key,) in self._conn.execute(_UNCHANGED_ROW_KEYS, (self._sync, self._environment))
        ]
        if not unchanged:
            return batch, 0
        changed = batch.filter(pc.invert(pc.is_in(row_keys, value_set=pa.array(unchanged, pa.string()))))
        return changed, batch.num_rows - changed.num_rows

    def _apply(self, batch: pa.RecordBatch, counts: DeliveryCounts, full_mode: bool) -> None:
        # Resolution runs once per distinct identity key, in first-occurrence (= _row) order.
        encoded = batch.column(b.IDENTITY_KEY).dictionary_encode()
        if self._input_protection == READ_ONLY:
            counts.profiles_skipped = len(encoded.dictionary)
            return
        key_of_row = encoded.indices.to_numpy(zero_copy_only=False)
        keys = encoded.dictionary.cast(pa.string())
        profile_of_key, conflict_of_key, resolution = self._resolve(batch, keys, key_of_row)
        now = _now()
        self._write_profiles(resolution, now)
        counts.profiles_created = len(resolution.created)
        counts.profiles_skipped = resolution.skipped
        rows_per_key = np.bincount(key_of_row, minlength=len(profile_of_key))
        counts.identity_conflicts = int(rows_per_key[conflict_of_key].sum())
        counts.profiles_updated = self._mark_updated(resolution.gained_identity)

        profile_of_row = profile_of_key.take(encoded.indices)
        applied = pc.is_valid(profile_of_row)
        if b.attribute_columns(batch.schema):
            code_of_key = pc.dictionary_encode(profile_of_key).indices.fill_null(-1)
            code_of_row = code_of_key.to_numpy(zero_copy_only=False).astype(np.int64)[key_of_row]
            self._apply_attributes(batch, profile_of_row, code_of_row, resolution.created, counts, now)
        if b.is_event_schema(batch.schema):
            counts.events_written = self._write_events(batch.filter(applied), profile_of_row.filter(applied))
        if full_mode:
            self._write_fingerprints(batch.filter(applied), now)
        if len(self.profile_ids_touched) < PREVIEW_PROFILES:
            rows = self._conn.execute(
                "SELECT profile_id FROM delivery_profile ORDER BY rowid LIMIT ?", (PREVIEW_PROFILES,)
            )
            self.profile_ids_touched = [profile_id for (profile_id,) in rows]

    def _resolve(
        self, batch: pa.RecordBatch, keys: pa.Array, key_of_row: np.ndarray
    ) -> tuple[pa.Array, np.ndarray, Resolution]:
        """Per distinct key, its profile (null when skipped) and whether it conflicts; and what to write."""
        columns = b.identity_columns(batch.schema)
        if not columns:
            raise ValueError("a mapped batch needs at least one identity column")
        if len(self._graph.owner) + len(self._graph.looked_up) + len(self._settled) > RESOLUTION_ENTRIES_MAX:
            self._graph, self._settled = IdentityGraph(), SettledKeys()
        # Settled keys are done; the others resolve in order as before, which settled keys cannot affect.
        settled_at = self._settled.find(keys)
        open_keys = np.flatnonzero(pc.is_null(settled_at).to_numpy(zero_copy_only=False))
        types = sorted(columns, key=priority)
        _, first_rows = np.unique(key_of_row, return_index=True)
        first = pa.array(first_rows[open_keys], pa.int64())
        values = [batch.column(columns[t]).take(first).to_pylist() for t in types]
        identities_of_key = [
            [(t, v) for t, v in zip(types, key_values, strict=True) if v is not None]
            for key_values in zip(*values, strict=True)
        ]
        self._look_up({identity for identities in identities_of_key for identity in identities})
        resolution = resolve(
            identities_of_key,
            self._graph,
            self._environment,
            create=self._input_protection == CREATE_AND_UPDATE,
        )

        # Each key's outcome: settled ones from earlier batches, then the ones resolved now.
        settled = self._settled
        opened = pa.array(resolution.profile_ids, pa.string())
        opened_conflicts = np.array(resolution.conflicts, dtype=bool)
        outcome_at = settled_at.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        outcome_at[open_keys] = len(settled) + np.arange(len(open_keys))
        profile_of_key = pa.concat_arrays([settled.profile_ids, opened]).take(outcome_at)
        conflict_of_key = np.concatenate([settled.conflicts, opened_conflicts])[outcome_at]
        now_settled = np.array(resolution.settled, dtype=bool)
        settled.add(
            keys.take(open_keys[now_settled]), opened.filter(now_settled), opened_conflicts[now_settled]
        )
        return profile_of_key, conflict_of_key, resolution

    def _look_up(self, identities: set[Identity]) -> None:
        """Add to the graph the stored profiles that own any of these identities it has not looked up."""
        new = self._graph.not_looked_up(identities)
        if not new:
            return
        self._conn.execute("DELETE FROM stage_identity")
        self._conn.executemany("INSERT INTO stage_identity (identity_type, value) VALUES (?, ?)", new)
        self._graph.add_stored(new, self._conn.execute(_REACHABLE_IDENTITIES, (self._environment,)))

    def _write_profiles(self, resolution: Resolution, now: str) -> None:
        # Inserting in key order keeps the B-tree writes local.
        env = self._environment
        self._conn.executemany(
            "INSERT INTO profiles (profile_id, environment, created_at) VALUES (?, ?, ?)",
            ((profile_id, env, now) for profile_id in sorted(resolution.created)),
        )
        self._conn.executemany(
            "INSERT INTO identities (environment, identity_type, value, profile_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                (env, t, v, profile_id, now)
                for profile_id, t, v in sorted(resolution.attached, key=_by_identity)
            ),
        )
        self._conn.executemany(
            "INSERT INTO delivery_profile (profile_id, created) VALUES (?, 1)",
            ((profile_id,) for profile_id in resolution.created),
        )

    def _mark_updated(self, profile_ids: Iterable[str]) -> int:
        """Record existing profiles as updated; returns how many were not yet counted in this delivery."""
        return self._conn.executemany(
            "INSERT INTO delivery_profile (profile_id, created) VALUES (?, 0)"
            " ON CONFLICT (profile_id) DO NOTHING",
            ((profile_id,) for profile_id in profile_ids),
        ).rowcount

    def _apply_attributes(
        self,
        batch: pa.RecordBatch,
        profile_of_row: pa.Array,
        code_of_row: np.ndarray,
        created: list[str],
        counts: DeliveryCounts,
        now: str,
    ) -> None:
        # All attribute columns of a row share its version, so one row wins per profile for all of them.
        winners = pa.array(
            _newest_row_per_profile(
                code_of_row, batch.column(b.ROW).to_numpy(), batch.column(b.VERSION).to_numpy()
            )
        )
        profile_ids = profile_of_row.take(winners)
        # A profile created by this batch has no stored attributes to merge with: its values go straight in,
        # NULLs too, as the tombstones the merge would have stored.
        is_new = pc.is_in(profile_ids, value_set=pa.array(created, pa.string()))
        fresh = _attribute_rows(batch, winners.filter(is_new), profile_ids.filter(is_new))
        profile_id, name, value, version = (column.to_pylist() for column in fresh.columns)
        conn = self._conn
        conn.executemany(
            "INSERT INTO attributes (profile_id, name, value, sync, version, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            zip(profile_id, name, value, repeat(self._sync), version, repeat(now), strict=False),
        )
        counts.attributes_set = fresh.num_rows - fresh.column("value").null_count

        is_stored = pc.invert(is_new)
        stored = _attribute_rows(batch, winners.filter(is_stored), profile_ids.filter(is_stored))
        if not stored.num_rows:
            return
        conn.execute("DELETE FROM stage_attribute")
        conn.executemany(
            "INSERT INTO stage_attribute (profile_id, name, value, version) VALUES (?, ?, ?, ?)",
            zip(*(column.to_pylist() for column in stored.columns), strict=True),
        )
        conn.execute("DELETE FROM stage_attribute_win")
        conn.execute(_WINNING_ATTRIBUTES, {"sync": self._sync})
        set_count, removed_count = conn.execute(
            "SELECT COUNT(CASE WHEN change = 1 THEN 1 END), COUNT(CASE WHEN change = 2 THEN 1 END)"
            " FROM stage_attribute_win"
        ).fetchone()
        counts.attributes_set += set_count
        counts.attributes_removed = removed_count
        counts.profiles_updated += conn.execute(
            "INSERT INTO delivery_profile (profile_id, created)"
            " SELECT DISTINCT profile_id, 0 FROM stage_attribute_win WHERE change > 0"
            " ON CONFLICT (profile_id) DO NOTHING"
        ).rowcount
        conn.execute(_UPSERT_ATTRIBUTES, {"sync": self._sync, "now": now})

    def _write_events(self, batch: pa.RecordBatch, profile_ids: pa.Array) -> int:
        # Events have no merge rule, so they go straight in and the primary key makes re-delivery a no-op.
        # In profile order the events-by-profile index is written locally; event ids are random anyway.
        order = pc.sort_indices(profile_ids)

        def column(name: str) -> Iterable[Any]:
            return batch.column(name).take(order).to_pylist() if name in batch.schema.names else repeat(None)

        return self._conn.executemany(
            _INSERT_EVENT,
            zip(
                repeat(self._environment),
                column(b.EVENT_ID),
                profile_ids.take(order).to_pylist(),
                repeat(self._sync),
                column(b.EVENT_TYPE),
                column(b.EVENT_NAME),
                column(b.EVENT_TIMESTAMP_MS),
                column(b.EVENT_DATA),
                strict=False,
            ),
        ).rowcount

    def _write_fingerprints(self, batch: pa.RecordBatch, now: str) -> None:
        self._conn.executemany(
            _UPSERT_FINGERPRINT,
            zip(
                repeat(self._sync),
                repeat(self._environment),
                batch.column(b.ROW_KEY).to_pylist(),
                batch.column(b.FINGERPRINT).to_pylist(),
                repeat(now),
                strict=False,
            ),
        )


def _by_identity(attached: tuple[str, str, str]) -> tuple[str, str]:
    return attached[1], attached[2]


def _attribute_rows(batch: pa.RecordBatch, rows: pa.Array, profile_ids: pa.Array) -> pa.Table:
    """The attributes of these batch rows (one per profile), one row per (profile, name), in that order."""
    columns = b.attribute_columns(batch.schema)
    names = sorted(columns)
    by_profile = pc.sort_indices(profile_ids)
    rows, profile_ids = rows.take(by_profile), profile_ids.take(by_profile)
    # Each row repeated once per name; the values taken name by name, then interleaved to match.
    repeated = pa.array(np.repeat(np.arange(len(rows)), len(names)))
    by_name = pa.concat_arrays([batch.column(columns[name]).take(rows).cast(pa.string()) for name in names])
    interleaved = (np.arange(len(names)) * len(rows) + np.arange(len(rows))[:, None]).ravel()
    return pa.table(
        {
            "profile_id": profile_ids.take(repeated),
            "name": pa.array(names * len(rows), pa.string()),
            "value": by_name.take(pa.array(interleaved)),
            "version": batch.column(b.VERSION).take(rows).take(repeated),
        }
    )


def _in_row_order(batch: pa.RecordBatch) -> pa.RecordBatch:
    rows = batch.column(b.ROW)
    if len(rows) < 2 or pc.all(pc.greater_equal(rows[1:], rows[:-1])).as_py():
        return batch
    return batch.take(pc.sort_indices(rows))


def _newest_row_per_profile(profile_code: np.ndarray, row: np.ndarray, version: np.ndarray) -> np.ndarray:
    """Per profile code (≥ 0), the index of its row with the highest version, ties to the later row."""
    order = np.lexsort((row, version, profile_code))
    codes = profile_code[order]
    last_of_profile = np.ones(len(order), dtype=bool)
    last_of_profile[:-1] = codes[1:] != codes[:-1]
    return np.sort(order[last_of_profile & (codes >= 0)])


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
