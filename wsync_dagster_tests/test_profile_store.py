"""The profile store on both backends (SQLite files, PostgreSQL schemas): resolution, attributes, events,
deliveries, crash safety. Every test of the `store` fixture runs on each backend."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from wsync_dagster import batches as b
from wsync_dagster.identities import IDENTITY_PRIORITY
from wsync_dagster.store import DeliveryCounts, ProfileStore, open_profile_store
from wsync_dagster_tests.conftest import STORE_BACKENDS

REPO = Path(__file__).resolve().parents[1]
SYNC = "crm_users"


def mapped(*rows: dict[str, Any], version: int = 1, full: bool = False) -> pa.RecordBatch:
    """A mapped batch from rows keyed by identity type, "event.*" or attribute name (None removes); a row
    with b.DELETE true is a cdc delete."""
    names = list(
        dict.fromkeys(name for row in rows for name in row if name not in (b.ROW, b.VERSION, b.DELETE))
    )
    identity_types = [name for name in names if name in IDENTITY_PRIORITY]
    attributes = [name for name in names if name not in identity_types and not name.startswith("event.")]
    keys = [
        json.dumps({t: row[t] for t in identity_types if row.get(t) is not None}, sort_keys=True)
        for row in rows
    ]
    columns: dict[str, pa.Array] = {
        b.ROW: pa.array([row.get(b.ROW, n) for n, row in enumerate(rows)], pa.int64()),
        b.VERSION: pa.array([row.get(b.VERSION, version) for row in rows], pa.int64()),
        b.IDENTITY_KEY: pa.array(keys, pa.string()),
    }
    if full:
        columns[b.ROW_KEY] = pa.array([_md5(key) for key in keys], pa.string())
        columns[b.FINGERPRINT] = pa.array(
            [_md5(json.dumps(row, sort_keys=True)) for row in rows], pa.string()
        )
    for t in identity_types:
        columns[b.IDENTITY_PREFIX + t] = pa.array([row.get(t) for row in rows], pa.string())
    for name in attributes:
        values = [None if row.get(name) is None else json.dumps(row[name]) for row in rows]
        columns[b.ATTRIBUTE_PREFIX + name] = pa.array(values, pa.string())
    if b.EVENT_ID in names:
        columns[b.EVENT_ID] = pa.array([row[b.EVENT_ID] for row in rows], pa.string())
        columns[b.EVENT_TYPE] = pa.array([row.get(b.EVENT_TYPE, "custom_event") for row in rows], pa.string())
        columns[b.EVENT_NAME] = pa.array([row.get(b.EVENT_NAME) for row in rows], pa.string())
        timestamps = [row.get(b.EVENT_TIMESTAMP_MS, 1_700_000_000_000) for row in rows]
        columns[b.EVENT_TIMESTAMP_MS] = pa.array(timestamps, pa.int64())
        columns[b.EVENT_DATA] = pa.array([json.dumps(row.get(b.EVENT_DATA, {})) for row in rows], pa.string())
    if any(b.DELETE in row for row in rows):
        columns[b.DELETE] = pa.array([bool(row.get(b.DELETE)) for row in rows], pa.bool_())
    return pa.RecordBatch.from_pydict(columns)


def rejected(*rows: tuple[int, str, dict[str, Any]]) -> pa.Table:
    """A rejects table from (row number, reason, row) tuples."""
    return pa.Table.from_pylist(
        [{b.ROW: n, "reason": reason, "row": json.dumps(row)} for n, reason, row in rows],
        schema=b.REJECT_SCHEMA,
    )


def deliver(
    store: ProfileStore,
    *batches: pa.RecordBatch,
    sync: str = SYNC,
    environment: str = "production",
    partition: str = "2024-11-15",
    input_protection: str = "create_and_update",
    mirror: bool = False,
) -> DeliveryCounts:
    """Apply batches as one delivery and return its counts."""
    with store.delivery(
        sync=sync,
        environment=environment,
        partitions=[partition],
        input_protection=input_protection,
        mirror=mirror,
    ) as delivery:
        for batch in batches:
            delivery.apply_batch(batch)
    return delivery.counts


def attributes(store: ProfileStore, identity_type: str, value: str, environment: str = "production") -> dict:
    """The visible attributes of the profile owning an identity."""
    profile = store.profile(identity_type, value, environment)
    assert profile is not None, f"no profile owns {identity_type}={value}"
    return profile["attributes"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a test runs on."""
    return request.param


@pytest.fixture
def store(backend: str, make_store: Callable[..., ProfileStore]) -> ProfileStore:
    """A fresh, empty store of the backend."""
    return make_store("profiles", backend)


# Profiles and identity resolution


def test_new_identities_create_a_profile_with_its_attributes(store: ProfileStore) -> None:
    counts = deliver(store, mapped({"customer_id": "A", "email": "a@x.io", "plan": "pro", "seats": 3}))

    profile = store.profile("email", "a@x.io")
    assert profile is not None
    assert profile["identities"] == {"customer_id": "A", "email": "a@x.io"}
    assert profile["attributes"] == {"plan": "pro", "seats": 3}
    assert (counts.rows, counts.profiles_created, counts.attributes_set) == (1, 1, 2)


def test_customer_id_outranks_email_in_resolution(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A"}, {"email": "e@x.io"}))

    deliver(store, mapped({"customer_id": "A", "email": "e@x.io", "plan": "pro"}), partition="p2")

    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    assert attributes(store, "email", "e@x.io") == {}


def test_row_matching_two_profiles_goes_to_higher_priority_and_counts_conflict(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A"}, {"email": "e@x.io"}))

    counts = deliver(store, mapped({"customer_id": "A", "email": "e@x.io", "plan": "pro"}), partition="p2")

    assert counts.identity_conflicts == 1
    assert store.profile("customer_id", "A")["identities"] == {"customer_id": "A"}
    assert store.profile("email", "e@x.io")["identities"] == {"email": "e@x.io"}


def test_same_email_different_customer_id_creates_a_second_profile(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "email": "shared@x.io", "plan": "a"}))

    counts = deliver(store, mapped({"customer_id": "B", "email": "shared@x.io", "plan": "b"}), partition="p2")

    first, second = store.profile("customer_id", "A"), store.profile("customer_id", "B")
    assert first["profile_id"] != second["profile_id"]
    assert second["identities"] == {"customer_id": "B"}
    assert second["attributes"] == {"plan": "b"}
    assert store.profile("email", "shared@x.io")["attributes"] == {"plan": "a"}
    assert (counts.profiles_created, counts.identity_conflicts) == (1, 1)


def test_email_match_gains_a_customer_id_it_lacked(store: ProfileStore) -> None:
    deliver(store, mapped({"email": "e@x.io", "plan": "free"}))

    counts = deliver(store, mapped({"customer_id": "A", "email": "e@x.io"}), partition="p2")

    profile = store.profile("customer_id", "A")
    assert profile["identities"] == {"customer_id": "A", "email": "e@x.io"}
    assert profile["attributes"] == {"plan": "free"}
    assert (counts.profiles_created, counts.profiles_updated) == (0, 1)


def test_a_changed_email_replaces_the_old_one_and_releases_it(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "email": "old@x.io"}, version=1))

    counts = deliver(store, mapped({"customer_id": "A", "email": "new@x.io"}, version=2), partition="p2")

    assert store.profile("customer_id", "A")["identities"] == {"customer_id": "A", "email": "new@x.io"}
    assert store.profile("email", "new@x.io")["identities"]["customer_id"] == "A"
    assert store.profile("email", "old@x.io") is None
    assert (counts.identities_changed, counts.profiles_updated, counts.identity_conflicts) == (1, 1, 0)


def test_an_older_row_never_puts_back_a_replaced_identity(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "email": "old@x.io"}, version=1), partition="p1")
    deliver(store, mapped({"customer_id": "A", "email": "new@x.io"}, version=3), partition="p3")

    counts = deliver(store, mapped({"customer_id": "A", "email": "old@x.io"}, version=1), partition="p1")

    assert store.profile("customer_id", "A")["identities"]["email"] == "new@x.io"
    assert store.profile("email", "old@x.io") is None
    assert (counts.identities_changed, counts.identity_conflicts) == (0, 0)


def test_a_re_asserted_identity_is_as_new_as_its_newest_row(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "email": "a@x.io"}, version=1), partition="p1")
    deliver(store, mapped({"customer_id": "A", "email": "a@x.io"}, version=5), partition="p5")

    deliver(store, mapped({"customer_id": "A", "email": "b@x.io"}, version=3), partition="p3")

    assert store.profile("customer_id", "A")["identities"]["email"] == "a@x.io"


def test_a_new_email_owned_by_another_profile_moves_nothing_and_is_a_conflict(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "email": "a@x.io"}, {"customer_id": "B", "email": "b@x.io"}))

    counts = deliver(
        store, mapped({"customer_id": "A", "email": "b@x.io", "plan": "pro"}, version=2), partition="p2"
    )

    assert store.profile("customer_id", "A")["identities"] == {"customer_id": "A", "email": "a@x.io"}
    assert store.profile("customer_id", "A")["attributes"] == {"plan": "pro"}
    assert store.profile("email", "b@x.io")["identities"]["customer_id"] == "B"
    assert (counts.identity_conflicts, counts.identities_changed, counts.rows_applied) == (1, 0, 0)
    [conflict] = store.rejects(SYNC)
    assert conflict["kind"] == "conflict"
    assert conflict["reason"] == (
        "identity conflict: email=b@x.io belongs to customer_id=B; the row went to customer_id=A"
    )


def test_the_newer_of_two_rows_of_one_customer_in_a_batch_decides_the_email(store: ProfileStore) -> None:
    deliver(
        store,
        mapped(
            {"customer_id": "A", "email": "newer@x.io", b.VERSION: 9},
            {"customer_id": "A", "email": "older@x.io", b.VERSION: 4},
            {"customer_id": "B", "email": "first@x.io", b.VERSION: 7},
            {"customer_id": "B", "email": "second@x.io", b.VERSION: 7},
        ),
    )

    assert store.profile("customer_id", "A")["identities"]["email"] == "newer@x.io"
    assert store.profile("customer_id", "B")["identities"]["email"] == "second@x.io"
    assert store.profile("email", "older@x.io") is None
    assert store.profile("email", "first@x.io") is None


def test_a_released_identity_can_seed_a_profile_of_its_own(store: ProfileStore) -> None:
    deliver(store, mapped({"email": "old@x.io"}, version=1), partition="p1")
    deliver(store, mapped({"email": "old@x.io", "customer_id": "A"}, version=2), partition="p2")
    deliver(store, mapped({"customer_id": "A", "email": "new@x.io"}, version=3), partition="p3")

    deliver(store, mapped({"email": "old@x.io", "plan": "free"}, version=4), partition="p4")

    first, second = store.profile("customer_id", "A"), store.profile("email", "old@x.io")
    assert first["identities"] == {"customer_id": "A", "email": "new@x.io"}
    assert second["identities"] == {"email": "old@x.io"}
    assert second["profile_id"] != first["profile_id"]


def test_profile_created_by_an_earlier_row_is_seen_by_later_rows(store: ProfileStore) -> None:
    counts = deliver(
        store,
        mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "A", "email": "e@x.io", "plan": "pro"}),
        mapped({"email": "e@x.io", "mpid": "m1", "seats": 2}),
    )

    profile = store.profile("mpid", "m1")
    assert profile["identities"] == {"customer_id": "A", "email": "e@x.io", "mpid": "m1"}
    assert profile["attributes"] == {"plan": "pro", "seats": 2}
    assert (counts.profiles_created, counts.profiles_updated) == (1, 0)


def test_identity_changes_across_batches_of_one_delivery_end_at_the_newest(store: ProfileStore) -> None:
    with store.delivery(
        sync=SYNC, environment="production", partitions=["p1"], input_protection="create_and_update"
    ) as d:
        d.apply_batch(mapped({"customer_id": "A", "email": "old@x.io", b.ROW: 0}))
        changed = d.apply_batch(mapped({"customer_id": "A", "email": "new@x.io", b.ROW: 1}))
        taken = d.apply_batch(mapped({"customer_id": "B", "email": "new@x.io", b.ROW: 2}))
        back = d.apply_batch(mapped({"customer_id": "A", "email": "old@x.io", b.ROW: 3}))

    assert (changed.identities_changed, taken.identity_conflicts, back.identities_changed) == (1, 1, 1)
    assert store.profile("customer_id", "A")["identities"] == {"customer_id": "A", "email": "old@x.io"}
    assert store.profile("customer_id", "B")["identities"] == {"customer_id": "B"}
    assert store.profile("email", "new@x.io") is None


def test_profile_ids_are_the_same_in_a_fresh_store(
    backend: str, make_store: Callable[..., ProfileStore]
) -> None:
    batch = mapped({"customer_id": "A", "email": "a@x.io"}, {"email": "b@x.io"})
    ids = []
    for name in ("one", "two"):
        with make_store(name, backend) as fresh:
            deliver(fresh, batch)
            ids.append(
                (
                    fresh.profile("customer_id", "A")["profile_id"],
                    fresh.profile("email", "b@x.io")["profile_id"],
                )
            )

    assert ids[0] == ids[1]


def test_a_delivery_creates_its_profiles_in_rising_id_order(store: ProfileStore) -> None:
    # Ids that rise with the rows creating them are written at the end of every index keyed by them:
    # at 1M users, hashed ids scattered the writes over pages beyond SQLite's page cache (119 s -> 85 s).
    names = [f"C{n:03d}" for n in random.Random(7).sample(range(1000), 60)]
    rows = [{"customer_id": name, b.ROW: n, "plan": "pro"} for n, name in enumerate(names)]
    rows[41]["email"] = rows[40]["email"] = "shared@x.io"  # two keys left to the exact rules (resolve)
    deliver(store, mapped(*rows[:30]), mapped(*rows[30:]))

    created = [store.profile("customer_id", name)["profile_id"] for name in names]
    assert created == sorted(created)
    assert len(set(created)) == len(names)


def test_profiles_of_a_store_with_hashed_ids_keep_them_beside_new_ones(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsync_dagster.store import planner, resolution, settle

    def hashed(environment: str, identity_type: str, value: str, row: int, attempt: int = 0) -> str:
        suffix = f"|{attempt}" if attempt else ""
        return hashlib.sha256(f"{environment}|{identity_type}|{value}{suffix}".encode()).hexdigest()[:16]

    with monkeypatch.context() as former:  # the ids of the stores written before ids led with their row
        for module in (planner, resolution, settle):
            former.setattr(module, "profile_id_for", hashed)
        deliver(store, mapped({"customer_id": "A", "email": "a@x.io"}, {"customer_id": "B"}, version=1))
    old_a, old_b = (store.profile("customer_id", name)["profile_id"] for name in ("A", "B"))

    counts = deliver(
        store,
        mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "C", "email": "a@x.io"}, version=2),
    )

    assert (
        store.profile("customer_id", "A")["profile_id"]
        == old_a
        == hashed("production", "customer_id", "A", 0)
    )
    assert store.profile("customer_id", "B")["profile_id"] == old_b
    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    new_c = store.profile("customer_id", "C")["profile_id"]
    assert new_c not in (old_a, old_b) and len(new_c) == 20
    assert (counts.profiles_created, counts.identity_conflicts) == (1, 1)


def test_update_only_never_creates_a_profile(store: ProfileStore) -> None:
    counts = deliver(store, mapped({"customer_id": "A", "plan": "pro"}), input_protection="update_only")

    assert store.profile("customer_id", "A") is None
    assert (counts.profiles_created, counts.profiles_skipped) == (0, 1)


def test_update_only_updates_existing_profiles(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "free"}))

    counts = deliver(
        store,
        mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "B", "plan": "pro"}, version=2),
        partition="p2",
        input_protection="update_only",
    )

    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    assert store.profile("customer_id", "B") is None
    assert (counts.profiles_updated, counts.profiles_skipped) == (1, 1)


def test_read_only_writes_nothing(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "free"}))
    before = store.profile("customer_id", "A")

    with store.delivery(
        sync=SYNC, environment="production", partitions=["p2"], input_protection="read_only"
    ) as d:
        d.apply_batch(
            mapped({"customer_id": "A", "email": "a@x.io", "plan": "pro"}, {"customer_id": "B"}, version=2)
        )
        d.apply_batch(mapped({"customer_id": "A", b.EVENT_ID: "e1", b.EVENT_NAME: "login"}))
        d.replace_rejects(rejected((7, "no identity", {"plan": "pro"})))

    assert store.profile("customer_id", "A") == before
    assert store.profile("customer_id", "B") is None
    assert [r["row_number"] for r in store.rejects(SYNC)] == [7]
    assert store.delivered_partitions(SYNC, "production") == ["2024-11-15", "p2"]
    assert (d.counts.rows, d.counts.profiles_skipped, d.counts.rejects) == (3, 3, 1)
    assert d.counts.profiles_updated == d.counts.events_written == d.counts.attributes_set == 0


# Attributes


def test_null_removes_an_attribute(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro", "seats": 3}, version=1))

    counts = deliver(store, mapped({"customer_id": "A", "plan": None, "seats": 3}, version=2), partition="p2")

    assert attributes(store, "customer_id", "A") == {"seats": 3}
    assert (counts.attributes_removed, counts.attributes_set) == (1, 0)


def test_older_version_never_overwrites_newer(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=20), partition="p2")

    counts = deliver(store, mapped({"customer_id": "A", "plan": "free"}, version=10), partition="p1")

    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    assert (counts.attributes_set, counts.profiles_updated) == (0, 0)


def test_older_value_cannot_resurrect_a_removed_attribute(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro", "seats": 1}, version=10), partition="p1")
    deliver(store, mapped({"customer_id": "A", "plan": None, "seats": 1}, version=30), partition="p3")

    deliver(store, mapped({"customer_id": "A", "plan": "free", "seats": 1}, version=20), partition="p2")

    assert attributes(store, "customer_id", "A") == {"seats": 1}


def test_null_from_another_sync_leaves_attribute(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=1), sync="crm_users")

    counts = deliver(store, mapped({"customer_id": "A", "plan": None}, version=99), sync="billing")

    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    assert counts.attributes_removed == 0


def test_value_from_another_sync_takes_the_attribute_over(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=100), sync="crm_users")
    deliver(store, mapped({"customer_id": "A", "plan": "enterprise"}, version=1), sync="billing")

    deliver(store, mapped({"customer_id": "A", "plan": None}, version=200), sync="crm_users", partition="p2")

    assert attributes(store, "customer_id", "A") == {"plan": "enterprise"}


@pytest.mark.parametrize("resending", ["crm_users", "billing"])
def test_a_sync_resending_the_value_a_tie_across_syncs_shows_changes_nothing(
    store: ProfileStore, resending: str
) -> None:
    """Two syncs set one version: the later delivery's value shows. Either sync sending the value shown again,
    newer, changes no profile: nothing counted as set or updated (and so nothing to forward)."""
    deliver(store, mapped({"customer_id": "A", "plan": "free"}, version=5), sync="crm_users", partition="p1")
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=5), sync="billing", partition="p2")
    assert attributes(store, "customer_id", "A") == {"plan": "pro"}

    counts = deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=6), sync=resending, partition="p3")

    assert (counts.attributes_set, counts.profiles_updated) == (0, 0)
    assert attributes(store, "customer_id", "A") == {"plan": "pro"}


def test_newest_version_in_a_batch_wins_and_ties_go_to_the_greater_value(store: ProfileStore) -> None:
    deliver(
        store,
        mapped(
            {"customer_id": "A", "plan": "newest", b.VERSION: 5},
            {"customer_id": "A", "plan": "older", b.VERSION: 4},
            {"customer_id": "B", "plan": "first", b.VERSION: 7},
            {"customer_id": "B", "plan": "second", b.VERSION: 7},
        ),
    )

    assert attributes(store, "customer_id", "A") == {"plan": "newest"}
    assert attributes(store, "customer_id", "B") == {"plan": "second"}


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_two_values_of_one_version_settle_alike_in_either_order_and_any_batching(
    backend: str, make_store: Callable[..., ProfileStore]
) -> None:
    """The greater value (JSON text, byte order) wins a tie; a removal is lowest; per attribute."""
    first = {"customer_id": "A", "plan": "pro", "seats": 10, "note": None}
    second = {"customer_id": "A", "plan": "free", "seats": 9, "note": "vip"}
    expected = {"plan": "pro", "seats": 9, "note": "vip"}  # '9' > '10' as text
    ways = {
        "one batch": lambda s, x, y: deliver(s, mapped(x, y, version=5)),
        "two batches": lambda s, x, y: deliver(s, mapped(x, version=5), mapped(y, version=5)),
        "two deliveries": lambda s, x, y: (
            deliver(s, mapped(x, version=5), partition="p1"),
            deliver(s, mapped(y, version=5), partition="p2"),
        ),
    }
    for n, (way, apply) in enumerate(ways.items()):
        for order, (x, y) in enumerate([(first, second), (second, first)]):
            with make_store(f"tie{n}{order}", backend) as store:
                apply(store, x, y)
                assert attributes(store, "customer_id", "A") == expected, f"{way}, order {order}"


def test_two_full_mode_rows_of_one_customer_keep_the_greater_value_run_after_run(store: ProfileStore) -> None:
    """Rows of one key that differ are all applied again each run (no fingerprint holds for them), so
    the tie rule settles them every time instead of the one row whose fingerprint was not stored."""
    pro, free = {"customer_id": "A", "plan": "pro"}, {"customer_id": "A", "plan": "free"}
    seen = []
    for run, rows in enumerate([(pro, free), (free, pro), (pro, free), (free, pro)]):
        deliver(store, mapped(*rows, version=run + 1, full=True), partition=f"run{run}")
        seen.append(attributes(store, "customer_id", "A")["plan"])
    deliver(store, mapped(free, version=9, full=True), mapped(pro, version=9, full=True), partition="split")
    seen.append(attributes(store, "customer_id", "A")["plan"])

    assert seen == ["pro"] * 5


def test_rows_resolve_in_row_order_whatever_the_batch_order(store: ProfileStore) -> None:
    deliver(
        store,
        mapped(
            {"customer_id": "B", "email": "e@x.io", b.ROW: 2},
            {"customer_id": "A", "email": "e@x.io", b.ROW: 1},
        ),
    )

    assert store.profile("email", "e@x.io")["identities"] == {"customer_id": "A", "email": "e@x.io"}
    assert store.profile("customer_id", "B")["identities"] == {"customer_id": "B"}


def test_resending_the_same_values_changes_nothing(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=1))

    counts = deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=2), partition="p2")

    assert (counts.attributes_set, counts.profiles_updated, counts.profiles_created) == (0, 0, 0)


def test_each_updated_profile_counts_once_per_delivery(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "free"}))

    counts = deliver(
        store,
        mapped({"customer_id": "A", "plan": "pro"}, version=2),
        mapped({"customer_id": "A", "email": "a@x.io", "plan": "team"}, version=3),
        partition="p2",
    )

    assert (counts.profiles_updated, counts.attributes_set) == (1, 2)


# Events


def test_events_are_idempotent(store: ProfileStore) -> None:
    events = mapped(
        {"customer_id": "A", b.EVENT_ID: "e1", b.EVENT_NAME: "login"},
        {"customer_id": "A", b.EVENT_ID: "e2", b.EVENT_NAME: "purchase"},
    )
    first = deliver(store, events)

    again = deliver(store, events)

    assert len(store.profile("customer_id", "A")["events"]) == 2
    assert (first.events_written, again.events_written) == (2, 0)


def test_events_are_shown_newest_first_with_their_data(store: ProfileStore) -> None:
    deliver(
        store,
        mapped(
            {"email": "e@x.io", b.EVENT_ID: "e1", b.EVENT_NAME: "view", b.EVENT_TIMESTAMP_MS: 1000},
            {
                "email": "e@x.io",
                b.EVENT_ID: "e2",
                b.EVENT_NAME: "purchase",
                b.EVENT_TIMESTAMP_MS: 2000,
                b.EVENT_DATA: {"custom_attributes": {"amount": 9.5}},
            },
        ),
    )

    events = store.profile("email", "e@x.io", events_limit=1)["events"]

    assert events == [
        {
            "event_type": "custom_event",
            "event_name": "purchase",
            "timestamp_unixtime_ms": 2000,
            "data": {"custom_attributes": {"amount": 9.5}},
        }
    ]


def test_events_can_carry_attributes(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", b.EVENT_ID: "e1", "last_seen_page": "/pricing"}))

    assert attributes(store, "customer_id", "A") == {"last_seen_page": "/pricing"}


# Environments


def test_environments_are_separate(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}), environment="production")
    deliver(store, mapped({"customer_id": "A", "plan": "test"}), environment="development")

    production = store.profile("customer_id", "A", environment="production")
    development = store.profile("customer_id", "A", environment="development")
    assert production["attributes"] == {"plan": "pro"}
    assert development["attributes"] == {"plan": "test"}
    assert production["profile_id"] != development["profile_id"]
    assert development["environment"] == "development"


# Full mode


def test_unchanged_fingerprints_are_not_applied(store: ProfileStore) -> None:
    rows = [{"customer_id": "A", "plan": "pro"}, {"customer_id": "B", "plan": "free"}]
    deliver(store, mapped(*rows, full=True), partition="run-1")

    counts = deliver(
        store, mapped(rows[0], {"customer_id": "B", "plan": "pro"}, full=True), partition="run-2"
    )

    assert (counts.rows, counts.rows_unchanged, counts.attributes_set) == (2, 1, 1)
    assert attributes(store, "customer_id", "B") == {"plan": "pro"}


def test_skipped_row_applies_once_its_profile_exists(store: ProfileStore) -> None:
    row = {"customer_id": "A", "plan": "pro"}
    deliver(store, mapped(row, full=True), partition="run-1", input_protection="update_only")
    deliver(store, mapped({"customer_id": "A"}), sync="signups")

    counts = deliver(store, mapped(row, full=True), partition="run-2", input_protection="update_only")

    assert counts.rows_unchanged == 0
    assert attributes(store, "customer_id", "A") == {"plan": "pro"}


def test_a_full_mode_row_that_conflicts_is_tried_again_by_the_next_run(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "B", "email": "e@x.io"}), sync="crm")
    row = {"customer_id": "A", "email": "e@x.io", "plan": "pro"}
    deliver(store, mapped(row, full=True), partition="run-1")
    deliver(store, mapped({"customer_id": "B", "email": "b@x.io"}, version=5), sync="crm", partition="p2")

    counts = deliver(store, mapped(row, full=True, version=6), partition="run-2")

    assert (counts.rows_unchanged, counts.identity_conflicts) == (0, 0)
    assert store.profile("email", "e@x.io")["identities"]["customer_id"] == "A"


def test_an_older_full_mode_run_never_replaces_a_newer_runs_fingerprints(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "pro"}, full=True, version=20), partition="run-2")
    deliver(store, mapped({"customer_id": "A", "plan": "free"}, full=True, version=10), partition="run-1")

    counts = deliver(
        store, mapped({"customer_id": "A", "plan": "pro"}, full=True, version=30), partition="run-3"
    )

    assert attributes(store, "customer_id", "A") == {"plan": "pro"}
    assert counts.rows_unchanged == 1


# Rejects and deliveries


def test_mirror_removes_this_syncs_attributes_from_profiles_that_left_the_model(store: ProfileStore) -> None:
    """B leaves: its plan goes (another sync's tier stays, its identities stay); it returns: applied again."""
    both = mapped(
        {"customer_id": "A", "plan": "pro"}, {"customer_id": "B", "plan": "free"}, version=1, full=True
    )
    deliver(store, both, partition="r1", mirror=True)
    deliver(store, mapped({"customer_id": "B", "tier": "gold"}, version=1), sync="billing", partition="b1")

    only_a = mapped({"customer_id": "A", "plan": "pro"}, version=2, full=True)
    counts = deliver(store, only_a, partition="r2", mirror=True)
    assert (counts.rows_unchanged, counts.attributes_removed, counts.profiles_updated) == (1, 1, 1)
    assert attributes(store, "customer_id", "B") == {"tier": "gold"}
    assert attributes(store, "customer_id", "A") == {"plan": "pro"}

    back = deliver(
        store,
        mapped(
            *[{"customer_id": c, "plan": p} for c, p in (("A", "pro"), ("B", "free"))], version=3, full=True
        ),
        partition="r3",
        mirror=True,
    )
    assert (back.rows_unchanged, back.rows_applied) == (1, 1)
    assert attributes(store, "customer_id", "B") == {"plan": "free", "tier": "gold"}


def test_without_mirror_a_profile_that_left_keeps_its_attributes(store: ProfileStore) -> None:
    """The default: a full-mode run only adds and changes."""
    deliver(
        store, mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "B", "plan": "free"}, full=True)
    )
    counts = deliver(store, mapped({"customer_id": "A", "plan": "pro"}, version=2, full=True), partition="r2")
    assert counts.attributes_removed == 0
    assert attributes(store, "customer_id", "B") == {"plan": "free"}


def test_an_older_mirror_run_removes_nothing_a_newer_run_set(store: ProfileStore) -> None:
    """Order-safe: a mirror run of version 1 delivered after a run of version 2 leaves 2's values."""
    deliver(
        store, mapped({"customer_id": "B", "plan": "team"}, version=2, full=True), partition="r2", mirror=True
    )
    counts = deliver(
        store, mapped({"customer_id": "A", "plan": "pro"}, version=1, full=True), partition="r1", mirror=True
    )
    assert counts.attributes_removed == 0
    assert attributes(store, "customer_id", "B") == {"plan": "team"}


def test_rejects_are_replaced_per_partition(store: ProfileStore) -> None:
    for rejects in (rejected((3, "no identity", {"plan": "pro"})), rejected((5, "too long", {"email": "x"}))):
        with store.delivery(
            sync=SYNC, environment="production", partitions=["p1"], input_protection="update_only"
        ) as d:
            d.replace_rejects(rejects)
    with store.delivery(
        sync=SYNC, environment="production", partitions=["p2"], input_protection="update_only"
    ) as d:
        d.replace_rejects(rejected((1, "no identity", {})))

    assert [(r["partition"], r["row_number"], r["reason"], r["row"]) for r in store.rejects(SYNC)] == [
        ("p1", 5, "too long", {"email": "x"}),
        ("p2", 1, "no identity", {}),
    ]
    assert d.counts.rejects == 1
    assert len(store.rejects(SYNC, limit=1)) == 1
    assert store.rejects(SYNC, environment="development") == []


def test_deliveries_are_recorded_once_per_partition(store: ProfileStore) -> None:
    for partition in ("2024-11-16", "2024-11-15", "2024-11-16"):
        deliver(store, mapped({"customer_id": "A"}), partition=partition)

    assert store.delivered_partitions(SYNC, "production") == ["2024-11-15", "2024-11-16"]
    assert store.delivered_partitions(SYNC, "development") == []


def test_a_delivery_of_several_partitions_counts_each_in_its_own(store: ProfileStore) -> None:
    with store.delivery(
        sync=SYNC, environment="production", partitions=["d1", "d2"], input_protection="create_and_update"
    ) as d:
        d.apply_batch(mapped({"customer_id": "A", "plan": "free"}, {"customer_id": "B"}), "d1")
        d.apply_batch(mapped({"customer_id": "A", "plan": "pro", b.ROW: 2}, version=2), "d2")
        d.replace_rejects(rejected((3, "no identity", {})), "d2")

    by_partition = store.partition_counts(SYNC, "production")
    assert {
        key: (c["rows"], c["profiles_created"], c["profiles_updated"]) for key, c in by_partition.items()
    } == {
        "d1": (2, 2, 0),
        "d2": (1, 0, 1),
    }
    assert (by_partition["d1"]["rejects"], by_partition["d2"]["rejects"]) == (0, 1)
    assert (d.counts.rows, d.counts.profiles_created, d.counts.profiles_updated, d.counts.rejects) == (
        3,
        2,
        0,
        1,
    )


def test_delivery_names_a_few_touched_profiles(store: ProfileStore) -> None:
    with store.delivery(
        sync=SYNC, environment="production", partitions=["p1"], input_protection="create_and_update"
    ) as d:
        d.apply_batch(mapped(*({"customer_id": str(n)} for n in range(30))))

    assert len(d.profile_ids_touched) == 20
    assert len(store.profiles_by_id(d.profile_ids_touched)) == 20


def test_failed_delivery_leaves_store_untouched(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "free"}))
    before = store.profile("customer_id", "A")

    with (
        pytest.raises(RuntimeError, match="warehouse went away"),
        store.delivery(
            sync=SYNC, environment="production", partitions=["p2"], input_protection="create_and_update"
        ) as d,
    ):
        d.apply_batch(mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "B"}, version=2))
        d.replace_rejects(rejected((1, "no identity", {})))
        raise RuntimeError("warehouse went away")

    assert store.profile("customer_id", "A") == before
    assert store.profile("customer_id", "B") is None
    assert store.rejects(SYNC) == []
    assert store.delivered_partitions(SYNC, "production") == ["2024-11-15"]


# Concurrency and crashes


def _python(script: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_reader_in_another_process_sees_committed_state_during_a_write(store: ProfileStore) -> None:
    deliver(store, mapped({"customer_id": "A", "plan": "free"}))
    reader = f"""
        from wsync_dagster.store import open_profile_store
        print(open_profile_store({store.url!r}).profile("customer_id", "A")["attributes"]["plan"])
    """

    with store.delivery(
        sync=SYNC, environment="production", partitions=["p2"], input_protection="create_and_update"
    ) as d:
        d.apply_batch(mapped({"customer_id": "A", "plan": "pro"}, version=2))
        # A blocked reader would wait out the 300 s busy timeout, far beyond this one.
        during, _ = _python(reader).communicate(timeout=60)

    after, _ = _python(reader).communicate(timeout=60)
    assert (during.strip(), after.strip()) == ("free", "pro")


def test_killed_writer_leaves_store_consistent(tmp_path: Path) -> None:
    batch = mapped(
        *({"customer_id": f"c{n}", "email": f"{n}@x.io", "plan": "pro", "seats": n} for n in range(5000)),
        full=True,
    )
    batch_path = tmp_path / "batch.arrow"
    with pa.ipc.new_file(batch_path, batch.schema) as writer:
        writer.write_batch(batch)
    killed = tmp_path / "killed" / "profiles.sqlite"
    ProfileStore(killed).close()
    writer_script = f"""
        import time
        import pyarrow as pa
        from wsync_dagster.store import ProfileStore

        import sqlite3

        # A small process-wide page cache: uncommitted pages spill into the WAL before the kill.
        sqlite3.connect(":memory:").execute("PRAGMA soft_heap_limit = 100000")
        store = ProfileStore({str(killed)!r})
        batch = pa.ipc.open_file({str(batch_path)!r}).get_batch(0)
        with store.delivery(sync="crm_users", environment="production", partitions=["p1"],
                            input_protection="create_and_update") as delivery:
            delivery.apply_batch(batch)
            print("applied", flush=True)
            time.sleep(600)
    """
    process = _python(writer_script)
    assert process.stdout.readline().strip() == "applied"
    assert killed.with_name("profiles.sqlite-wal").stat().st_size > 0  # the kill lands mid-write
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)

    with sqlite3.connect(killed) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with ProfileStore(killed) as store, ProfileStore(tmp_path / "clean" / "profiles.sqlite") as clean:
        assert store.profile("customer_id", "c1") is None
        assert store.delivered_partitions(SYNC, "production") == []
        assert deliver(store, batch, partition="p1") == deliver(clean, batch, partition="p1")
        assert [store.profile("customer_id", f"c{n}") for n in range(0, 5000, 499)] == [
            clean.profile("customer_id", f"c{n}") for n in range(0, 5000, 499)
        ]


# Opening


def test_open_profile_store_creates_parent_folders(tmp_path: Path) -> None:
    store = open_profile_store(f"sqlite:///{tmp_path}/state/nested/profiles.sqlite")

    store.close()
    assert (tmp_path / "state" / "nested" / "profiles.sqlite").exists()


def test_open_profile_store_names_only_the_scheme_of_an_unsupported_url() -> None:
    with pytest.raises(ValueError, match="'mysql'") as error:
        open_profile_store("mysql://wsync:s3cret@db.internal/profiles")

    assert "s3cret" not in str(error.value)
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        open_profile_store("profiles.sqlite")


# Order safety, as a property: any order of partitions and re-runs ends where an in-order replay does


def _random_history(rng: random.Random) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(sync, partition, rows) of one or two syncs; versions distinct across syncs, ascending in a partition;
    deletes and e-mail changes mixed in, as a cdc range of several changes per customer has them."""
    syncs = ["crm"] if rng.random() < 0.4 else ["crm", "billing"]
    history = []
    for parity, sync in enumerate(syncs):
        for partition in range(rng.randint(1, 4)):
            rows, version = [], partition * 1000
            for _ in range(rng.randint(1, 5)):
                version += rng.randint(0, 3) * 2  # equal versions in a partition tie on the later row
                customer = rng.choice("AB")
                row: dict[str, Any] = {"customer_id": customer, b.VERSION: version + parity}
                if rng.random() < 0.7:  # each customer changes between e-mails of its own
                    row["email"] = f"{customer.lower()}{rng.randint(1, 3)}@x.io"
                if rng.random() < 0.2:  # a cdc delete: this sync's attributes go, no identity moves
                    row.update({b.DELETE: True, "plan": None, "seats": None})
                else:
                    row["plan"] = rng.choice([None, "free", "pro", "team"])
                    row["seats"] = rng.choice([None, 1, 5])
                rows.append(row)
            history.append((sync, f"p{partition}", rows))
    return history


def _first_deliveries(
    rng: random.Random, history: list[tuple[str, str, list[dict[str, Any]]]]
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Partitions in any order; but a delete changes only a profile that exists, so where there are
    deletes each sync's ranges are first delivered in order (as cdc runs them), syncs interleaved."""
    if not any(b.DELETE in row for _, _, rows in history for row in rows):
        return rng.sample(history, len(history))
    queues = {sync: [entry for entry in history if entry[0] == sync] for sync, _, _ in history}
    order = [sync for sync, queue in queues.items() for _ in queue]
    rng.shuffle(order)
    return [queues[sync].pop(0) for sync in order]


def _customers(store: ProfileStore) -> dict[str, Any]:
    found = {c: store.profile("customer_id", c) for c in "AB"}
    return {c: p and (p["identities"], p["attributes"]) for c, p in found.items()}


# PostgreSQL takes a round trip per statement: fewer seeds there, the same rules.
@pytest.mark.parametrize(
    ("backend", "seed"),
    [("sqlite", seed) for seed in range(300)] + [("postgresql", seed) for seed in range(25)],
)
def test_any_partition_order_gives_the_profiles_of_an_in_order_replay(
    backend: str, seed: int, make_store: Callable[..., ProfileStore]
) -> None:
    rng = random.Random(seed)
    history = _random_history(rng)
    in_order = sorted(
        ((sync, row) for sync, _, rows in history for row in rows), key=lambda entry: entry[1][b.VERSION]
    )
    shuffled = _first_deliveries(rng, history) + rng.sample(history, rng.randint(0, len(history)))

    with make_store("replay", backend) as replay, make_store("any", backend) as store:
        for n, (sync, row) in enumerate(in_order):
            deliver(replay, mapped(row), sync=sync, partition=f"r{n}")
        for sync, partition, rows in shuffled:
            deliver(store, mapped(*rows), sync=sync, partition=partition)

        assert _customers(store) == _customers(replay), f"seed {seed}: {shuffled}"


# Upgrading


V1_SCHEMA = """
CREATE TABLE profiles (profile_id TEXT PRIMARY KEY, environment TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE identities (environment TEXT NOT NULL, identity_type TEXT NOT NULL, value TEXT NOT NULL,
    profile_id TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (environment, identity_type, value))
    WITHOUT ROWID;
CREATE UNIQUE INDEX identities_one_per_type ON identities (profile_id, identity_type);
CREATE TABLE attributes (profile_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT, sync TEXT NOT NULL,
    version INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (profile_id, name)) WITHOUT ROWID;
CREATE TABLE events (environment TEXT NOT NULL, event_id TEXT NOT NULL, profile_id TEXT NOT NULL,
    sync TEXT NOT NULL, event_type TEXT, event_name TEXT, timestamp_ms INTEGER, data TEXT,
    PRIMARY KEY (environment, event_id));
CREATE INDEX events_by_profile ON events (profile_id, timestamp_ms);
CREATE TABLE fingerprints (sync TEXT NOT NULL, environment TEXT NOT NULL, row_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (sync, environment, row_key))
    WITHOUT ROWID;
CREATE TABLE rejects (sync TEXT NOT NULL, environment TEXT NOT NULL, partition_key TEXT NOT NULL,
    row_number INTEGER, reason TEXT NOT NULL, row TEXT, created_at TEXT NOT NULL);
CREATE TABLE deliveries (sync TEXT NOT NULL, environment TEXT NOT NULL, partition_key TEXT NOT NULL,
    window_start INTEGER, window_end INTEGER, counts TEXT NOT NULL, delivered_at TEXT NOT NULL,
    PRIMARY KEY (sync, environment, partition_key));
INSERT INTO profiles VALUES ('p1', 'production', 't');
INSERT INTO identities VALUES ('production', 'customer_id', 'A', 'p1', 't');
INSERT INTO attributes VALUES ('p1', 'plan', '"pro"', 'crm_users', 10, 't');
INSERT INTO events VALUES ('production', 'e1', 'p1', 'web', 'custom_event', 'login', 1000, '{}');
INSERT INTO deliveries VALUES ('crm_users', 'production', '2024-11-15', NULL, NULL, '{}', 't');
PRAGMA user_version = 1;
"""


def test_a_store_of_the_first_release_is_upgraded_without_losing_anything(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)

    with ProfileStore(path) as store:
        before = store.profile("customer_id", "A")
        counts = deliver(store, mapped({"customer_id": "A", "plan": "team"}, version=5), sync="billing")
        after = store.profile("customer_id", "A")

    assert (before["attributes"], [e["event_name"] for e in before["events"]]) == ({"plan": "pro"}, ["login"])
    assert after["attributes"] == {"plan": "pro"}  # the older billing value does not win
    assert counts.attributes_set == 0


# Deletes (cdc)


def deletes(*rows: dict[str, Any], version: int) -> pa.RecordBatch:
    """A cdc batch whose rows are all deletes: identities, and NULL for each attribute."""
    batch = mapped(*rows, version=version)
    return batch.append_column(b.DELETE, pa.array([True] * batch.num_rows, pa.bool_()))


def test_a_delete_removes_what_this_sync_set_on_a_profile_that_exists_and_creates_nothing(store) -> None:
    """A delete finds its profile by its identities; one that finds none is skipped; no identity moves."""
    deliver(store, mapped({"customer_id": "C1", "email": "a@x.io", "plan": "pro"}, version=1))
    deliver(store, mapped({"customer_id": "C1", "tier": "gold"}, version=1), sync="crm_tiers")
    counts = deliver(
        store,
        deletes(
            {"customer_id": "C1", "email": "new@x.io", "plan": None},  # an e-mail the profile does not hold
            {"customer_id": "C9", "email": "ghost@x.io", "plan": None},
            version=2,
        ),
    )
    assert (counts.rows_applied, counts.rows_skipped, counts.profiles_skipped) == (1, 1, 1)
    assert (counts.profiles_created, counts.attributes_removed, counts.identities_changed) == (0, 1, 0)
    profile = store.profile("customer_id", "C1")
    assert profile is not None
    assert profile["identities"] == {"customer_id": "C1", "email": "a@x.io"}
    assert profile["attributes"] == {"tier": "gold"}
    assert store.profile("customer_id", "C9") is None and store.profile("email", "ghost@x.io") is None
    assert store.profile("email", "new@x.io") is None

    # Order-safe: an older row does not undo the delete; a newer one brings the value back.
    deliver(store, mapped({"customer_id": "C1", "plan": "free"}, version=1))
    assert attributes(store, "customer_id", "C1") == {"tier": "gold"}
    deliver(store, mapped({"customer_id": "C1", "plan": "team"}, version=3))
    assert attributes(store, "customer_id", "C1") == {"plan": "team", "tier": "gold"}


def test_a_delete_of_an_unknown_customer_sharing_an_email_leaves_the_known_customer(store) -> None:
    """The highest-priority identity decides: C9 is no one the store holds, whatever e-mail it shares."""
    deliver(store, mapped({"customer_id": "C1", "email": "shared@x.io", "plan": "pro"}, version=1))

    counts = deliver(store, deletes({"customer_id": "C9", "email": "shared@x.io", "plan": None}, version=2))

    assert (counts.rows_skipped, counts.attributes_removed, counts.profiles_created) == (1, 0, 0)
    assert attributes(store, "customer_id", "C1") == {"plan": "pro"}
    assert store.profile("customer_id", "C9") is None


def test_a_delete_whose_identities_belong_to_two_profiles_is_a_conflict_not_a_removal(store) -> None:
    deliver(
        store,
        mapped(
            {"customer_id": "C1", "email": "a@x.io", "plan": "pro"},
            {"customer_id": "C2", "email": "b@x.io", "plan": "free"},
        ),
    )

    counts = deliver(store, deletes({"customer_id": "C1", "email": "b@x.io", "plan": None}, version=2))

    assert (counts.identity_conflicts, counts.rows_applied, counts.attributes_removed) == (1, 0, 0)
    assert attributes(store, "customer_id", "C1") == {"plan": "pro"}
    assert attributes(store, "customer_id", "C2") == {"plan": "free"}
    [conflict] = store.rejects(SYNC)
    assert conflict["kind"] == "conflict"
    assert conflict["reason"] == (
        "identity conflict: email=b@x.io belongs to customer_id=C2; nothing was removed from customer_id=C1"
    )


INSERT_DELETE_REINSERT = [
    {"customer_id": "C1", "email": "a@x.io", "plan": "free", b.VERSION: 1},
    {"customer_id": "C1", "email": "a@x.io", "plan": None, b.DELETE: True, b.VERSION: 2},
    {"customer_id": "C1", "email": "b@x.io", "plan": "pro", b.VERSION: 3},
]


@pytest.mark.parametrize("changes", [2, 3])
@pytest.mark.parametrize("cuts", [(), (1,), (2,), (1, 2)])
def test_inserts_and_deletes_of_one_customer_apply_in_change_order_whatever_the_batch_boundaries(
    store: ProfileStore, changes: int, cuts: tuple[int, ...]
) -> None:
    """Insert, delete (and re-insert with a new e-mail): the profile ends as the last change leaves it."""
    rows = [dict(row, **{b.ROW: n}) for n, row in enumerate(INSERT_DELETE_REINSERT[:changes])]
    bounds = [0, *(cut for cut in cuts if cut < changes), changes]
    batches = [mapped(*rows[start:end]) for start, end in itertools.pairwise(bounds)]

    deliver(store, *batches)

    profile = store.profile("customer_id", "C1")
    assert profile is not None
    expected = {"plan": "pro"} if changes == 3 else {}
    assert (profile["identities"]["email"], profile["attributes"]) == (
        "b@x.io" if changes == 3 else "a@x.io",
        expected,
    )


def test_a_sqlite_insert_keeps_a_column_of_one_value_exactly(tmp_path: Path) -> None:
    """A column holding one value on every row is written into the SQLite insert once, as a literal:
    quotes, a NUL, an empty text, SQL-looking text and integers come back as they went in."""
    from wsync_dagster.store.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "profiles.sqlite")
    texts = ["it's 'now'", "a\x00b", "", "x'); DROP TABLE profiles; --"]
    try:
        backend.begin_delivery()
        for index, text in enumerate(texts):
            ids = [f"p{index}-{i}" for i in range(3)]
            backend.insert(
                "profiles", pa.table({"profile_id": ids, "environment": [text] * 3, "created_at": [text] * 3})
            )
        backend.insert(
            "events",
            pa.table(
                {
                    "environment": ["production"] * 3,
                    "sync": ["s"] * 3,
                    "event_id": ["e1", "e2", "e3"],
                    "profile_id": ["p0-0"] * 3,
                    "timestamp_ms": pa.array([-7] * 3, pa.int64()),
                    "seq": pa.array([2**62] * 3, pa.int64()),
                }
            ),
        )
        backend.commit()
        profiles = backend.rows(
            "SELECT profile_id, environment, created_at FROM profiles ORDER BY profile_id"
        )
        events = backend.rows("SELECT event_id, timestamp_ms, seq FROM events ORDER BY event_id")
    finally:
        backend.close()
    assert profiles == [(f"p{index}-{i}", text, text) for index, text in enumerate(texts) for i in range(3)]
    assert events == [("e1", -7, 2**62), ("e2", -7, 2**62), ("e3", -7, 2**62)]
