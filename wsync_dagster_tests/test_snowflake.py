"""Snowflake: its own types and names, key-pair logins and connection errors, on fakesnow's server.

fakesnow runs Snowflake's SQL on DuckDB and lets any login in; the engine puts a login check in front
of it (a wrong password or key is refused as Snowflake refuses it). Where fakesnow cannot show a
behaviour (it resolves names case-insensitively), the test says what stands in.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlglot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from wsync_dagster.cli import main
from wsync_dagster.data_model import windowed_sql
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import users_sync
from wsync_dagster_tests.engines.snowflake import PASSWORD_ENV, SnowflakeEngine, start

# Rows whose iterator instants fall around the window of 2024-01-02 (UTC), written with UTC offsets.
CHANGES = {
    "C1": "2024-01-02T00:30:00+01:00",  # 2024-01-01 23:30 UTC: the day before
    "C2": "2024-01-01T19:00:00-05:00",  # 2024-01-02 00:00 UTC: the window's first instant
    "C3": "2024-01-02T23:59:59+00:00",
    "C4": "2024-01-02T20:00:00-04:00",  # 2024-01-03 00:00 UTC: the next window's first instant
}
UTC_WALL_TIMES = {
    "C1": "2024-01-01 23:30:00",
    "C2": "2024-01-02",
    "C3": "2024-01-02 23:59:59",
    "C4": "2024-01-03",
}
UTC_DATES = {"C1": "2024-01-01", "C2": "2024-01-02", "C3": "2024-01-02", "C4": "2024-01-03"}


@pytest.fixture
def snowflake(tmp_path: Path) -> Iterator[SnowflakeEngine]:
    yield from start(tmp_path)


def _users_sync(
    connection: dict, sql: str = "SELECT customer_id, plan, changed_at FROM crm.users", **sync
) -> dict:
    return users_sync(connection, sql, iterator="changed_at", **sync)


def _users_table(snowflake: SnowflakeEngine, iterator_type: str, values: dict[str, str]) -> None:
    rows = " UNION ALL ".join(
        f"SELECT '{customer}', 'pro', '{value}'::{iterator_type}" for customer, value in values.items()
    )
    snowflake.execute(
        "CREATE SCHEMA crm",
        f"CREATE TABLE crm.users (customer_id VARCHAR, plan VARCHAR, changed_at {iterator_type})",
        f"INSERT INTO crm.users {rows}",
    )


def _profiles(*customers: str) -> dict:
    store = open_profile_store(profile_store_url())
    try:
        found = {customer: store.profile("customer_id", customer) for customer in customers}
    finally:
        store.close()
    return {customer: profile["attributes"] for customer, profile in found.items() if profile}


def _delivered() -> list[str]:
    store = open_profile_store(profile_store_url())
    try:
        return store.delivered_partitions("users", "production")
    finally:
        store.close()


def _store_bytes(tmp_path: Path) -> bytes | None:
    path = tmp_path / "state" / "profiles.sqlite"
    return path.read_bytes() if path.exists() else None


def _closed_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("iterator_type", "values", "sync_type"),
    [
        ("TIMESTAMP_NTZ", UTC_WALL_TIMES, "timestamp"),
        ("TIMESTAMP_LTZ", CHANGES, "timestamp"),
        ("TIMESTAMP_TZ", CHANGES, "timestamp"),
        ("DATE", UTC_DATES, "date"),
    ],
)
def test_a_snowflake_iterator_column_windows_by_its_utc_instant(
    snowflake, write_sync, iterator_type, values, sync_type
):
    _users_table(snowflake, iterator_type, values)
    # Without lookback, so the window's own bounds decide what is read.
    write_sync(_users_sync(snowflake.connection(), iterator_type=sync_type, lookback="0s"))

    assert main(["run", "users", "--partition", "2024-01-02"]) == 0

    assert set(_profiles(*values)) == {"C2", "C3"}


def test_snowflake_semi_structured_and_local_time_values_become_json_and_utc_profile_values(
    snowflake, write_sync
):
    snowflake.execute(
        "CREATE SCHEMA crm",
        "CREATE TABLE crm.users (customer_id VARCHAR, prefs VARIANT, address OBJECT, seen_at TIMESTAMP_LTZ, "
        "changed_at TIMESTAMP_NTZ)",
        'INSERT INTO crm.users SELECT \'C1\', PARSE_JSON(\'{"theme": "dark", "sizes": [1, 2]}\'), '
        "OBJECT_CONSTRUCT('city', 'Oslo'), '2024-01-01T10:30:00+01:00'::TIMESTAMP_LTZ, "
        "'2024-01-01 12:00:00'::TIMESTAMP_NTZ",
    )
    write_sync(
        _users_sync(
            snowflake.connection(),
            sql="SELECT customer_id, prefs, address, seen_at, changed_at FROM crm.users",
        )
    )

    assert main(["run", "users", "--partition", "2024-01-01"]) == 0

    assert _profiles("C1") == {
        "C1": {
            "prefs": {"theme": "dark", "sizes": [1, 2]},
            "address": {"city": "Oslo"},
            "seen_at": "2024-01-01 09:30:00+00",
        }
    }


def test_unquoted_snowflake_names_read_in_lower_case_and_quoted_names_as_written(snowflake, write_sync):
    _users_table(snowflake, "TIMESTAMP_NTZ", UTC_WALL_TIMES)
    write_sync(
        _users_sync(
            snowflake.connection(),
            sql='SELECT customer_id, PLAN, plan AS "planName", changed_at FROM crm.users',
        )
    )

    assert main(["run", "users", "--partition", "2024-01-02"]) == 0

    assert _profiles("C2")["C2"] == {"plan": "pro", "planName": "pro"}


def test_the_window_names_the_iterator_as_snowflake_folds_it_checked_with_sqlglot_as_fakesnow_ignores_case():
    # Snowflake stores an unquoted changed_at as CHANGED_AT; a quoted "changed_at" would not find it.
    query = sqlglot.parse_one(
        windowed_sql("SELECT customer_id, changed_at FROM crm.users", "changed_at", "snowflake"),
        read="snowflake",
    )
    window = normalize_identifiers(query.args["where"], dialect="snowflake")

    assert {column.name for column in window.find_all(exp.Column)} == {"CHANGED_AT"}


def test_snowflake_source_assets_are_keyed_by_database_schema_and_table(snowflake, write_sync):
    connection = snowflake.connection(database="Analytics", schema="CRM")
    sql = "SELECT u.customer_id, u.changed_at FROM users u JOIN web.events e ON e.id = u.id JOIN raw.web.visits v ON v.id = u.id"
    spec = load_sync_file(write_sync(_users_sync(connection, sql=sql)))

    assert sorted(key.path for key in source_keys(spec)) == [
        ["warehouse", "analytics", "crm", "users"],
        ["warehouse", "analytics", "web", "events"],
        ["warehouse", "raw", "web", "visits"],
    ]


def test_a_snowflake_connection_takes_one_way_to_log_in(snowflake, write_sync):
    connection = snowflake.connection(private_key={"env": "WSYNC_TEST_SNOWFLAKE_KEY"})

    with pytest.raises(SyncSpecError) as error:
        load_sync_file(write_sync(_users_sync(connection)))

    assert (
        "connection: give one of password, private_key or private_key_path, not password and private_key"
        in str(error.value)
    )


def _key_pair(snowflake: SnowflakeEngine, user: str) -> rsa.RSAPrivateKey:
    """A new key pair whose public key the server holds for the user, as ALTER USER … SET RSA_PUBLIC_KEY does."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    snowflake.server.public_keys[user] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key


def _pem(key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _key_pair_connection(snowflake: SnowflakeEngine, **login) -> dict:
    connection = snowflake.connection(user="wsync_keys", **login)
    del connection["password"]
    return connection


def _key_file_sync(
    snowflake: SnowflakeEngine, write_sync, folder: Path, monkeypatch, passphrase: str
) -> Path:
    """A sync logging in with keys/rsa_key.p8 (encrypted with "open sesame") and the passphrase given."""
    key = _key_pair(snowflake, "wsync_keys")
    (folder / "keys").mkdir()
    (folder / "keys" / "rsa_key.p8").write_bytes(_pem(key, b"open sesame"))
    monkeypatch.setenv("WSYNC_TEST_SNOWFLAKE_PASSPHRASE", passphrase)
    connection = _key_pair_connection(
        snowflake,
        private_key_path="keys/rsa_key.p8",  # relative to the sync file
        private_key_passphrase={"env": "WSYNC_TEST_SNOWFLAKE_PASSPHRASE"},
    )
    return write_sync(_users_sync(connection))


def test_a_key_pair_login_signs_with_the_pem_key_from_the_environment_checked_by_a_login_check_as_fakesnow_does_not(
    snowflake, write_sync, monkeypatch, capsys
):
    key = _key_pair(snowflake, "wsync_keys")
    monkeypatch.setenv("WSYNC_TEST_SNOWFLAKE_KEY", _pem(key).decode())
    _users_table(snowflake, "TIMESTAMP_NTZ", UTC_WALL_TIMES)
    write_sync(_users_sync(_key_pair_connection(snowflake, private_key={"env": "WSYNC_TEST_SNOWFLAKE_KEY"})))

    assert main(["validate"]) == 0
    assert "✓ users" in capsys.readouterr().out


def test_a_key_file_with_a_passphrase_signs_the_login_checked_by_a_login_check_as_fakesnow_does_not(
    snowflake, write_sync, wsync_env, monkeypatch, capsys
):
    _users_table(snowflake, "TIMESTAMP_NTZ", UTC_WALL_TIMES)
    _key_file_sync(snowflake, write_sync, wsync_env, monkeypatch, "open sesame")

    assert main(["validate"]) == 0
    assert "✓ users" in capsys.readouterr().out


def test_a_key_pair_login_with_a_key_snowflake_does_not_hold_is_refused_by_a_login_check_standing_in_for_snowflake(
    snowflake, write_sync, monkeypatch, capsys
):
    _key_pair(snowflake, "wsync_keys")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("WSYNC_TEST_SNOWFLAKE_KEY", _pem(other_key).decode())
    write_sync(_users_sync(_key_pair_connection(snowflake, private_key={"env": "WSYNC_TEST_SNOWFLAKE_KEY"})))

    assert main(["validate"]) == 1
    assert "Incorrect username or password was specified" in capsys.readouterr().err


def test_a_wrong_key_passphrase_names_the_key_and_never_shows_the_passphrase(
    snowflake, write_sync, wsync_env, monkeypatch, capsys
):
    path = _key_file_sync(snowflake, write_sync, wsync_env, monkeypatch, "planted-passphrase-8d2e")

    assert main(["validate"]) == 1
    captured = capsys.readouterr()
    assert (
        f"✗ users: {path}: connection.private_key_path: cannot load the key for snowflake account fakesnow"
        in captured.err
    )
    assert "private_key_passphrase does not open it" in captured.err
    assert "planted-passphrase-8d2e" not in captured.out + captured.err


def _fails_in_one_line(command: list[str], capsys) -> str:
    """The one line a failing command prints, with anything else it printed after it."""
    assert main(command) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0] + captured.out


def test_an_unreachable_snowflake_host_fails_in_one_line_naming_the_sync_and_account_and_writes_nothing(
    snowflake, write_sync, capsys
):
    path = write_sync(_users_sync(snowflake.connection(port=_closed_port())))

    line = _fails_in_one_line(["validate"], capsys)
    assert line.startswith(
        f"✗ users: {path}: connection: cannot log in to snowflake account fakesnow at 127.0.0.1:"
    )
    assert "Could not connect to Snowflake backend" in line
    assert "cannot log in to snowflake account fakesnow" in _fails_in_one_line(
        ["run", "users", "--partition", "2024-01-02"], capsys
    )
    assert _delivered() == []


def test_a_refused_snowflake_login_by_a_password_check_standing_in_for_snowflake_never_shows_the_password(
    snowflake, write_sync, tmp_path, monkeypatch, capsys, caplog
):
    _users_table(snowflake, "TIMESTAMP_NTZ", UTC_WALL_TIMES)
    path = write_sync(_users_sync(snowflake.connection()))
    assert main(["run", "users", "--partition", "2024-01-01"]) == 0
    before = _store_bytes(tmp_path)
    monkeypatch.setenv(PASSWORD_ENV, "planted-password-51c7")
    capsys.readouterr()

    line = _fails_in_one_line(["validate"], capsys)
    assert line.startswith(
        f"✗ users: {path}: connection: cannot log in to snowflake account fakesnow at 127.0.0.1:"
    )
    assert "Incorrect username or password was specified" in line
    run_line = _fails_in_one_line(["run", "users", "--partition", "2024-01-02"], capsys)
    assert "Incorrect username or password was specified" in run_line
    assert "planted-password-51c7" not in line + run_line + caplog.text
    assert _store_bytes(tmp_path) == before


def test_a_missing_snowflake_table_fails_in_one_line_naming_the_sync_and_account(
    snowflake, write_sync, capsys
):
    snowflake.execute("CREATE SCHEMA crm")
    write_sync(_users_sync(snowflake.connection()))

    line = _fails_in_one_line(["validate"], capsys)
    assert line.startswith("✗ users: data_model.sql: snowflake account fakesnow at 127.0.0.1:")
    assert "USERS does not exist" in line
    assert "USERS does not exist" in _fails_in_one_line(["run", "users", "--partition", "2024-01-02"], capsys)
    assert _delivered() == []


def test_a_missing_snowflake_schema_fails_in_one_line_naming_the_sync_and_account(
    snowflake, write_sync, capsys
):
    write_sync(_users_sync(snowflake.connection()))

    line = _fails_in_one_line(["validate"], capsys)
    assert line.startswith("✗ users: data_model.sql: snowflake account fakesnow at 127.0.0.1:")
    assert 'schema "CRM" does not exist' in line


def test_an_unset_snowflake_password_variable_names_the_field_and_the_variable(
    snowflake, write_sync, monkeypatch, capsys
):
    write_sync(_users_sync(snowflake.connection(password={"env": "WSYNC_TEST_UNSET_PASSWORD"})))
    monkeypatch.delenv("WSYNC_TEST_UNSET_PASSWORD", raising=False)

    line = _fails_in_one_line(["validate"], capsys)
    assert "connection.password: environment variable WSYNC_TEST_UNSET_PASSWORD is not set" in line


def test_an_unknown_snowflake_key_lists_schema_among_the_allowed_keys(snowflake, write_sync):
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(write_sync(_users_sync(snowflake.connection(schemas="CRM"))))

    assert "connection.schemas: unknown key; allowed: type, account, user, password, private_key" in str(
        error.value
    )
    assert "database, schema, role, host, port, protocol" in str(error.value)


def test_preview_reads_a_sample_from_snowflake_and_writes_nothing(snowflake, write_sync, tmp_path, capsys):
    _users_table(snowflake, "TIMESTAMP_NTZ", UTC_WALL_TIMES)
    write_sync(_users_sync(snowflake.connection()))

    assert main(["preview", "users", "--limit", "2"]) == 0

    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["attributes"] for row in rows] == [{"plan": "pro"}, {"plan": "pro"}]
    assert _store_bytes(tmp_path) is None
