"""CDC on real Delta tables (deltalake's Change Data Feed): insert, update, delete, re-insert, overwrite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance, build_sensor_context
from deltalake import DeltaTable, write_deltalake

from wsync_dagster.cli import main
from wsync_dagster.defs import build_definitions
from wsync_dagster.modes.ranges import range_key
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.store import ProfileStore, open_profile_store
from wsync_dagster_tests.conftest import user_sync

CDF = {"delta.enableChangeDataFeed": "true"}
TIERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.tiers (customer_id VARCHAR, tier VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.tiers VALUES ('C002', 'gold', TIMESTAMP '2024-01-01 10:00:00');
"""


def users(*rows: tuple[str, str, str]) -> pa.Table:
    """Rows of the Delta users table: customer_id, email, plan."""
    return pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(("customer_id", "email", "plan"))}
    )


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A Delta users table with its change data feed on, two customers at version 0."""
    path = tmp_path / "lake" / "users"
    write_deltalake(
        str(path),
        users(("C001", "ada@example.com", "free"), ("C002", "bo@example.com", "free")),
        configuration=CDF,
    )
    return path


def cdc_sync(
    path: Path, sql: str = "SELECT customer_id, email, plan FROM crm.users", **settings: object
) -> dict:
    """An on-demand cdc user sync over the Delta table."""
    return {
        "name": "crm_changes",
        "data_type": "user",
        "connection": {"type": "delta", "tables": {"crm.users": str(path)}},
        "data_model": {"sql": sql},
        "sync": {"mode": "cdc", **settings},
    }


def profile(customer_id: str) -> dict | None:
    """A customer's identities and attributes, as the store shows them."""
    with open_profile_store(profile_store_url()) as store:
        found = store.profile("customer_id", customer_id)
    return found and {"identities": found["identities"], "attributes": found["attributes"]}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`wsync run crm_changes ARGS`: exit code, stdout, stderr."""
    code = main(["run", "crm_changes", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inserts_updates_and_deletes_reach_the_profiles_and_other_syncs_attributes_stay(
    lake: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Snapshot first, then the changes above it; a delete removes this sync's attributes only."""
    write_sync(cdc_sync(lake))
    tiers = user_sync(make_warehouse(TIERS_SQL), name="crm_tiers")
    tiers["data_model"]["sql"] = "SELECT customer_id, tier, updated_at FROM crm.tiers"
    write_sync(tiers)
    assert main(["run", "crm_tiers", "--partition", "2024-01-01"]) == 0

    code, out, err = run(capsys)
    assert code == 0, err
    assert f"partitions {range_key(0, 0)}" in out  # the first run reads the table as it is
    assert profile("C001")["attributes"] == {"plan": "free"}  # type: ignore[index]

    table = DeltaTable(str(lake))
    table.update({"plan": "'pro'"}, predicate="customer_id = 'C001'")  # version 1
    DeltaTable(str(lake)).delete("customer_id = 'C002'")  # version 2
    write_deltalake(str(lake), users(("C003", "cy@example.com", "team")), mode="append")  # version 3
    code, out, err = run(capsys)
    assert code == 0, err
    assert f"partitions {range_key(1, 3)}" in out
    assert profile("C001")["attributes"] == {"plan": "pro"}  # type: ignore[index]
    assert profile("C002") == {
        "identities": {"customer_id": "C002", "email": "bo@example.com"},
        "attributes": {"tier": "gold"},  # the delete removed this sync's plan, not crm_tiers' tier
    }
    assert profile("C003")["attributes"] == {"plan": "team"}  # type: ignore[index]

    write_deltalake(str(lake), users(("C002", "bo@example.com", "enterprise")), mode="append")  # version 4
    assert run(capsys)[0] == 0
    assert profile("C002")["attributes"] == {"plan": "enterprise", "tier": "gold"}  # type: ignore[index]

    # Order-safe: re-running versions 1..3 (the delete at 2) does not undo the re-insert at 4.
    code, out, err = run(capsys, "--partition", range_key(1, 3))
    assert code == 0, err
    assert profile("C002")["attributes"] == {"plan": "enterprise", "tier": "gold"}  # type: ignore[index]
    assert profile("C001")["attributes"] == {"plan": "pro"}  # type: ignore[index]

    assert run(capsys)[1].startswith("crm_changes: up to date")


def test_an_overwritten_table_fails_clearly_and_changes_nothing(
    lake: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An overwrite breaks the feed: one line saying so and what to use instead; the store is as it was."""
    write_sync(cdc_sync(lake))
    assert run(capsys)[0] == 0
    write_deltalake(
        str(lake), users(("C009", "zed@example.com", "free")), mode="overwrite", configuration=CDF
    )
    before = Path(profile_store_url().removeprefix("sqlite:///")).read_bytes()
    code, _, err = run(capsys)
    assert code == 1
    assert "was overwritten at version 1 (write overwrite)" in err and "incremental sync" in err, err
    assert Path(profile_store_url().removeprefix("sqlite:///")).read_bytes() == before
    assert profile("C009") is None


def test_the_sensor_adds_and_requests_the_next_version_range(
    lake: Path, write_sync: Callable[..., Path]
) -> None:
    """First tick: the snapshot; no new version: a skip; a new version: the range above the last. The sensor
    reads through its connection's resource, which the daemon passes from the definitions (as here)."""
    spec = load_sync_file(
        write_sync(cdc_sync(lake, schedule="interval", frequency="hourly", start="2024-01-01T00:00:00Z"))
    )
    defs = build_definitions([spec])
    [sensor] = defs.sensors or []
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, resources=defs.resources))
        assert [r.run_key for r in first.run_requests] == [range_key(0, 0)]
        assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [[range_key(0, 0)]]
        instance.add_dynamic_partitions("crm_changes_versions", [range_key(0, 0)])
        assert "no table version above" in (
            sensor(build_sensor_context(instance=instance, resources=defs.resources)).skip_message or ""
        )
        write_deltalake(str(lake), users(("C003", "cy@example.com", "team")), mode="append")
        later = sensor(build_sensor_context(instance=instance, resources=defs.resources))
        assert [r.run_key for r in later.run_requests] == [range_key(1, 1)]


def test_an_event_sync_sends_each_inserted_row_once(
    tmp_path: Path, lake: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Updates and deletes of event rows send nothing; each insert is one event."""
    path = tmp_path / "lake" / "events"
    events = pa.table({"id": ["e1"], "customer_id": ["C001"], "name": ["login"], "ms": [1_704_100_000_000]})
    write_deltalake(str(path), events, configuration=CDF)
    write_sync(cdc_sync(lake))
    assert run(capsys)[0] == 0
    write_sync(
        {
            "name": "web_changes",
            "data_type": "event",
            "connection": {"type": "delta", "tables": {"web.events": str(path)}},
            "data_model": {"sql": "SELECT id, customer_id, name, ms FROM web.events"},
            "mapping": [
                {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
                {"type": "column", "column": "id", "field": "events.data.source_message_id"},
                {"type": "column", "column": "name", "field": "events.data.event_name"},
                {"type": "column", "column": "ms", "field": "events.data.timestamp_unixtime_ms"},
            ],
            "sync": {"mode": "cdc"},
        }
    )
    assert main(["run", "web_changes"]) == 0
    DeltaTable(str(path)).update({"name": "'logout'"}, predicate="id = 'e1'")
    write_deltalake(
        str(path),
        pa.table({"id": ["e2"], "customer_id": ["C001"], "name": ["purchase"], "ms": [1_704_100_000_001]}),
        mode="append",
    )
    assert main(["run", "web_changes"]) == 0
    out = capsys.readouterr().out
    assert "events_written=1" in out.split("web_changes: partitions")[-1]
    with open_profile_store(profile_store_url()) as store:
        names = [e["data"]["event_name"] for e in store.profile("customer_id", "C001")["events"]]  # type: ignore[index]
    assert sorted(names) == ["login", "purchase"]


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        (
            lambda lake, warehouse: {
                **cdc_sync(lake),
                "connection": {"type": "duckdb", "path": str(warehouse)},
            },
            "sync.mode: cdc reads a table's change feed, and a duckdb connection has none",
        ),
        (
            lambda lake, warehouse: cdc_sync(
                lake,
                sql="SELECT u.customer_id, u.plan FROM crm.users AS u JOIN crm.users AS v USING (customer_id)",
            ),
            "a cdc data model is one SELECT of columns from one table, optionally filtered; it has a JOIN",
        ),
    ],
)
def test_cdc_where_there_is_no_single_table_feed_is_refused_at_validation(
    sync: Callable[[Path, Path], dict],
    message: str,
    lake: Path,
    tmp_path: Path,
    write_sync: Callable[..., Path],
) -> None:
    """A connection without a change feed, or a model that joins: the file and the field are named."""
    path = write_sync(sync(lake, tmp_path / "w.duckdb"))
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_delta_table_without_a_change_feed_says_how_to_turn_it_on(
    tmp_path: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`wsync validate` and `wsync run` name the table and the table property; nothing is written."""
    path = tmp_path / "lake" / "plain"
    write_deltalake(str(path), users(("C001", "ada@example.com", "free")))
    write_sync(cdc_sync(path))
    code, _, err = run(capsys)
    assert code == 1
    assert "has no change data feed" in err and "delta.enableChangeDataFeed = true" in err, err
    assert profile("C001") is None


def test_a_row_updated_out_of_the_models_filter_loses_what_this_sync_set(
    lake: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`WHERE plan <> 'test'`: C001 updated to test has left the model, as if deleted; C002 stays."""
    write_sync(cdc_sync(lake, sql="SELECT customer_id, email, plan FROM crm.users WHERE plan <> 'test'"))
    assert run(capsys)[0] == 0
    assert profile("C001")["attributes"] == {"plan": "free"}  # type: ignore[index]

    DeltaTable(str(lake)).update({"plan": "'test'"}, predicate="customer_id = 'C001'")
    DeltaTable(str(lake)).update({"plan": "'pro'"}, predicate="customer_id = 'C002'")
    code, _, err = run(capsys)
    assert code == 0, err
    assert profile("C001") == {
        "identities": {"customer_id": "C001", "email": "ada@example.com"},
        "attributes": {},
    }
    assert profile("C002")["attributes"] == {"plan": "pro"}  # type: ignore[index]

    DeltaTable(str(lake)).update({"plan": "'team'"}, predicate="customer_id = 'C001'")  # back in the model
    assert run(capsys)[0] == 0
    assert profile("C001")["attributes"] == {"plan": "team"}  # type: ignore[index]


def test_a_delete_of_a_customer_the_store_never_held_creates_no_profile(
    lake: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Inserted and deleted between two runs, or outside the model's filter: no profile, counted as skipped."""
    write_sync(cdc_sync(lake, sql="SELECT customer_id, email, plan FROM crm.users WHERE plan <> 'test'"))
    assert run(capsys)[0] == 0
    write_deltalake(str(lake), users(("C003", "cy@example.com", "team")), mode="append")
    DeltaTable(str(lake)).delete("customer_id = 'C003'")
    write_deltalake(str(lake), users(("C004", "di@example.com", "test")), mode="append")
    code, out, err = run(capsys)
    assert code == 0, err
    assert "rows_skipped=2" in out, out
    assert profile("C003") is None and profile("C004") is None
    with open_profile_store(profile_store_url()) as store:
        assert store.profile("email", "cy@example.com") is None  # no identity was written either

    DeltaTable(str(lake)).delete("customer_id = 'C004'")
    assert run(capsys)[0] == 0
    assert profile("C004") is None
    assert profile("C001")["attributes"] == {"plan": "free"}  # type: ignore[index]


def test_a_delete_of_an_unknown_customer_sharing_an_email_leaves_the_known_customer(
    lake: Path, cli_store: ProfileStore, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """C009 never was in the model (plan test) and shares C001's e-mail: its delete finds no profile,
    as its upsert would find none (customer_id decides), so C001 keeps what this sync set."""
    write_sync(cdc_sync(lake, sql="SELECT customer_id, email, plan FROM crm.users WHERE plan <> 'test'"))
    assert run(capsys)[0] == 0
    write_deltalake(str(lake), users(("C009", "ada@example.com", "test")), mode="append")
    DeltaTable(str(lake)).delete("customer_id = 'C009'")

    code, out, err = run(capsys)

    assert code == 0, err
    assert "rows_skipped=1" in out and "attributes_removed=0" in out, out
    assert cli_store.profile("customer_id", "C001")["attributes"] == {"plan": "free"}  # type: ignore[index]
    assert cli_store.profile("customer_id", "C009") is None


def test_an_email_change_inside_a_range_leaves_no_stale_image(
    lake: Path, cli_store: ProfileStore, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Inserted, its e-mail changed, deleted, all in one range: one customer, whose last change is a delete."""
    write_sync(cdc_sync(lake))
    assert run(capsys)[0] == 0
    write_deltalake(str(lake), users(("C003", "cy@example.com", "team")), mode="append")
    DeltaTable(str(lake)).update({"email": "'cy2@example.com'"}, predicate="customer_id = 'C003'")
    DeltaTable(str(lake)).update({"plan": "'pro'"}, predicate="customer_id = 'C001'")
    DeltaTable(str(lake)).update({"email": "'ada2@example.com'"}, predicate="customer_id = 'C001'")
    DeltaTable(str(lake)).delete("customer_id = 'C003'")

    code, _, err = run(capsys)

    assert code == 0, err
    assert cli_store.profile("customer_id", "C003") is None
    assert cli_store.profile("email", "cy@example.com") is None
    assert profile_in(cli_store, "C001") == {
        "identities": {"customer_id": "C001", "email": "ada2@example.com"},
        "attributes": {"plan": "pro"},
    }


def test_a_delete_and_a_re_insert_with_a_new_email_in_one_range_end_at_the_re_insert(
    lake: Path, cli_store: ProfileStore, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_sync(cdc_sync(lake))
    assert run(capsys)[0] == 0
    DeltaTable(str(lake)).delete("customer_id = 'C002'")
    write_deltalake(str(lake), users(("C002", "bo2@example.com", "team")), mode="append")

    code, _, err = run(capsys)

    assert code == 0, err
    assert profile_in(cli_store, "C002") == {
        "identities": {"customer_id": "C002", "email": "bo2@example.com"},
        "attributes": {"plan": "team"},
    }


def profile_in(store: ProfileStore, customer_id: str) -> dict | None:
    """A customer's identities and attributes in this store."""
    found = store.profile("customer_id", customer_id)
    return found and {"identities": found["identities"], "attributes": found["attributes"]}
