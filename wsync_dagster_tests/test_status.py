"""Issue 20 item 1: `wsync status`, `wsync pause`, `wsync resume`, on a real Dagster instance on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.selector import InstigatorSelector
from dagster._core.scheduler.instigation import InstigatorStatus

from wsync_dagster.cli import main
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

REPO = Path(__file__).resolve().parents[1]
REJECTED_ROW = "INSERT INTO crm.users VALUES (NULL, NULL, 'Nobody', 'pro', TIMESTAMP '2024-01-01 12:00:00');"


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME with the repository's dagster.yaml, as `scripts/demo` makes it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _status(capsys, *args: str) -> str:
    assert main(["status", *args]) == 0
    return capsys.readouterr().out


def _state(home: Path, name: str) -> InstigatorStatus | None:
    """The stored state of a schedule or sensor, read through the instance as the UI and daemon read it."""
    with DagsterInstance.from_config(str(home)) as instance:
        selector = InstigatorSelector(location_name="wsync", repository_name="__repository__", name=name)
        state = instance.get_instigator_state(selector.get_id(), selector.get_id())
        return None if state is None else state.status


def test_a_fresh_sync_is_active_and_never_run(make_warehouse, write_sync, dagster_home, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    out = _status(capsys)
    assert out.splitlines()[0] == "crm_users: active (schedule crm_users_schedule)"
    assert "  mode        incremental on updated_at (timestamp), interval, daily (production)" in out
    assert "  delivered   never run: nothing delivered yet" in out
    assert "  last run    none recorded" in out
    assert "  warehouse   newest 2024-01-02T09:00:00+00:00; nothing delivered yet" in out
    assert "  missing     " in out and "partitions not delivered: 2024-01-01 … " in out


def test_after_a_run_status_shows_the_last_partition_its_counts_and_rejects(
    make_warehouse, write_sync, dagster_home, cli_store, capsys
):
    """On each store backend: the deliveries are read from the store the commands use."""
    write_sync(user_sync(make_warehouse(USERS_SQL + REJECTED_ROW)))
    assert (
        main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    )  # delivered; the reject-rate check fails
    capsys.readouterr()
    out = _status(capsys, "crm_users")
    assert "  delivered   2024-01-01 at " in out
    assert "  counts      rows=2, rows_applied=2, rejects=1, profiles_created=2, attributes_set=4" in out
    assert (
        "  rejects     1 rejected row, 0 identity conflicts in the last delivery (`wsync rejects crm_users`)"
        in out
    )
    assert "  last run    succeeded, started " in out
    # The window 2024-01-01 is delivered; the warehouse's newest row (2024-01-02 09:00) is 9 hours past it.
    assert (
        "  warehouse   newest 2024-01-02T09:00:00+00:00, delivered through 2024-01-02T00:00:00+00:00: 9h behind"
        in out
    )
    assert "partitions not delivered: 2024-01-02 … " in out


def test_a_failed_run_shows_its_outcome_and_its_partition_as_failed(
    make_warehouse, write_sync, dagster_home, capsys
):
    # The model's columns check out, but reading its rows fails: the Dagster run fails.
    sql = "SELECT customer_id, email, first_name, CAST(plan AS INTEGER)::VARCHAR AS plan, updated_at FROM crm.users"
    write_sync(user_sync(make_warehouse(USERS_SQL), data_model={"sql": sql}))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 1
    capsys.readouterr()
    out = _status(capsys, "crm_users")
    assert "  delivered   never run: nothing delivered yet" in out
    assert "  last run    failed, started " in out
    assert "  failed      1 partition whose last run failed: 2024-01-01" in out
    status = json.loads(_status(capsys, "crm_users", "--json"))
    assert status["last_run"]["outcome"] == "FAILURE"
    assert status["failed"] == ["2024-01-01"]


def test_json_gives_the_same_fields(make_warehouse, write_sync, dagster_home, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL + REJECTED_ROW)))
    main(["run", "crm_users", "--partition", "2024-01-01"])
    capsys.readouterr()
    status = json.loads(_status(capsys, "crm_users", "--json"))
    assert status["sync"] == "crm_users"
    assert status["state"] == "active"
    assert status["trigger"] == "crm_users_schedule"
    assert status["trigger_kind"] == "schedule"
    assert (status["mode"], status["iterator"], status["schedule"], status["frequency"]) == (
        "incremental",
        "updated_at (timestamp)",
        "interval",
        "daily",
    )
    assert status["last_delivery"]["first"] == status["last_delivery"]["last"] == "2024-01-01"
    assert status["last_delivery"]["counts"]["rows"] == 2
    assert status["rejects"] == {"rejected_rows": 1, "identity_conflicts": 0}
    assert status["last_run"]["outcome"] == "SUCCESS"
    assert status["next_run"].endswith("T00:00:00+00:00")
    assert status["warehouse"]["behind_seconds"] == 9 * 3600
    assert status["missing"]["first"] == "2024-01-02"
    assert status["failed"] == []
    # Without a sync: every sync, as a list.
    assert [entry["sync"] for entry in json.loads(_status(capsys, "--json"))] == ["crm_users"]


def test_pause_stops_the_schedule_in_the_instance_and_resume_starts_it(
    make_warehouse, write_sync, dagster_home, capsys
):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["pause", "crm_users"]) == 0
    assert "crm_users: paused (schedule crm_users_schedule stopped" in capsys.readouterr().out
    assert _state(dagster_home, "crm_users_schedule") == InstigatorStatus.STOPPED
    out = _status(capsys, "crm_users")
    assert out.splitlines()[0] == "crm_users: paused (schedule crm_users_schedule)"
    assert "  next run    none while paused (`wsync resume crm_users`)" in out

    assert main(["pause", "crm_users"]) == 0
    assert "already paused" in capsys.readouterr().out

    assert main(["resume", "crm_users"]) == 0
    assert capsys.readouterr().out == "crm_users: active (schedule crm_users_schedule running)\n"
    assert _state(dagster_home, "crm_users_schedule") == InstigatorStatus.RUNNING
    assert _status(capsys, "crm_users").splitlines()[0] == "crm_users: active (schedule crm_users_schedule)"


def test_pause_and_resume_a_sensor(make_warehouse, write_sync, dagster_home, capsys):
    write_sync(
        user_sync(
            make_warehouse(USERS_SQL),
            sync={"mode": "full", "iterator": None, "iterator_type": None, "historical_start": None},
        )
    )
    out = _status(capsys, "crm_users")
    assert out.splitlines()[0] == "crm_users: active (sensor crm_users_sensor)"
    assert "  warehouse   full mode reads the whole model each run" in out
    assert main(["pause", "crm_users"]) == 0
    assert capsys.readouterr().out.startswith("crm_users: paused (sensor crm_users_sensor stopped")
    assert _state(dagster_home, "crm_users_sensor") == InstigatorStatus.STOPPED
    assert json.loads(_status(capsys, "crm_users", "--json"))["state"] == "paused"
    assert main(["resume", "crm_users"]) == 0
    assert _state(dagster_home, "crm_users_sensor") == InstigatorStatus.RUNNING


def test_a_sync_paused_in_its_file_shows_paused_and_resumes(make_warehouse, write_sync, dagster_home, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL), sync={"paused": True}))
    assert _status(capsys, "crm_users").splitlines()[0] == "crm_users: paused (schedule crm_users_schedule)"
    assert main(["resume", "crm_users"]) == 0
    assert _state(dagster_home, "crm_users_schedule") == InstigatorStatus.RUNNING


@pytest.mark.parametrize("command", ["status", "pause", "resume"])
def test_an_unknown_sync_is_one_line_and_exit_1(make_warehouse, write_sync, dagster_home, capsys, command):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main([command, "nosuch"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"wsync {command}: no sync named 'nosuch' in ")
    assert "syncs: crm_users" in captured.err


def test_an_on_demand_sync_has_nothing_to_pause(make_warehouse, write_sync, dagster_home, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL), sync={"schedule": "on_demand", "start": None}))
    assert _status(capsys, "crm_users").splitlines()[0] == "crm_users: on demand"
    assert main(["pause", "crm_users"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "crm_users: schedule on_demand has no schedule or sensor to pause" in err


def test_a_warehouse_that_cannot_be_read_is_one_line_and_the_rest_still_shows(
    make_warehouse, write_sync, dagster_home, capsys
):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    capsys.readouterr()
    warehouse.unlink()
    out = _status(capsys, "crm_users")
    [line] = [line for line in out.splitlines() if line.startswith("  warehouse")]
    assert line.startswith("  warehouse   cannot read the warehouse: ") and "does not exist" in line
    assert "  delivered   2024-01-01 at " in out


SCHEDULE_STATE_QUERY = """
query ($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { scheduleState { id selectorId status } }
    ... on PythonError { message }
  }
}
"""
STOP_SCHEDULE_MUTATION = """
mutation ($originId: String!, $selectorId: String!) {
  stopRunningSchedule(scheduleOriginId: $originId, scheduleSelectorId: $selectorId) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""


def test_the_ui_shows_the_toggle_and_status_shows_the_uis(
    make_warehouse, write_sync, tmp_path, monkeypatch, capsys
):
    """`wsync pause` is the UI's toggle: a real `dagster dev` shows the schedule stopped; its own toggle back
    on and off again is what `wsync status` shows."""
    from wsync_dagster_tests.test_dagster_dev import LOCATION, dagster_dev, graphql, wait_until_loaded

    write_sync(user_sync(make_warehouse(USERS_SQL)))
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "scheduleName": "crm_users_schedule",
    }

    def ui_state() -> dict:
        found = graphql(client, SCHEDULE_STATE_QUERY, selector=selector)["scheduleOrError"]
        assert found["__typename"] == "Schedule", found
        return found["scheduleState"]

    with dagster_dev(tmp_path) as (client, process):
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        wait_until_loaded(client, process, LOCATION)
        assert ui_state()["status"] == "RUNNING"
        assert main(["pause", "crm_users"]) == 0
        assert ui_state()["status"] == "STOPPED"
        assert main(["resume", "crm_users"]) == 0
        state = ui_state()
        assert state["status"] == "RUNNING"
        # The UI's own toggle, off: `wsync status` reads the same state.
        stopped = graphql(
            client, STOP_SCHEDULE_MUTATION, originId=state["id"], selectorId=state["selectorId"]
        )["stopRunningSchedule"]
        assert stopped["__typename"] == "ScheduleStateResult", stopped
        capsys.readouterr()
        assert (
            _status(capsys, "crm_users").splitlines()[0] == "crm_users: paused (schedule crm_users_schedule)"
        )


def test_an_integer_iterator_sync_shows_how_many_values_it_is_behind(
    make_warehouse, write_sync, dagster_home, capsys
):
    from wsync_dagster_tests.test_integer_iterators import ORDERS_SQL, add_rows, integer_sync

    warehouse = make_warehouse(ORDERS_SQL)
    write_sync(
        integer_sync(warehouse, lookback=0, schedule="interval", frequency="hourly", start="2024-01-01")
    )
    out = _status(capsys, "crm_users")
    assert out.splitlines()[0] == "crm_users: active (sensor crm_users_sensor)"
    assert "  warehouse   newest 3; nothing delivered yet" in out
    assert main(["run", "crm_users"]) == 0
    add_rows(warehouse, "('C002', 'bo@example.com', 'team', 5), ('C001', 'ada@example.com', 'enterprise', 4)")
    capsys.readouterr()
    out = _status(capsys, "crm_users")
    assert "  delivered   00000000000000000001_00000000000000000003 at " in out
    assert "  warehouse   newest 5, delivered through 3: 2 values behind" in out
    assert "  missing     none" in out
    assert json.loads(_status(capsys, "crm_users", "--json"))["warehouse"] == {
        "newest": 5,
        "delivered_through": 3,
        "behind": 2,
        "unit": "values",
    }


def test_a_cdc_sync_shows_how_many_table_versions_it_is_behind(tmp_path, write_sync, dagster_home, capsys):
    from deltalake import write_deltalake

    from wsync_dagster_tests.test_cdc import CDF, cdc_sync, users

    path = tmp_path / "lake" / "users"
    write_deltalake(str(path), users(("C001", "ada@example.com", "free")), configuration=CDF)
    write_sync(cdc_sync(path, schedule="interval", frequency="hourly", start="2024-01-01"))
    assert main(["run", "crm_changes"]) == 0
    for plan in ("pro", "team"):
        write_deltalake(str(path), users(("C002", "bo@example.com", plan)), mode="append", configuration=CDF)
    capsys.readouterr()
    out = _status(capsys, "crm_changes")
    assert out.splitlines()[0] == "crm_changes: active (sensor crm_changes_sensor)"
    assert "  mode        cdc, interval, hourly (production)" in out
    assert "  warehouse   newest 2, delivered through 0: 2 versions behind" in out
    assert "  next run    when new versions arrive (the sensor looks hourly)" in out


def test_without_dagster_home_status_says_nothing_is_recorded_and_pause_refuses(
    make_warehouse, write_sync, monkeypatch, capsys
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    out = _status(capsys, "crm_users")
    assert out.splitlines()[0] == "crm_users: active (schedule crm_users_schedule)"
    assert "  note        DAGSTER_HOME is not set: no runs and no paused state are recorded" in out
    assert main(["pause", "crm_users"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set DAGSTER_HOME to the instance the UI and its daemon use" in err


def test_status_without_a_sync_shows_every_sync_and_warns_of_files_not_loaded(
    make_warehouse, write_sync, dagster_home, capsys
):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    write_sync({**user_sync(warehouse, sync={"schedule": "on_demand", "start": None}), "name": "a_users"})
    write_sync("name: broken\nsync: [", name="broken.yaml")
    assert main(["status"]) == 0
    captured = capsys.readouterr()
    heads = [line for line in captured.out.splitlines() if line and not line.startswith(" ")]
    assert heads == ["a_users: on demand", "crm_users: active (schedule crm_users_schedule)"]
    assert "wsync: warning: not loaded (see `wsync validate`): " in captured.err
    assert [entry["sync"] for entry in json.loads(_status(capsys, "--json"))] == ["a_users", "crm_users"]
