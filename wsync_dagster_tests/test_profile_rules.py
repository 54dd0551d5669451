"""SPEC §2 profile semantics, driven as a user would: sync files, `wsync run`, Dagster runs, `wsync profile`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from wsync_dagster.cli import main
from wsync_dagster.runner import run_sync
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import user_sync
from wsync_dagster_tests.test_backfill import HISTORY_SQL

CRM_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES ('C1', 'old@example.com', 'free', TIMESTAMP '2024-01-01 10:00:00');
"""


def _profile_json(capsys, identity: str) -> dict | None:
    capsys.readouterr()
    code = main(["profile", "--identity", identity, "--json"])
    out = capsys.readouterr().out
    return json.loads(out) if code == 0 else None


def _full_crm(warehouse) -> dict:
    return {
        "name": "crm_users",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, plan FROM crm.users"},
        "sync": {"mode": "full"},
    }


def test_a_customer_who_changed_email_is_found_by_the_new_one(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(CRM_SQL)
    write_sync(_full_crm(warehouse))
    assert main(["run", "crm_users", "--partition", "20240101T000000"]) == 0
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("UPDATE crm.users SET email = 'new@example.com'")

    assert main(["run", "crm_users", "--partition", "20240102T000000"]) == 0

    out = capsys.readouterr().out
    assert "identities_changed=1" in out
    assert _profile_json(capsys, "email=new@example.com")["identities"] == {
        "customer_id": "C1",
        "email": "new@example.com",
    }
    assert _profile_json(capsys, "email=old@example.com") is None


def test_a_backfill_of_an_old_partition_never_puts_back_a_replaced_email(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(
        CRM_SQL
        + "INSERT INTO crm.users VALUES ('C1', 'new@example.com', 'pro', TIMESTAMP '2024-01-03 10:00:00');"
    )
    write_sync(
        user_sync(warehouse, data_model={"sql": "SELECT customer_id, email, plan, updated_at FROM crm.users"})
    )
    assert main(["run", "crm_users", "--partition", "2024-01-03"]) == 0

    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0

    capsys.readouterr()
    profile = _profile_json(capsys, "customer_id=C1")
    assert profile["identities"]["email"] == "new@example.com"
    assert profile["attributes"] == {"plan": "pro"}
    assert _profile_json(capsys, "email=old@example.com") is None


BILLING_SQL = """
CREATE SCHEMA billing;
CREATE TABLE billing.accounts (customer_id VARCHAR, plan VARCHAR, changed_at TIMESTAMP);
INSERT INTO billing.accounts VALUES ('C1', 'enterprise', TIMESTAMP '2024-01-02 09:00:00');
"""


def _two_syncs(make_warehouse, write_sync):
    crm = make_warehouse(
        CRM_SQL
        + "INSERT INTO crm.users VALUES ('C1', 'old@example.com', 'team', TIMESTAMP '2024-01-03 08:00:00');"
    )
    billing = make_warehouse(BILLING_SQL, name="finance.duckdb")
    crm_spec = load_sync_file(
        write_sync(user_sync(crm, data_model={"sql": "SELECT customer_id, plan, updated_at FROM crm.users"}))
    )
    billing_spec = load_sync_file(
        write_sync(
            user_sync(
                billing,
                name="billing",
                data_model={"sql": "SELECT customer_id, plan, changed_at FROM billing.accounts"},
                sync={"iterator": "changed_at"},
            )
        )
    )
    return crm_spec, billing_spec


def _run(spec, partition: str) -> dict:
    store = open_profile_store(profile_store_url())
    try:
        return run_sync(spec, store, DagsterInstance.ephemeral(), partition=partition).metadata
    finally:
        store.close()


def _plan() -> str | None:
    store = open_profile_store(profile_store_url())
    try:
        return store.profile("customer_id", "C1")["attributes"].get("plan")
    finally:
        store.close()


@pytest.mark.parametrize(
    "order",
    [
        [("crm", "2024-01-01"), ("billing", "2024-01-02"), ("crm", "2024-01-03")],
        [("crm", "2024-01-03"), ("billing", "2024-01-02"), ("crm", "2024-01-01")],
        [("billing", "2024-01-02"), ("crm", "2024-01-03"), ("crm", "2024-01-01")],
        [("crm", "2024-01-03"), ("crm", "2024-01-01"), ("billing", "2024-01-02")],
    ],
)
def test_across_two_syncs_the_later_time_wins_whatever_order_partitions_run_in(
    make_warehouse, write_sync, order
):
    crm, billing = _two_syncs(make_warehouse, write_sync)
    specs = {"crm": crm, "billing": billing}
    seen = []
    for sync, partition in order:
        _run(specs[sync], partition)
        seen.append(_plan())
    # In warehouse time: crm free (Jan 1), billing enterprise (Jan 2), crm team (Jan 3).
    assert seen[-1] == "team"


def test_an_old_partition_of_one_sync_re_run_after_another_sync_keeps_the_newer_value(
    make_warehouse, write_sync
):
    crm, billing = _two_syncs(make_warehouse, write_sync)
    _run(crm, "2024-01-01")
    _run(billing, "2024-01-02")

    delivered = _run(crm, "2024-01-01")["crm_users/delivery"]

    assert _plan() == "enterprise"
    assert (delivered["attributes_set"], delivered["profiles_updated"]) == (0, 0)


def test_a_re_run_of_an_older_full_mode_run_key_follows_the_warehouse(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(CRM_SQL)
    write_sync(_full_crm(warehouse))
    assert main(["run", "crm_users", "--partition", "20240105T000000"]) == 0
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("UPDATE crm.users SET plan = 'pro'")

    assert main(["run", "crm_users", "--partition", "20240101T000000"]) == 0
    after_rerun = _profile_json(capsys, "customer_id=C1")["attributes"]
    assert main(["run", "crm_users", "--partition", "20240106T000000"]) == 0

    assert after_rerun == {"plan": "pro"}
    assert _profile_json(capsys, "customer_id=C1")["attributes"] == {"plan": "pro"}


COUNTS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES
    ('C1', 'c1@example.com', 'free', TIMESTAMP '2024-01-01 01:00:00'),
    ('C2', 'c2@example.com', 'pro', TIMESTAMP '2024-01-01 02:00:00'),
    (NULL, NULL, 'lost', TIMESTAMP '2024-01-01 03:00:00'),
    ('C9', 'c1@example.com', 'team', TIMESTAMP '2024-01-01 04:00:00'),
    ('C1', 'c1@example.com', 'team', TIMESTAMP '2024-01-02 01:00:00'),
    ('C3', 'c3@example.com', 'free', TIMESTAMP '2024-01-02 02:00:00'),
    ('C3', 'c3@example.com', 'pro', TIMESTAMP '2024-01-02 03:00:00');
"""


@pytest.mark.parametrize("protection", ["create_and_update", "update_only", "read_only"])
def test_every_row_read_is_applied_unchanged_skipped_rejected_or_a_conflict(
    make_warehouse, write_sync, protection
):
    spec = load_sync_file(
        write_sync(
            user_sync(
                make_warehouse(COUNTS_SQL),
                data_model={"sql": "SELECT customer_id, email, plan, updated_at FROM crm.users"},
                sync={"input_protection": protection},
                checks={"max_reject_rate": 1},
            )
        )
    )
    if protection != "create_and_update":  # C1 and C2 exist already; the others are new
        seeded = load_sync_file(
            write_sync(
                user_sync(
                    make_warehouse(COUNTS_SQL, name="seed.duckdb"),
                    name="seed",
                    data_model={
                        "sql": "SELECT customer_id, updated_at FROM crm.users WHERE customer_id < 'C3'"
                    },
                )
            )
        )
        _run(seeded, "2024-01-01")

    metadata = _run(spec, "2024-01-01..2024-01-02")

    mapped, delivered = metadata["crm_users/mapped_batches"], metadata["crm_users/delivery"]
    accounted = (
        delivered["rows_applied"]
        + delivered["rows_unchanged"]
        + delivered["rows_skipped"]
        + delivered["identity_conflicts"]
        + mapped["rows_rejected"]
    )
    assert mapped["rows_read"] == 7 == accounted
    expected = {  # (applied, skipped, conflicts, profiles skipped)
        "create_and_update": (5, 0, 1, 0),
        "update_only": (3, 3, 0, 2),
        "read_only": (0, 6, 0, 5),
    }[protection]
    assert (
        delivered["rows_applied"],
        delivered["rows_skipped"],
        delivered["identity_conflicts"],
        delivered["profiles_skipped"],
    ) == expected


EVENTS_SQL = """
CREATE SCHEMA web;
CREATE TABLE web.{table} (id INTEGER, customer_id VARCHAR, name VARCHAR, seen_at TIMESTAMP);
INSERT INTO web.{table} SELECT i, 'C1', '{table}', TIMESTAMP '2024-01-01 00:00:00' + i * INTERVAL 1 MINUTE
FROM range(1, 51) AS r(i);
"""


def _event_sync(warehouse, table: str, sql: str | None = None) -> dict:
    return {
        "name": table,
        "data_type": "event",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": sql or f"SELECT id, customer_id, name, seen_at FROM web.{table}"},
        "mapping": [
            {"type": "column", "column": "id", "field": "events.data.source_message_id"},
            {"type": "column", "column": "name", "field": "events.data.event_name"},
            {"type": "column", "column": "seen_at", "field": "events.data.timestamp_unixtime_ms"},
        ],
        "sync": {
            "mode": "incremental",
            "iterator": "seen_at",
            "iterator_type": "timestamp",
            "historical_start": "2024-01-01",
        },
    }


def test_two_event_syncs_numbering_their_events_alike_both_keep_all_of_them(
    make_warehouse, write_sync, capsys
):
    for table in ("signups", "logins"):
        write_sync(_event_sync(make_warehouse(EVENTS_SQL.format(table=table), name=f"{table}.duckdb"), table))
        assert main(["run", table, "--partition", "2024-01-01"]) == 0
        assert "events_written=50" in capsys.readouterr().out

    store = open_profile_store(profile_store_url())
    names = [event["event_name"] for event in store.profile("customer_id", "C1", events_limit=200)["events"]]
    store.close()
    assert (names.count("signups"), names.count("logins")) == (50, 50)


def test_a_duplicate_event_id_inside_one_sync_is_counted(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(EVENTS_SQL.format(table="signups"))
    sql = "SELECT id % 40 AS id, customer_id, name, seen_at FROM web.signups"
    write_sync(_event_sync(warehouse, "signups", sql))

    assert main(["run", "signups", "--partition", "2024-01-01"]) == 0

    out = capsys.readouterr().out
    assert "events_written=40" in out and "events_duplicate=10" in out


def test_catch_up_delivers_history_before_a_partition_run_on_its_own(make_warehouse, write_sync):
    warehouse = make_warehouse(COUNTS_SQL)
    spec = load_sync_file(
        write_sync(
            user_sync(
                warehouse,
                data_model={
                    "sql": "SELECT customer_id, plan, updated_at FROM crm.users WHERE customer_id IS NOT NULL"
                },
            )
        )
    )
    store = open_profile_store(profile_store_url())
    run_sync(spec, store, DagsterInstance.ephemeral(), partition="2024-01-02")

    report = run_sync(spec, store, DagsterInstance.ephemeral(), now=datetime(2024, 1, 4, 6, tzinfo=UTC))

    assert report.partitions == "2024-01-01, 2024-01-03"
    assert store.delivered_partitions("crm_users", "production") == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert store.profile("customer_id", "C2")["attributes"] == {"plan": "pro"}
    store.close()


def test_a_reversed_partition_range_is_an_error_not_an_empty_success(make_warehouse, write_sync, capsys):
    model = {"sql": "SELECT customer_id, email, plan, updated_at FROM crm.users"}
    write_sync(user_sync(make_warehouse(CRM_SQL), data_model=model))

    assert main(["run", "crm_users", "--partition", "2024-01-03..2024-01-01"]) == 1

    assert capsys.readouterr().err.splitlines()[0] == (
        "wsync run: crm_users: --partition 2024-01-03..2024-01-01 is reversed: write the earlier "
        "partition first (2024-01-01..2024-01-03)"
    )


def test_each_partition_of_a_range_run_shows_its_own_counts(make_warehouse, write_sync):
    spec = load_sync_file(
        write_sync(
            user_sync(
                make_warehouse(COUNTS_SQL),
                data_model={
                    "sql": "SELECT customer_id, plan, updated_at FROM crm.users WHERE customer_id IS NOT NULL"
                },
            )
        )
    )
    instance = DagsterInstance.ephemeral()
    store = open_profile_store(profile_store_url())
    run_sync(spec, store, instance, partition="2024-01-01..2024-01-03")
    store.close()

    def rows(asset: str, field: str) -> dict[str, int]:
        events = instance.fetch_materializations(AssetKey(["crm_users", asset]), limit=10).records
        return {e.partition_key: e.asset_materialization.metadata[field].value for e in events}

    assert rows("mapped_batches", "rows_read") == {"2024-01-01": 3, "2024-01-02": 3, "2024-01-03": 0}
    assert rows("delivery", "rows") == {"2024-01-01": 3, "2024-01-02": 3, "2024-01-03": 0}
    assert rows("delivery", "profiles_created") == {"2024-01-01": 3, "2024-01-02": 1, "2024-01-03": 0}


TIED_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES
    ('C1', 'c1@example.com', 'free', TIMESTAMP '2024-01-01 10:00:00'),
    ('C1', 'c1@example.com', 'pro', TIMESTAMP '2024-01-01 10:00:00');
"""


def test_two_rows_of_one_customer_and_time_settle_alike_whichever_order_the_warehouse_returns(
    make_warehouse, write_sync, cli_store, capsys
):
    """Same version, different values: the greater value wins, so a re-run in the other order keeps it."""
    sync = user_sync(make_warehouse(TIED_SQL))
    plans = []
    for order in ("ASC", "DESC", "ASC"):
        sync["data_model"]["sql"] = f"SELECT customer_id, email, plan, updated_at FROM crm.users ORDER BY plan {order}"
        write_sync(sync)
        assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
        plans.append(cli_store.profile("customer_id", "C1")["attributes"]["plan"])

    assert plans == ["pro", "pro", "pro"]


def test_a_full_mode_re_run_over_several_rows_of_a_customer_changes_nothing(
    make_warehouse, write_sync, cli_store, capsys
):
    """Rows of one customer under two e-mails, all of one run's time: an identical second run keeps the
    profile the first left (the later row's e-mail, the greater value per attribute) and counts no change."""
    sync = user_sync(make_warehouse(HISTORY_SQL))
    sync["sync"] = {"mode": "full"}
    write_sync(sync)
    profiles = []
    for key in ("20240105T000000", "20240106T000000"):
        assert main(["run", "crm_users", "--partition", key]) == 0
        profile = cli_store.profile("customer_id", "C001")
        profiles.append({"identities": profile["identities"], "attributes": profile["attributes"]})

    assert profiles[0] == {
        "identities": {"customer_id": "C001", "email": "ada@new.example.com"},
        "attributes": {"first_name": "Ada", "plan": "pro", "updated_at": "2024-01-03 10:00:00"},
    }
    assert profiles[1] == profiles[0]
    second = cli_store.partition_counts("crm_users", "production")["20240106T000000"]
    assert (second["rows_applied"], second["rows_unchanged"]) == (0, 4)
    changed = (
        "identities_changed",
        "attributes_set",
        "attributes_removed",
        "profiles_created",
        "profiles_updated",
    )
    assert {name: second[name] for name in changed} == dict.fromkeys(changed, 0)


def test_a_changed_row_of_a_customer_is_applied_with_the_customers_other_rows_of_the_run(
    make_warehouse, write_sync, cli_store
):
    """One of a customer's rows changes: its other rows (another e-mail, unchanged) are applied with it, so
    the profile is what a first run over the new table gives, not the changed row's values winning alone."""
    warehouse = make_warehouse(HISTORY_SQL)
    sync = user_sync(warehouse)
    sync["sync"] = {"mode": "full"}
    write_sync(sync)
    assert main(["run", "crm_users", "--partition", "20240105T000000"]) == 0
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("UPDATE crm.users SET plan = 'basic' WHERE plan = 'free' AND customer_id = 'C001'")

    assert main(["run", "crm_users", "--partition", "20240106T000000"]) == 0

    profile = cli_store.profile("customer_id", "C001")
    assert {"identities": profile["identities"], "attributes": profile["attributes"]} == {
        "identities": {"customer_id": "C001", "email": "ada@new.example.com"},
        "attributes": {"first_name": "Ada", "plan": "pro", "updated_at": "2024-01-03 10:00:00"},
    }
    second = cli_store.partition_counts("crm_users", "production")["20240106T000000"]
    assert (second["rows_applied"], second["rows_unchanged"]) == (3, 1)


def test_a_new_event_of_a_full_mode_event_sync_leaves_the_customers_other_events_unchanged(
    make_warehouse, write_sync, capsys
):
    """Events have no values to settle: a customer's new event is written alone, the others are unchanged."""
    warehouse = make_warehouse(EVENTS_SQL.format(table="clicks"))
    sync = _event_sync(warehouse, "clicks")
    sync["sync"] = {"mode": "full"}
    write_sync(sync)
    assert main(["run", "clicks", "--partition", "20240105T000000"]) == 0
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            "INSERT INTO web.clicks VALUES (51, 'C1', 'clicks', TIMESTAMP '2024-01-02 00:00:00')"
        )
    capsys.readouterr()

    assert main(["run", "clicks", "--partition", "20240106T000000"]) == 0

    out = capsys.readouterr().out
    assert "rows_applied=1, rows_unchanged=50" in out and "events_written=1, events_duplicate=0" in out, out
