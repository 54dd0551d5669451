"""Secrets stay secret: a planted value never shows in output, run storage, logs, the UI or the state folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from wsync_dagster.cli import main
from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster_tests.conftest import USERS_SQL, closed_port, code_location, user_sync, users_sync
from wsync_dagster_tests.engines import start
from wsync_dagster_tests.engines.postgres import PostgresEngine

PLANTED = "planted-7f3a9c-do-not-echo"


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real Dagster instance on disk, where runs, events and logs are kept."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _holding_the_secret(*places: Path) -> list[Path]:
    """Every file under these folders (or these files) whose bytes contain the planted value."""
    files = [p for place in places for p in ([place] if place.is_file() else place.rglob("*")) if p.is_file()]
    return [path for path in files if PLANTED.encode() in path.read_bytes()]


def test_a_yaml_error_on_a_secret_line_never_echoes_the_value(
    make_warehouse, write_sync, wsync_env, tmp_path, dagster_home, capsys
):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    broken = write_sync(
        f'name: crm_leads\nconnection:\n  type: duckdb\n  password: "{PLANTED}\nsync:\n  mode: full\n',
        name="crm_leads.yaml",
    )
    assert main(["validate"]) == 1
    assert main(["run", "crm_leads"]) == 1
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    assert main(["preview", "crm_users"]) == 0
    out, err = capsys.readouterr()
    assert f"{broken}: invalid YAML at line 4, column 13 (key 'password')" in err
    assert PLANTED not in out + err

    defs = code_location()
    shown = [(node.description, str(node.metadata)) for node in defs.resolve_asset_graph().asset_nodes]
    assert "key 'password'" in str(shown)
    assert PLANTED not in str(shown)
    assert _holding_the_secret(dagster_home, tmp_path / "state") == []


@pytest.mark.parametrize(
    "model",
    [
        # fails on the rows, inside the Dagster run
        f"SELECT customer_id, email, CAST(customer_id || '{PLANTED}' AS INTEGER) AS n, updated_at FROM crm.users",
        # a literal that is no time, compared with a timestamp column: DuckDB quotes it back
        f"SELECT customer_id, email, updated_at FROM crm.users WHERE updated_at > '{PLANTED}'",
    ],
    ids=["row_error", "literal_that_is_no_time"],
)
def test_a_failing_model_never_echoes_its_sql(
    make_warehouse, write_sync, tmp_path, dagster_home, capsys, model
):
    spec_path = write_sync(user_sync(make_warehouse(USERS_SQL), data_model={"sql": model}))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 1
    out, err = capsys.readouterr()
    assert "data_model.sql: the warehouse cannot run it:" in err
    assert PLANTED not in out + err

    # The same job as the UI and the schedules launch it, recorded in the instance's run storage.
    spec = load_sync_file(spec_path)
    job = build_definitions([spec]).resolve_job_def(sync_job_name(spec))
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, partition_key="2024-01-01", raise_on_error=False, tags={"test": "secrets"}
        )
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "data_model.sql: the warehouse cannot run it:" in failure.step_failure_data.error.to_string()
    assert _holding_the_secret(dagster_home, tmp_path / "state") == []


@pytest.mark.parametrize(
    "key",
    ["credentials_json", "credentials", "service_account_credentials", "private_key_passphrase", "client_secret",
     "access_token", "api_key", "aws_secret_access_key"],
)  # fmt: skip
def test_a_secret_looking_key_with_a_literal_value_is_refused_without_echoing_it(write_sync, tmp_path, key):
    raw = user_sync(tmp_path / "w.duckdb", connection={"type": "duckdb", "path": "w.duckdb", key: PLANTED})
    path = write_sync(raw)
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(error.value) == (
        f"{path}: connection.{key}: a secret is never written in a sync file; use {{env: VAR_NAME}}"
    )


def test_a_key_naming_where_a_secret_is_kept_may_hold_a_literal_path(write_sync, tmp_path):
    raw = user_sync(
        tmp_path / "w.duckdb",
        connection={"type": "duckdb", "path": "w.duckdb", "private_key_path": "/keys/rsa_key.p8"},
    )
    path = write_sync(raw)
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    # duckdb has no private key; the secret rule itself let the path through
    assert str(error.value) == f"{path}: connection.private_key_path: unknown key; allowed: type, path, name, query_timeout"


# ---- URLs that carry secrets, and PostgreSQL's other string literals (issue 17 item 6) ----------------

UNREADABLE_URL = (
    "profile store URL: cannot be read: a user or password holding /, ?, # or @ must be percent-encoded "
    "(%2F, %3F, %23, %40)"
)


@pytest.mark.parametrize("character", ["/", "?", "#", "@"])
def test_a_store_url_whose_password_holds_a_reserved_character_shows_no_part_of_it(
    wsync_env, monkeypatch, capsys, character
):
    head, tail = PLANTED[:13], PLANTED[13:]
    monkeypatch.setenv("WSYNC_PROFILE_STORE", f"postgresql://wsync:{head}{character}{tail}@127.0.0.1:5432/profiles")

    assert main(["profile", "--identity", "email=ada@example.com"]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == [f"wsync profile: {UNREADABLE_URL}"]
    assert head not in out + err and tail not in out + err


def test_a_store_url_with_a_port_that_is_no_number_shows_no_part_of_it(wsync_env, monkeypatch, capsys):
    monkeypatch.setenv("WSYNC_PROFILE_STORE", f"postgresql://wsync@127.0.0.1:{PLANTED}/profiles")

    assert main(["profile", "--identity", "email=ada@example.com"]) == 1

    out, err = capsys.readouterr()
    assert err.startswith("wsync profile: profile store URL: cannot be read: the host and port are not HOST[:PORT]")
    assert len(err.splitlines()) == 1
    assert PLANTED not in out + err


def test_a_password_that_libpq_refuses_to_decode_is_masked_as_written(wsync_env, monkeypatch, capsys):
    # libpq quotes the password as written (%41 not decoded) when a later escape is bad.
    monkeypatch.setenv("WSYNC_PROFILE_STORE", f"postgresql://wsync:{PLANTED}%41%zz@127.0.0.1:5432/profiles")

    assert main(["profile", "--identity", "email=ada@example.com"]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "wsync profile: profile store postgresql://wsync@127.0.0.1:5432/profiles: cannot connect: invalid dsn: "
        'invalid percent-encoded token: "***"'
    ]
    assert PLANTED not in out + err


def test_backfill_never_shows_the_urls_user_password_or_token(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    port = closed_port()
    url = f"http://wsync:{PLANTED}@127.0.0.1:{port}/dagster/?token={PLANTED}#{PLANTED}"

    assert main(["backfill", "crm_users", "--from", "2024-01-01", "--to", "2024-01-02", "--url", url]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"wsync backfill: no Dagster webserver answers at http://127.0.0.1:{port}/dagster (ConnectError): start "
        "one with `dagster dev` (its daemon runs the backfill) or pass --url"
    ]
    assert PLANTED not in out + err


@pytest.mark.parametrize(
    "url",
    [f"http://wsync:{PLANTED}@[::1/", f"http://wsync@127.0.0.1:{PLANTED}/", f"{PLANTED}.example.com:3000",
     f"ftp://wsync:{PLANTED}@127.0.0.1/"],
    ids=["unclosed_ipv6_host", "port_that_is_no_number", "no_scheme", "not_http"],
)  # fmt: skip
def test_a_malformed_backfill_url_is_one_line_without_the_url(make_warehouse, write_sync, capsys, url):
    write_sync(user_sync(make_warehouse(USERS_SQL)))

    assert main(["backfill", "crm_users", "--from", "2024-01-01", "--to", "2024-01-02", "--url", url]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "wsync backfill: --url: not the http(s) URL of a Dagster webserver, e.g. http://127.0.0.1:3000"
    ]
    assert PLANTED not in out + err


@pytest.fixture(params=["postgres", "redshift"])
def pg_engine(request, tmp_path: Path) -> Iterator[PostgresEngine]:
    """The local PostgreSQL server read through the postgres (COPY) and redshift (cursor) paths."""
    yield from start(request.param, tmp_path)


@pytest.mark.parametrize(
    "literal",
    [f"$${PLANTED}$$", f"$tag${PLANTED}$tag$", f"E'{PLANTED}'", f"E'{PLANTED[:5]}\\x41{PLANTED[5:]}'",
     f"U&'{PLANTED[:5]}\\0041{PLANTED[5:]}'", f"N'{PLANTED}'"],
    ids=["dollar_quoted", "tagged_dollar_quoted", "escape_string", "escape_string_with_an_escape",
         "unicode_escape_string", "national_string"],
)  # fmt: skip
def test_a_postgres_error_never_repeats_a_literal_in_any_quoting(pg_engine, write_sync, capsys, literal):
    pg_engine.load({})
    sql = f"SELECT 'C1' AS customer_id, CAST({literal} AS int) AS n, CAST('2024-01-01' AS timestamp) AS updated_at"
    write_sync(users_sync(pg_engine.connection(), sql))

    assert main(["preview", "users"]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"wsync preview: data_model.sql: the {pg_engine.connection_type} warehouse 127.0.0.1:5432/"
        f'{pg_engine.database} cannot run it: invalid input syntax for type integer: "***"'
    ]
    assert PLANTED not in out + err and PLANTED[5:] not in out + err
