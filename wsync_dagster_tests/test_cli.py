"""SPEC §3: the `wsync` command line, on real warehouses and a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import yaml

from wsync_dagster.cli import main
from wsync_dagster_tests.conftest import USERS_SQL, user_sync


def _profile_store_bytes(tmp_path) -> bytes | None:
    path = tmp_path / "state" / "profiles.sqlite"
    return path.read_bytes() if path.exists() else None


def test_validate_passes_a_good_sync_and_names_what_it_maps(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["validate"]) == 0
    assert "✓ crm_users: 2 identities, 2 attributes" in capsys.readouterr().out


def test_validate_fails_on_an_unmapped_column_naming_file_and_column(make_warehouse, write_sync, capsys):
    path = write_sync(
        user_sync(
            make_warehouse(USERS_SQL),
            mapping=[{"type": "column", "column": "email", "field": "user_identities.email"}],
        )
    )
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: mapping: column 'first_name' is selected by the data model but not mapped" in err


def test_validate_fails_on_an_unknown_key_with_non_zero_exit(make_warehouse, write_sync, capsys):
    path = write_sync(user_sync(make_warehouse(USERS_SQL), sync={"frequence": "daily"}))
    assert main(["validate"]) == 1
    assert f"{path}: sync.frequence: unknown key" in capsys.readouterr().err


def test_validate_fails_on_a_missing_warehouse_file(write_sync, tmp_path, capsys):
    write_sync(user_sync(tmp_path / "nowhere.duckdb"))
    assert main(["validate"]) == 1
    assert (
        f"connection.path: the DuckDB warehouse file {tmp_path / 'nowhere.duckdb'} does not exist"
        in capsys.readouterr().err
    )


def test_run_with_a_missing_warehouse_fails_and_leaves_the_store_untouched(
    make_warehouse, write_sync, tmp_path, capsys
):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    before = _profile_store_bytes(tmp_path)
    warehouse.unlink()
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert _profile_store_bytes(tmp_path) == before


def test_run_with_a_non_select_model_fails_before_anything_runs(make_warehouse, write_sync, tmp_path, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL), data_model={"sql": "UPDATE crm.users SET plan = 'x'"}))
    assert main(["run", "crm_users"]) == 1
    assert "data_model.sql: the data model must be a SELECT, found UPDATE" in capsys.readouterr().err
    assert _profile_store_bytes(tmp_path) is None


def test_run_prints_counts_and_profile_json_has_the_documented_shape(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    out = capsys.readouterr().out
    assert "crm_users: partitions 2024-01-01" in out
    assert "profiles_created=2" in out and "rows_read=2" in out
    assert main(["profile", "--identity", "email=ada@example.com", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert set(profile) == {"profile_id", "environment", "identities", "attributes", "events"}
    assert profile["environment"] == "production"
    assert profile["identities"] == {"customer_id": "C001", "email": "ada@example.com"}
    assert profile["attributes"] == {"first_name": "Ada", "plan": "pro"}


def test_run_shows_its_progress_and_its_totals_once(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    captured = capsys.readouterr()
    assert "crm_users: read 2 rows, 0 rejected" in captured.err
    # The delivery knows how many rows it has to stage: the line says where it is of them.
    assert "crm_users: 2 of 2 rows staged, committed together at the end" in captured.err
    assert (captured.out + captured.err).count("profiles_created=") == 1


def test_run_over_several_stretches_says_how_many_partitions_are_done(make_warehouse, write_sync, capsys):
    # Daily windows are UTC days.
    days = [(datetime.now(UTC).date() - timedelta(days=back)).isoformat() for back in (4, 3, 2, 1)]
    write_sync(user_sync(make_warehouse(USERS_SQL), sync={"start": days[0], "historical_start": days[0]}))
    assert main(["run", "crm_users", "--partition", days[2]]) == 0
    capsys.readouterr()
    # Two stretches are due around the delivered day: two Dagster runs, three partitions in all.
    assert main(["run", "crm_users"]) == 0
    err = capsys.readouterr().err
    assert (
        f"crm_users: one Dagster run for partitions {days[0]}..{days[1]} (run 1 of 2: 0 of 3 partitions done)"
        in err
    )
    assert f"crm_users: one Dagster run for partitions {days[3]} (run 2 of 2: 2 of 3 partitions done" in err


def test_profile_that_does_not_exist_exits_non_zero(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["profile", "--identity", "email=nobody@example.com"]) == 1
    assert "no profile with email=nobody@example.com in production" in capsys.readouterr().err


def test_rejects_json_lists_rejected_rows_with_reasons(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(
        USERS_SQL + "INSERT INTO crm.users VALUES (NULL, NULL, 'Nobody', 'pro', "
        "TIMESTAMP '2024-01-01 12:00:00');"
    )
    write_sync(user_sync(warehouse))
    assert (
        main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    )  # 1 of 3 rows rejected: the check fails
    capsys.readouterr()
    assert main(["rejects", "crm_users", "--json"]) == 0
    [reject] = json.loads(capsys.readouterr().out)
    assert reject["reason"] == "no identity: customer_id, email all empty"
    assert reject["row"]["first_name"] == "Nobody"
    assert reject["partition"] == "2024-01-01"


def test_run_that_delivers_but_fails_the_reject_rate_check_exits_3(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(
        USERS_SQL
        + "INSERT INTO crm.users VALUES (NULL, NULL, 'Nobody', 'pro', TIMESTAMP '2024-01-01 12:00:00');"
    )
    write_sync(user_sync(warehouse))

    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    captured = capsys.readouterr()
    assert "profiles_created=2" in captured.out
    assert "check failed: crm_users/mapped_batches:reject_rate 33.3% of rows rejected" in captured.err


def test_preview_prints_enriched_profiles_and_writes_nothing(make_warehouse, write_sync, tmp_path, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["preview", "crm_users", "--limit", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == {
        "identities": {"customer_id": "C001", "email": "ada@example.com"},
        "attributes": {"first_name": "Ada", "plan": "pro"},
    }
    assert len(rows) == 2
    assert _profile_store_bytes(tmp_path) is None


def test_run_of_an_unknown_sync_lists_the_known_ones(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_userz"]) == 1
    assert "no sync named 'crm_userz' in " in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("syncs: crm_users")


def test_demo_creates_a_warehouse_and_sync_files_that_validate(tmp_path, wsync_env, capsys):
    assert main(["demo", "--dir", str(tmp_path), "--users", "500", "--events", "2000"]) == 0
    assert (tmp_path / "data" / "demo_warehouse.duckdb").exists()
    names = sorted(yaml.safe_load(p.read_text())["name"] for p in wsync_env.glob("*.yaml"))
    assert names == ["demo_events", "demo_segments", "demo_users"]
    # The demo's identity conflicts are deliberate, and its output says where to see them.
    assert "share an e-mail with another customer on purpose" in capsys.readouterr().out
    assert main(["validate"]) == 0


def test_console_script_runs_as_a_separate_process(make_warehouse, write_sync):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    result = subprocess.run(
        [sys.executable, "-m", "wsync_dagster.cli", "validate"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "✓ crm_users" in result.stdout


def test_run_brief_prints_one_line_per_run_and_keeps_failed_checks(make_warehouse, write_sync, capsys):
    warehouse = make_warehouse(
        USERS_SQL + "INSERT INTO crm.users VALUES ('C004', 'ada@example.com', 'Ann', 'pro', "
        "TIMESTAMP '2024-01-02 10:00:00'), (NULL, NULL, 'Nobody', 'pro', TIMESTAMP '2024-01-02 11:00:00');"
    )
    write_sync(user_sync(warehouse))
    # 1 of 5 rows rejected: the reject-rate check fails, and --brief still says so.
    assert main(["run", "crm_users", "--partition", "2024-01-01..2024-01-02", "--brief"]) == 3
    captured = capsys.readouterr()
    assert captured.out == (
        "crm_users: 2 partitions delivered: 5 rows read, 3 applied, 1 rejected, 1 identity conflict\n"
    )
    # No progress lines: only the checks that did not pass, as without --brief (2024's rows are old: a delay).
    warning, failed = captured.err.splitlines()
    assert warning.startswith(
        "  warning: crm_users/mapped_batches:data_delay data delay: the newest updated_at"
    )
    assert failed == (
        "  check failed: crm_users/mapped_batches:reject_rate 20.0% of rows rejected (1 of 5); "
        "see `wsync rejects crm_users`"
    )
    # One partition is named; what was read again and changed nothing is said as unchanged.
    assert main(["run", "crm_users", "--partition", "2024-01-01", "--brief"]) == 0
    assert capsys.readouterr().out == "crm_users: 2024-01-01 delivered: 2 rows read, 0 applied, 2 unchanged\n"
