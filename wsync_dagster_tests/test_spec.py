"""SPEC §2: sync files are validated before anything runs; errors name the file, the field and what is allowed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from wsync_dagster.spec import SyncSpecError, load_sync_file, load_sync_folder
from wsync_dagster_tests.conftest import user_sync


def test_valid_sync_file_loads_with_defaults(write_sync, tmp_path):
    spec = load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", sync={"schedule": "on_demand"})))
    assert spec.description == ""
    assert spec.mapping is None
    assert spec.sync.lookback is None  # by default, one window back
    assert spec.sync.environment == "production"
    assert spec.sync.input_protection == "create_and_update"
    assert spec.sync.paused is False
    assert spec.destination.type == "profile_store"
    assert spec.sync.historical_start == datetime(2024, 1, 1, tzinfo=UTC)


def test_schedule_defaults_to_on_demand(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb")
    for key in ("schedule", "frequency", "start"):
        raw["sync"].pop(key)
    assert load_sync_file(write_sync(raw)).sync.schedule == "on_demand"


def test_historical_start_defaults_to_start(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb", sync={"start": "2024-11-15T19:00:00Z"})
    raw["sync"].pop("historical_start")
    assert load_sync_file(write_sync(raw)).sync.history_start == datetime(2024, 11, 15, 19, tzinfo=UTC)


def test_unknown_key_is_an_error_naming_file_field_and_allowed_keys(write_sync, tmp_path):
    path = write_sync(user_sync(tmp_path / "w.duckdb", sync={"iterater": "x"}))
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    message = str(error.value)
    assert str(path) in message
    assert "sync.iterater: unknown key" in message
    assert "iterator_type" in message  # the allowed keys are listed


def test_unknown_top_level_key_is_an_error(write_sync, tmp_path):
    with pytest.raises(SyncSpecError, match=r"schedule: unknown key; allowed: name, description"):
        load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", schedule="daily")))


def test_invalid_yaml_is_an_error_naming_the_file(write_sync):
    path = write_sync("name: x\ndata_type: [user\n", name="broken.yaml")
    with pytest.raises(SyncSpecError, match=rf"{path}: invalid YAML"):
        load_sync_file(path)


def test_name_must_be_lower_snake_case(write_sync, tmp_path):
    with pytest.raises(SyncSpecError, match=r"name: .*\[a-z\]\[a-z0-9_\]\*"):
        load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", name="CRM-Users"), name="x.yaml"))


def test_names_must_be_unique_across_files(write_sync, wsync_env, tmp_path):
    write_sync(user_sync(tmp_path / "w.duckdb"), name="a.yaml")
    write_sync(user_sync(tmp_path / "w.duckdb"), name="b.yaml")
    folder = load_sync_folder(wsync_env)
    assert [spec.source_file.name for spec in folder.specs] == ["a.yaml"]
    (invalid,) = folder.invalid
    assert re.fullmatch(r".*b.yaml: name: 'crm_users' is already used by .*a.yaml", invalid.errors[0])


def test_enumerations_list_what_is_allowed(write_sync, tmp_path):
    with pytest.raises(SyncSpecError, match=r"sync.mode: Input should be 'full', 'incremental' or 'cdc'"):
        load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", sync={"mode": "delta"})))


def test_unsupported_connection_type_names_the_allowed_ones(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb", connection={"type": "oracle", "path": "x"})
    with pytest.raises(SyncSpecError, match=r"connection: .*'oracle'.*'duckdb'"):
        load_sync_file(write_sync(raw))


def test_incremental_requires_an_iterator(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb")
    raw["sync"].pop("iterator")
    with pytest.raises(SyncSpecError, match=r"sync: iterator: required when mode is incremental"):
        load_sync_file(write_sync(raw))


def test_interval_requires_frequency_and_start(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb")
    raw["sync"].pop("frequency")
    with pytest.raises(SyncSpecError, match=r"frequency: required when schedule is interval"):
        load_sync_file(write_sync(raw))


def test_lookback_is_a_duration(write_sync, tmp_path):
    spec = load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", sync={"lookback": "2h"})))
    assert spec.sync.lookback == timedelta(hours=2)
    with pytest.raises(SyncSpecError, match=r"sync.lookback: a duration such as 0s, 30m, 2h, 1d or 1w"):
        load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", sync={"lookback": "soon"})))


def test_data_model_must_be_a_single_select(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb", data_model={"sql": "SELECT 1; DROP TABLE crm.users"})
    with pytest.raises(SyncSpecError, match=r"data_model.sql: one SELECT statement is allowed, found 2"):
        load_sync_file(write_sync(raw))


def test_data_model_must_not_write(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb", data_model={"sql": "DELETE FROM crm.users"})
    with pytest.raises(SyncSpecError, match=r"data_model.sql: the data model must be a SELECT, found DELETE"):
        load_sync_file(write_sync(raw))


def test_mapping_field_must_be_a_known_target(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb",
        mapping=[{"type": "column", "column": "email", "field": "user_identities.mail"}],
    )
    with pytest.raises(
        SyncSpecError,
        match=r"mapping\[0\].field: unknown identity 'user_identities.mail'; allowed: user_identities.<one of customer_id, email",
    ):
        load_sync_file(write_sync(raw))


def test_unmapped_needs_a_wildcard_field(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb",
        mapping=[{"type": "column", "column": "$unmapped", "field": "user_attributes.x"}],
    )
    with pytest.raises(SyncSpecError, match=r"\$unmapped maps to a wildcard field"):
        load_sync_file(write_sync(raw))


def test_static_values_are_typed(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb",
        mapping=[
            {"type": "static", "value": 3, "field": "user_attributes.tier"},
            {"type": "static", "value": True, "field": "user_attributes.vip"},
            {"type": "column", "column": "$unmapped", "field": "user_attributes.*"},
        ],
    )
    values = [entry.value for entry in load_sync_file(write_sync(raw)).mapping[:2]]
    assert values == [3, True] and isinstance(values[1], bool)


def test_event_sync_requires_a_mapping(write_sync, tmp_path):
    with pytest.raises(SyncSpecError, match=r"mapping: required for event data"):
        load_sync_file(write_sync(user_sync(tmp_path / "w.duckdb", data_type="event")))


def test_every_error_of_every_file_is_reported_together(write_sync, wsync_env, tmp_path):
    write_sync(user_sync(tmp_path / "w.duckdb", extra=1), name="a.yaml")
    write_sync(user_sync(tmp_path / "w.duckdb", name="other", sync={"mode": "x"}), name="b.yaml")
    errors = "\n".join(line for file in load_sync_folder(wsync_env).invalid for line in file.errors)
    assert "a.yaml: extra: unknown key" in errors
    assert "b.yaml: sync.mode" in errors


def test_a_date_iterator_needs_whole_day_windows(write_sync, tmp_path):
    raw = user_sync(tmp_path / "w.duckdb", sync={"iterator_type": "date", "frequency": "hourly"})
    with pytest.raises(SyncSpecError, match=r"a date iterator needs whole-day windows"):
        load_sync_file(write_sync(raw))


def test_a_literal_secret_is_refused_without_echoing_it(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb", connection={"type": "duckdb", "path": "w.duckdb", "password": "hunter2"}
    )
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(write_sync(raw))
    assert "connection.password: a secret is never written in a sync file; use {env: VAR_NAME}" in str(
        error.value
    )
    assert "hunter2" not in str(error.value)


def test_a_secret_given_as_env_reference_passes_the_secret_rule(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb", connection={"type": "duckdb", "path": "w.duckdb", "token": {"env": "T"}}
    )
    with pytest.raises(SyncSpecError, match=r"connection.token: unknown key") as error:
        load_sync_file(write_sync(raw))  # duckdb has no token; the rule itself let the reference through
    assert "secret is never written" not in str(error.value)


def test_historical_start_after_start_is_an_error_naming_both(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb", sync={"start": "2024-02-01T06:00:00Z", "historical_start": "2024-03-01"}
    )
    with pytest.raises(
        SyncSpecError, match=r"sync: historical_start: 2024-03-01 is after start 2024-02-01T06:00:00Z"
    ):
        load_sync_file(write_sync(raw))
