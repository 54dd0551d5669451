"""A full-mode re-run on a DuckDB warehouse maps only the rows the store does not hold unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
from dagster import DagsterInstance

from wsync_dagster.runner import run_sync
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store

SEGMENTS_SQL = """
CREATE SCHEMA marts;
CREATE TABLE marts.segments (customer_id VARCHAR, email VARCHAR, segment VARCHAR);
INSERT INTO marts.segments VALUES
    ('C001', 'ada@example.com', 'vip'),
    (NULL, NULL, 'orphan'),
    ('C002', 'bob@example.com', 'new'),
    ('C003', 'cy@example.com', 'new');
"""


def _full_sync(warehouse, **sync) -> dict:
    return {
        "name": "segments",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, segment FROM marts.segments"},
        "sync": {"mode": "full", **sync},
    }


def _runs(warehouse, write_sync, *changes: str, **sync) -> list[dict]:
    """A first run, then one more after each change to the warehouse: each run's mapped and delivered counts."""
    spec = load_sync_file(write_sync(_full_sync(warehouse, **sync)))
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    reports = []
    try:
        for day, change in enumerate((None, *changes), start=1):
            if change is not None:
                with duckdb.connect(str(warehouse)) as connection:
                    connection.execute(change)
            reports.append(run_sync(spec, store, instance, now=datetime(2024, 5, day, tzinfo=UTC)).metadata)
    finally:
        store.close()
    return reports


def _profile(customer_id: str) -> dict | None:
    store = open_profile_store(profile_store_url())
    try:
        return store.profile("customer_id", customer_id)
    finally:
        store.close()


def test_a_re_run_maps_only_the_changed_row_and_counts_the_others_unchanged(make_warehouse, write_sync):
    warehouse = make_warehouse(SEGMENTS_SQL)
    _, second = _runs(
        warehouse, write_sync, "UPDATE marts.segments SET segment = 'churned' WHERE customer_id = 'C002'"
    )
    mapped, delivered = second["segments/mapped_batches"], second["segments/delivery"]
    # The row without an identity is read again and rejected again; the two unchanged rows are not mapped.
    assert (mapped["rows_read"], mapped["rows_mapped"], mapped["rows_rejected"]) == (4, 1, 1)
    assert (delivered["rows"], delivered["rows_unchanged"], delivered["attributes_set"]) == (3, 2, 1)
    assert _profile("C002")["attributes"]["segment"] == "churned"
    assert _profile("C001")["attributes"]["segment"] == "vip"


def test_a_re_run_keeps_the_rejected_rows_place_in_the_read(make_warehouse, write_sync):
    warehouse = make_warehouse(SEGMENTS_SQL)
    _runs(warehouse, write_sync, "UPDATE marts.segments SET segment = 'churned' WHERE customer_id = 'C003'")
    store = open_profile_store(profile_store_url())
    try:
        rejects = store.rejects("segments")
    finally:
        store.close()
    # Each run's partition keeps its own rejects: the second run's row is where the first run's was.
    assert [(reject["partition"], reject["row_number"], reject["row"]["segment"]) for reject in rejects] == [
        ("20240501T000000", 1, "orphan"),
        ("20240502T000000", 1, "orphan"),
    ]


def test_rows_sharing_an_identity_are_mapped_again_with_the_one_that_changed(make_warehouse, write_sync):
    """Two rows of one e-mail under two customer ids: the unchanged one is read out with its changed
    partner, so they are settled together as a first run over the new table settles them."""
    warehouse = make_warehouse(SEGMENTS_SQL)
    _, second, third = _runs(
        warehouse,
        write_sync,
        "INSERT INTO marts.segments VALUES ('C004', 'ada@example.com', 'aaa')",
        "UPDATE marts.segments SET segment = 'abc' WHERE customer_id = 'C004'",
    )
    assert second["segments/mapped_batches"]["rows_mapped"] == 2
    assert third["segments/mapped_batches"]["rows_mapped"] == 2
    assert _profile("C001")["attributes"]["segment"] == "vip"


CLEAN_SQL = """
CREATE SCHEMA marts;
CREATE TABLE marts.segments (customer_id VARCHAR, email VARCHAR, segment VARCHAR);
INSERT INTO marts.segments VALUES
    ('C001', 'ada@example.com', 'vip'), ('C002', 'bob@example.com', 'new'), ('C003', 'cy@example.com', 'new');
"""


def test_a_re_run_with_nothing_changed_maps_no_row_and_counts_every_row_unchanged(make_warehouse, write_sync):
    warehouse = make_warehouse(CLEAN_SQL)
    _, second = _runs(warehouse, write_sync, "SELECT 1")
    mapped, delivered = second["segments/mapped_batches"], second["segments/delivery"]
    assert (mapped["rows_read"], mapped["rows_mapped"], mapped["rows_rejected"]) == (3, 0, 0)
    assert (delivered["rows"], delivered["rows_unchanged"], delivered["profiles_updated"]) == (3, 3, 0)
    assert _profile("C002")["attributes"]["segment"] == "new"


def test_an_older_stores_fingerprints_make_one_run_apply_every_row_again_changing_nothing(
    make_warehouse, write_sync
):
    """Fingerprints were the md5 of a row's JSON before they were DuckDB's 64-bit hash: a store written then
    matches no row once, so that run applies every row again, which changes no profile; the next maps none."""
    warehouse = make_warehouse(CLEAN_SQL)
    spec = load_sync_file(write_sync(_full_sync(warehouse)))
    store = open_profile_store(profile_store_url())
    instance = DagsterInstance.ephemeral()
    try:
        run_sync(spec, store, instance, now=datetime(2024, 5, 1, tzinfo=UTC))
        store._db.begin_write()
        store._db.execute("UPDATE fingerprints SET fingerprint = row_key")  # 32 hex digits, as an md5
        store._db.commit()
        again, after = (
            run_sync(spec, store, instance, now=datetime(2024, 5, day, tzinfo=UTC)).metadata for day in (2, 3)
        )
    finally:
        store.close()
    assert again["segments/mapped_batches"]["rows_mapped"] == 3
    delivered = again["segments/delivery"]
    assert (delivered["rows_applied"], delivered["attributes_set"], delivered["profiles_updated"]) == (
        3,
        0,
        0,
    )
    assert after["segments/mapped_batches"]["rows_mapped"] == 0
    assert _profile("C001")["attributes"]["segment"] == "vip"


def test_a_mirror_re_run_reads_every_row_and_still_removes_a_departed_customer(make_warehouse, write_sync):
    warehouse = make_warehouse(SEGMENTS_SQL)
    _, second = _runs(
        warehouse, write_sync, "DELETE FROM marts.segments WHERE customer_id = 'C003'", mirror=True
    )
    assert second["segments/mapped_batches"]["rows_mapped"] == 2
    assert second["segments/delivery"]["rows_unchanged"] == 2
    assert _profile("C003")["attributes"] == {}
