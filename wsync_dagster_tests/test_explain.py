"""Issue 20 item 5: `wsync profile --identity … --explain` says why a profile holds each value, on both
store backends: the winning sync, partition, version, run and delivery, what it outranked, what removed the
rest, and the profile's last changes (bounded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from wsync_dagster import batches as b
from wsync_dagster.cli import main
from wsync_dagster.store import ProfileStore
from wsync_dagster.store.schema import HISTORY_PER_PROFILE
from wsync_dagster_tests.conftest import store_sql, user_sync
from wsync_dagster_tests.test_profile_store import mapped

NOON = int(datetime(2024, 11, 15, 12, tzinfo=UTC).timestamp() * 1_000_000)
ONE = "2024-11-15T12:00:00+00:00"
TWO = "2024-11-15T13:00:00+00:00"
HOUR = 3_600_000_000


def deliver(
    store: ProfileStore,
    batch: pa.RecordBatch,
    *,
    sync: str,
    partition: str,
    run_id: str,
    mirror: bool = False,
) -> None:
    """One delivery of a batch, as run `run_id` of the sync would make it."""
    with store.delivery(
        sync=sync,
        environment="production",
        partitions=[partition],
        input_protection="create_and_update",
        mirror=mirror,
        run_id=run_id,
    ) as delivery:
        delivery.apply_batch(batch)


def explain(capsys: pytest.CaptureFixture[str], identity: str, *flags: str) -> str:
    """What `wsync profile --identity IDENTITY --explain` prints."""
    capsys.readouterr()
    assert main(["profile", "--identity", identity, "--explain", *flags]) == 0
    return capsys.readouterr().out


def test_explain_names_the_winning_sync_and_the_value_it_outranked(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "team"}, version=NOON),
        sync="billing",
        partition="2024-11-15",
        run_id="run-billing",
    )
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "pro"}, version=NOON + HOUR),
        sync="crm_users",
        partition="2024-11-15T13",
        run_id="run-crm",
    )

    out = explain(capsys, "customer_id=C1")
    assert 'attribute plan = "pro"' in out
    assert f"set by crm_users: partition 2024-11-15T13, version {TWO} ({NOON + HOUR}), run run-crm" in out
    assert f'outranked billing = "team": partition 2024-11-15, version {ONE} ({NOON}), run run-billing' in out
    assert "identity  customer_id = C1" in out

    explained = json.loads(explain(capsys, "customer_id=C1", "--json"))
    assert explained["attributes"] == {"plan": "pro"}
    plan = explained["explain"]["attributes"]["plan"]
    assert plan["value"] == "pro"
    set_by = plan["set_by"]
    assert (
        set_by["sync"],
        set_by["partition"],
        set_by["version"],
        set_by["version_time"],
        set_by["run_id"],
    ) == ("crm_users", "2024-11-15T13", NOON + HOUR, TWO, "run-crm")
    assert datetime.fromisoformat(set_by["delivered_at"]).date() == datetime.now(UTC).date()
    [outranked] = plan["outranked"]
    assert (outranked["sync"], outranked["value"], outranked["partition"], outranked["run_id"]) == (
        "billing",
        "team",
        "2024-11-15",
        "run-billing",
    )
    assert plan["removed"] == []
    # The history holds the change to the existing profile: billing's value came with the profile (its
    # register explains it), crm_users' was set on it later.
    history = explained["explain"]["history"]
    assert [(h["sync"], h["change"], h["value"], h["partition"]) for h in history] == [
        ("crm_users", "set", "pro", "2024-11-15T13"),
    ]


def test_an_older_version_delivered_later_is_outranked_not_shown(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "pro"}, version=NOON + HOUR),
        sync="crm_users",
        partition="p2",
        run_id="r2",
    )
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "team"}, version=NOON),
        sync="billing",
        partition="p1",
        run_id="r1",
    )

    plan = json.loads(explain(capsys, "customer_id=C1", "--json"))["explain"]["attributes"]["plan"]
    assert (plan["value"], plan["set_by"]["sync"]) == ("pro", "crm_users")
    assert [(o["sync"], o["value"], o["version"]) for o in plan["outranked"]] == [("billing", "team", NOON)]


def test_a_cdc_delete_shows_as_the_removal_of_the_value(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "pro", "seats": 3}, version=NOON),
        sync="crm_users",
        partition="p1",
        run_id="r1",
    )
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "team"}, version=NOON),
        sync="billing",
        partition="b1",
        run_id="rb",
    )
    removal = mapped({"customer_id": "C1", "plan": None, "seats": None, b.DELETE: True}, version=NOON + HOUR)
    deliver(cli_store, removal, sync="crm_users", partition="p2", run_id="r-delete")

    out = explain(capsys, "customer_id=C1")
    # billing's value shows again; crm_users' register is the removal of its own.
    assert 'attribute plan = "team"' in out
    assert (
        f'removed by crm_users (was "pro"): partition p2, version {TWO} ({NOON + HOUR}), run r-delete' in out
    )
    assert "attribute seats = (no value)" in out
    assert "removed by crm_users (was 3): partition p2" in out
    assert 'plan: "pro" -> (removed) by crm_users (partition p2' in out

    explained = json.loads(explain(capsys, "customer_id=C1", "--json"))["explain"]
    [removed] = explained["attributes"]["seats"]["removed"]
    assert explained["attributes"]["seats"]["set_by"] is None
    assert (removed["sync"], removed["removed_value"], removed["partition"], removed["run_id"]) == (
        "crm_users",
        3,
        "p2",
        "r-delete",
    )
    assert explained["history"][0]["change"] == "removed"


def test_a_mirror_removal_shows_as_the_removal_with_its_run(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    both = mapped(
        {"customer_id": "A", "plan": "pro"}, {"customer_id": "B", "plan": "team"}, version=NOON, full=True
    )
    deliver(cli_store, both, sync="crm_users", partition="r1", run_id="run-1", mirror=True)
    only_a = mapped({"customer_id": "A", "plan": "pro"}, version=NOON + HOUR, full=True)
    with cli_store.delivery(
        sync="crm_users",
        environment="production",
        partitions=["r2"],
        input_protection="create_and_update",
        mirror=True,
        allow_mass_removal=True,
        run_id="run-2",
    ) as delivery:
        delivery.apply_batch(only_a)

    plan = json.loads(explain(capsys, "customer_id=B", "--json"))["explain"]["attributes"]["plan"]
    assert plan["set_by"] is None
    [removed] = plan["removed"]
    assert (removed["sync"], removed["removed_value"], removed["partition"], removed["run_id"]) == (
        "crm_users",
        "team",
        "r2",
        "run-2",
    )


def test_the_history_keeps_the_newest_changes_of_each_profile_only(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(HISTORY_PER_PROFILE + 5):
        deliver(
            cli_store,
            mapped({"customer_id": "C1", "plan": f"plan-{n:02d}"}, version=NOON + n),
            sync="crm_users",
            partition=f"p{n:02d}",
            run_id=f"run-{n:02d}",
        )

    profile = json.loads(explain(capsys, "customer_id=C1", "--json"))
    explained = profile["explain"]
    history = explained["history"]
    assert len(history) == HISTORY_PER_PROFILE == explained["history_limit"]
    last = HISTORY_PER_PROFILE + 4
    assert history[0] == {
        **history[0],
        "value": f"plan-{last}",
        "replaced": f"plan-{last - 1}",
        "change": "replaced",
        "run_id": f"run-{last}",
    }
    assert history[-1]["value"] == "plan-05"
    # The store itself holds no more than that.
    count = f"SELECT COUNT(*) FROM attribute_history WHERE profile_id = '{profile['profile_id']}'"
    [(stored,)] = store_sql(cli_store.url, count)
    assert stored == HISTORY_PER_PROFILE
    out = explain(capsys, "customer_id=C1")
    assert f"last changes, newest first (at most {HISTORY_PER_PROFILE} kept):" in out


def test_an_unchanged_value_adds_no_history(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "pro"}, version=NOON),
        sync="crm_users",
        partition="p1",
        run_id="r1",
    )
    deliver(
        cli_store,
        mapped({"customer_id": "C1", "plan": "pro"}, version=NOON + HOUR),
        sync="crm_users",
        partition="p2",
        run_id="r2",
    )

    explained = json.loads(explain(capsys, "customer_id=C1", "--json"))["explain"]
    # The value came with the profile (p1) and p2 changed nothing: no change is recorded.
    assert explained["history"] == []
    # The register carries the newer delivery all the same.
    assert explained["attributes"]["plan"]["set_by"]["partition"] == "p2"
    assert "      none recorded (a value set when the profile was created is explained above)" in explain(
        capsys, "customer_id=C1"
    )


USERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES ('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-01 10:15:00');
"""


def test_a_real_run_is_named_in_the_explanation_and_erasure_removes_the_history(
    cli_store: ProfileStore, make_warehouse, write_sync, capsys: pytest.CaptureFixture[str]
) -> None:
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0

    explained = json.loads(explain(capsys, "email=ada@example.com", "--json"))
    set_by = explained["explain"]["attributes"]["first_name"]["set_by"]
    assert (set_by["sync"], set_by["partition"], set_by["version_time"]) == (
        "crm_users",
        "2024-01-01",
        "2024-01-01T10:15:00+00:00",
    )
    assert set_by["run_id"]  # the Dagster run that delivered it
    assert explained["explain"]["identities"]["email"]["value"] == "ada@example.com"
    # The run created the profile: its register says all that, and no change is recorded yet.
    assert explained["explain"]["history"] == []

    deliver(
        cli_store,
        mapped({"email": "ada@example.com", "plan": "team"}, version=NOON),
        sync="billing",
        partition="b1",
        run_id="run-billing",
    )
    [(kept,)] = store_sql(cli_store.url, "SELECT COUNT(*) FROM attribute_history")
    assert kept == 1
    assert main(["erase", "--identity", "email=ada@example.com"]) == 0
    [(left,)] = store_sql(cli_store.url, "SELECT COUNT(*) FROM attribute_history")
    assert left == 0


def test_a_store_of_schema_3_is_upgraded_and_explains_what_it_held(tmp_path: Path) -> None:
    import sqlite3

    from wsync_dagster.store import schema

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    for statement in schema.TABLES:
        if "attribute_history" in statement or statement in schema.FORWARDING_TABLES:  # versions 4 and 5
            continue
        old.execute(statement.replace("        partition_key TEXT,\n        run_id TEXT,\n", ""))
    old.execute("INSERT INTO profiles VALUES ('p1', 'production', '2024-01-01')")
    old.execute("INSERT INTO identities VALUES ('production', 'customer_id', 'C1', 'p1', '2024-01-01', 5)")
    old.execute("INSERT INTO attributes VALUES ('p1', 'plan', 'crm_users', '\"pro\"', 5, 1, '2024-01-01')")
    old.execute("PRAGMA user_version = 3")
    old.commit()
    old.close()

    with ProfileStore(path) as store:
        profile = store.profile("customer_id", "C1", explain=True)
    assert profile is not None
    set_by = profile["explain"]["attributes"]["plan"]["set_by"]
    assert (set_by["sync"], set_by["version"], set_by["partition"], set_by["run_id"]) == (
        "crm_users",
        5,
        None,
        None,
    )
    assert profile["explain"]["history"] == []


def test_a_new_profile_adds_no_history_and_its_registers_explain_its_values(
    cli_store: ProfileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = {f"attr_{n:02d}": n for n in range(HISTORY_PER_PROFILE + 3)}
    with cli_store.delivery(
        sync="crm_users",
        environment="production",
        partitions=["p1"],
        input_protection="create_and_update",
        run_id="r1",
    ) as delivery:
        delivery.apply_batch(
            mapped({"customer_id": "C1", **wide}, {"customer_id": "C2", "plan": "pro"}, version=NOON)
        )
        # A later batch of the same delivery changes a profile it created: still no history.
        delivery.apply_batch(mapped({"customer_id": "C1", "attr_00": 100}, version=NOON + HOUR))

    [(stored,)] = store_sql(cli_store.url, "SELECT COUNT(*) FROM attribute_history")
    assert stored == 0
    explained = json.loads(explain(capsys, "customer_id=C1", "--json"))["explain"]
    assert explained["history"] == []
    # Every value is explained by its register; the row's empty plan is this sync's removal, with nothing
    # it removed.
    plan = explained["attributes"].pop("plan")
    assert (plan["set_by"], [(r["sync"], r["removed_value"]) for r in plan["removed"]]) == (
        None,
        [("crm_users", None)],
    )
    assert len(explained["attributes"]) == len(wide)
    assert all(
        (a["set_by"]["sync"], a["set_by"]["partition"], a["set_by"]["run_id"]) == ("crm_users", "p1", "r1")
        for a in explained["attributes"].values()
    )
    assert (
        explained["attributes"]["attr_00"]["value"],
        explained["attributes"]["attr_00"]["set_by"]["version"],
    ) == (
        100,
        NOON + HOUR,
    )
    out = explain(capsys, "customer_id=C1")
    assert f"set by crm_users: partition p1, version {TWO} ({NOON + HOUR}), run r1" in out

    # A later delivery's change to the existing profile is recorded, for it alone.
    deliver(
        cli_store,
        mapped({"customer_id": "C2", "plan": "team"}, version=NOON + HOUR),
        sync="crm_users",
        partition="p2",
        run_id="r2",
    )
    other = json.loads(explain(capsys, "customer_id=C2", "--json"))["explain"]["history"]
    assert [(h["name"], h["change"], h["replaced"], h["value"], h["run_id"]) for h in other] == [
        ("plan", "replaced", "pro", "team", "r2")
    ]
    assert json.loads(explain(capsys, "customer_id=C1", "--json"))["explain"]["history"] == []
