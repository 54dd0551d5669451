"""Issue 16 item 5: `wsync erase` removes a person from the store and keeps their rows out."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pyarrow.parquet as pq
import pytest

from wsync_dagster.batches import BatchFile
from wsync_dagster.cli import main
from wsync_dagster.mapped_batches import map_partition
from wsync_dagster.settings import batches_dir, profile_store_url, syncs_dir
from wsync_dagster.spec import load_sync_folder
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import STORE_BACKENDS, pg_store_url, store_sql, user_sync

ADA = "ada@example.com"
# Ada has a profile (C001) and a second row that is rejected (NaN score) but holds her e-mail;
# Bob and Cy are everyone else.
USERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, first_name VARCHAR, score DOUBLE, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'Ada', 1.0, TIMESTAMP '2024-01-01 10:15:00'),
    ('C002', 'bob@example.com', 'Bob', 2.0, TIMESTAMP '2024-01-01 11:30:00'),
    ('C009', 'ada@example.com', 'Ada', 'NaN'::DOUBLE, TIMESTAMP '2024-01-01 12:00:00'),
    ('C003', NULL, 'Cy', 3.0, TIMESTAMP '2024-01-01 13:00:00');
"""
DAY = "2024-01-01"


def _sync(warehouse: Path) -> dict:
    """The users sync over this warehouse; its one rejected row in four is expected."""
    sync = user_sync(warehouse, checks={"max_reject_rate": 0.5})
    sync["data_model"]["sql"] = "SELECT customer_id, email, first_name, score, updated_at FROM crm.users"
    return sync


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest, wsync_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's profile store on each backend: the default SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "postgresql":
        monkeypatch.setenv("WSYNC_PROFILE_STORE", pg_store_url(request.getfixturevalue("pg_store_database")))
    return request.param


@pytest.fixture
def synced(backend: str, make_warehouse, write_sync) -> Path:
    """The users sync written and its day delivered; returns the warehouse."""
    warehouse = make_warehouse(USERS_SQL)
    write_sync(_sync(warehouse))
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    return warehouse


def _rejects(capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["rejects", "crm_users", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_erase_leaves_no_profile_and_no_reject_of_the_person(synced, capsys):
    assert any(ADA in json.dumps(reject) for reject in _rejects(capsys))
    assert main(["erase", "--identity", f"email={ADA}"]) == 0
    out = capsys.readouterr().out
    assert f"email={ADA} (production): erased its profile; 2 identities suppressed" in out
    assert "removed 1 profile, 2 identities, 2 attribute values, 0 events, 1 stored reject, 0 rows of" in out
    assert "C001" not in out  # the other identities are counted, never shown
    assert main(["profile", "--identity", f"email={ADA}"]) == 1
    assert main(["profile", "--identity", "customer_id=C001"]) == 1
    assert not any(ADA in json.dumps(reject) for reject in _rejects(capsys))
    assert main(["profile", "--identity", "customer_id=C002"]) == 0


def test_a_resync_rejects_the_erased_persons_rows_and_keeps_everyone_else(synced, capsys):
    assert main(["erase", "--identity", "customer_id=C001"]) == 0
    capsys.readouterr()
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    assert "rows_suppressed=1" in capsys.readouterr().out
    erased = [r for r in _rejects(capsys) if r["reason"] == f"erased on {_today()}"]
    # Her mapped row and her rejected row (NaN score): their numbers, none of their values.
    assert sorted((r["row_number"], r["row"]) for r in erased) == [(0, None), (2, None)]
    assert main(["profile", "--identity", f"email={ADA}"]) == 1
    assert main(["profile", "--identity", "customer_id=C001"]) == 1
    assert main(["profile", "--identity", "customer_id=C002"]) == 0
    assert main(["profile", "--identity", "customer_id=C003"]) == 0


EVENTS_SQL = """
CREATE SCHEMA web;
CREATE TABLE web.logins (id INTEGER, customer_id VARCHAR, seen_at TIMESTAMP);
INSERT INTO web.logins SELECT i, CASE WHEN i <= 5 THEN 'C001' ELSE 'C002' END,
    TIMESTAMP '2024-01-01 00:00:00' + i * INTERVAL 1 MINUTE FROM range(1, 9) AS r(i);
"""


def test_erase_removes_the_persons_events_and_a_resync_of_events_skips_them(
    synced, make_warehouse, write_sync, capsys
):
    logins = {
        "name": "logins",
        "data_type": "event",
        "connection": {"type": "duckdb", "path": str(make_warehouse(EVENTS_SQL, name="events.duckdb"))},
        "data_model": {"sql": "SELECT id, customer_id, seen_at FROM web.logins"},
        "mapping": [
            {"type": "column", "column": "id", "field": "events.data.source_message_id"},
            {"type": "static", "value": "login", "field": "events.data.event_name"},
            {"type": "column", "column": "seen_at", "field": "events.data.timestamp_unixtime_ms"},
        ],
        "sync": {"mode": "incremental", "iterator": "seen_at", "iterator_type": "timestamp",
                 "historical_start": DAY},
    }
    write_sync(logins)
    assert main(["run", "logins", "--partition", DAY]) == 0
    capsys.readouterr()
    assert main(["erase", "--identity", "customer_id=C001"]) == 0
    assert ", 5 events," in capsys.readouterr().out
    assert main(["run", "logins", "--partition", DAY]) == 0
    out = capsys.readouterr().out
    assert "rows_suppressed=5" in out and "events_written=0" in out and "events_duplicate=3" in out
    assert main(["profile", "--identity", "customer_id=C002", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["events"]) == 3


def test_undo_then_resync_brings_the_person_back(synced, capsys):
    assert main(["erase", "--identity", f"email={ADA}"]) == 0
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    capsys.readouterr()
    assert main(["erase", "--undo", "--identity", f"email={ADA}"]) == 0
    assert f"email={ADA} (production): lifted the suppression of 2 identities" in capsys.readouterr().out
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    assert "rows_suppressed=0" in capsys.readouterr().out
    assert main(["profile", "--identity", "customer_id=C001", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["identities"] == {"customer_id": "C001", "email": ADA}
    assert profile["attributes"]["first_name"] == "Ada"
    assert not [r for r in _rejects(capsys) if r["reason"].startswith("erased on")]


def test_undo_then_a_full_mode_run_brings_the_person_back(backend, make_warehouse, write_sync, capsys):
    """Erasure drops the fingerprints of the syncs that wrote the person, so their unchanged row is applied."""
    sync = _sync(make_warehouse(USERS_SQL))
    sync["sync"] = {"mode": "full"}
    write_sync(sync)
    assert main(["run", "crm_users"]) == 0
    assert main(["erase", "--identity", f"email={ADA}"]) == 0
    assert main(["run", "crm_users"]) == 0
    assert main(["erase", "--undo", "--identity", f"email={ADA}"]) == 0
    capsys.readouterr()
    assert main(["run", "crm_users"]) == 0
    out = capsys.readouterr().out
    assert "rows_suppressed=0" in out and "profiles_created=1" in out and "rows_unchanged=2" in out
    assert main(["profile", "--identity", "customer_id=C001"]) == 0


def test_undo_of_an_identity_never_erased_lifts_nothing(synced, capsys):
    assert main(["erase", "--undo", "--identity", "email=nobody@example.com"]) == 0
    assert "email=nobody@example.com (production): was not suppressed" in capsys.readouterr().out


def test_erase_file_removes_several_people_and_suppresses_one_it_never_held(synced, tmp_path, capsys):
    requests = tmp_path / "dsr.txt"
    requests.write_text(f"email={ADA}\n\ncustomer_id=C002\nemail=nobody@example.com\n")
    assert main(["erase", "--file", str(requests)]) == 0
    out = capsys.readouterr().out
    assert "customer_id=C002 (production): erased its profile; 2 identities suppressed" in out
    assert "email=nobody@example.com (production): no profile holds it; suppressed all the same" in out
    assert "removed 2 profiles, 4 identities" in out and "; 5 identities suppressed" in out
    for identity in (f"email={ADA}", "customer_id=C002"):
        assert main(["profile", "--identity", identity]) == 1
    assert main(["profile", "--identity", "customer_id=C003"]) == 0


def test_a_person_erased_before_the_store_held_them_is_never_delivered(backend, make_warehouse, write_sync, capsys):
    write_sync(_sync(make_warehouse(USERS_SQL)))
    assert main(["erase", "--identity", "customer_id=C003"]) == 0
    assert "customer_id=C003 (production): no profile holds it; suppressed all the same" in capsys.readouterr().out
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    assert "rows_suppressed=1" in capsys.readouterr().out
    assert main(["profile", "--identity", "customer_id=C003"]) == 1
    assert main(["profile", "--identity", "customer_id=C002"]) == 0


def test_erase_file_with_a_bad_line_names_it_and_erases_nobody(synced, tmp_path, capsys):
    requests = tmp_path / "dsr.txt"
    requests.write_text(f"email={ADA}\nshoe_size=42\n")
    assert main(["erase", "--file", str(requests)]) == 1
    assert f"wsync erase: {requests} line 2: unknown identity type 'shoe_size'" in capsys.readouterr().err
    assert main(["profile", "--identity", f"email={ADA}"]) == 0


def test_erase_removes_the_person_from_undelivered_batch_files(synced, capsys):
    spec = load_sync_folder(syncs_dir()).specs[0]
    batch_file = BatchFile(batches_dir(spec.name, spec.sync.environment), "undelivered")
    map_partition(spec, None, batch_file)
    assert ADA.encode() in batch_file.mapped_path.read_bytes() + batch_file.rejects_path.read_bytes()
    assert main(["erase", "--identity", "customer_id=C001"]) == 0
    assert "2 rows of undelivered batch files" in capsys.readouterr().out
    mapped = pq.read_table(batch_file.mapped_path).to_pylist()
    assert sorted(row["identity.customer_id"] for row in mapped) == ["C002", "C003"]
    assert pq.read_table(batch_file.rejects_path).num_rows == 0


def test_an_erased_email_is_absent_from_the_sqlite_file_and_its_wal(make_warehouse, write_sync, tmp_path):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(_sync(warehouse))
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    assert main(["run", "crm_users", "--partition", DAY]) == 0  # a re-delivery: rejects replaced
    store = Path(profile_store_url().removeprefix("sqlite:///"))
    wal = store.with_name(f"{store.name}-wal")
    # Another process keeps the store open (the webserver, a waiting run): the WAL is not removed on close.
    reader = sqlite3.connect(store)
    try:
        assert reader.execute("SELECT COUNT(*) FROM identities").fetchone() == (5,)
        assert main(["run", "crm_users", "--partition", DAY]) == 0
        assert ADA.encode() in store.read_bytes() + wal.read_bytes()
        assert main(["erase", "--identity", f"email={ADA}"]) == 0
        assert ADA.encode() not in store.read_bytes()
        assert ADA.encode() not in wal.read_bytes()
    finally:
        reader.close()
    assert main(["profile", "--identity", "customer_id=C002"]) == 0


def test_an_erased_person_is_in_no_table_of_the_postgresql_store(
    pg_store_database, make_warehouse, write_sync, monkeypatch
):
    url = pg_store_url(pg_store_database)
    monkeypatch.setenv("WSYNC_PROFILE_STORE", url)
    write_sync(_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    assert main(["run", "crm_users", "--partition", DAY]) == 0
    schema = url.rsplit("%3D", 1)[1]

    def every_table_as_text() -> str:
        with psycopg2.connect(pg_store_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
            text = ""
            for (table,) in cur.fetchall():
                cur.execute(f"SELECT t::text FROM {schema}.{table} AS t")
                text += "\n".join(row for (row,) in cur.fetchall())
        conn.close()
        return text

    before = every_table_as_text()
    assert ADA in before and "C001" in before
    assert main(["erase", "--identity", f"email={ADA}"]) == 0
    after = every_table_as_text()
    assert ADA not in after and "C001" not in after and '"Ada"' not in after
    assert "C002" in after


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_a_store_made_before_erasure_is_upgraded_in_place(backend, make_store, tmp_path):
    store = make_store()
    url = store.url
    store.close()
    # Back to schema version 2: the erasure tables and what version 3 added (explain) gone, the version said.
    version = "PRAGMA user_version = 2" if backend == "sqlite" else "UPDATE wsync_schema SET version = 2"
    later = [f"ALTER TABLE attributes DROP COLUMN {column}" for column in ("partition_key", "run_id")]
    later += ["ALTER TABLE events DROP COLUMN seq"] + [
        f"DROP TABLE {table}" for table in ("forward_pending", "forwarded", "erasure_pending")  # version 5
    ]
    store_sql(url, "DROP TABLE suppressions", "DROP TABLE erasure_salt", "DROP TABLE attribute_history", *later, version)
    with open_profile_store(url) as upgraded:
        erased = upgraded.erase([("email", ADA)], "production")
        assert erased.suppressed == 1 and erased.found == {("email", ADA): 0}


def test_an_erasure_on_postgresql_waits_for_a_running_delivery_and_removes_what_it_wrote(pg_store_database):
    """Deliveries hold the erasure lock shared: an erasure never misses a person a delivery is writing."""
    from wsync_dagster_tests.test_profile_store import mapped

    url = pg_store_url(pg_store_database)
    delivering, erasing = open_profile_store(url), open_profile_store(url)
    outcome: dict = {}
    try:
        with delivering.delivery(
            sync="crm_users", environment="production", partitions=[DAY], input_protection="create_and_update"
        ) as delivery:
            delivery.apply_batch(mapped({"customer_id": "C001", "email": ADA, "plan": "pro"}))
            worker = threading.Thread(
                target=lambda: outcome.update(erased=erasing.erase([("email", ADA)], "production"))
            )
            worker.start()
            _wait_until_waiting_for_a_lock(pg_store_database, worker)
            assert worker.is_alive()
        worker.join()
        assert outcome["erased"].profiles == 1
        assert delivering.profile("customer_id", "C001") is None
    finally:
        delivering.close()
        erasing.close()


def _wait_until_waiting_for_a_lock(database_url: str, worker: threading.Thread) -> None:
    """Until a wsync connection waits for an advisory lock (the erasure, behind the delivery), or the
    worker has ended without waiting."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = 'wsync'"
            )
            if cur.fetchone()[0] or not worker.is_alive():
                break
            conn.commit()
    conn.close()
