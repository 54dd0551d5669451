"""Personal data stays in the profile store: Dagster's storage, which no erasure reaches, gets none by default.

Runs go through Dagster on a real instance on disk (DAGSTER_HOME with the repository's dagster.yaml, so the
SQLite event log is wsync's own); then every file under DAGSTER_HOME is searched byte by byte.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, EnvVar, materialize

from wsync_dagster.cli import main
from wsync_dagster.defs.assets import build_sync_assets
from wsync_dagster.defs.resources import ProfileStoreResource
from wsync_dagster.defs.warehouses import warehouse_key, warehouse_resource
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import ProfileStoreError, open_profile_store
from wsync_dagster_tests.conftest import pg_store_url, user_sync

EMAIL = "zelda.quistgaard.8841@example.com"
NAME = "Zeldaquistine"
PASSWORD = "pw-planted-5c1e"
PEOPLE_SQL = f"""
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
INSERT INTO crm.users VALUES
    ('C001', '{EMAIL}', '{NAME}', 'pro', TIMESTAMP '2024-01-01 10:15:00'),
    (NULL, NULL, '{NAME}', 'free', TIMESTAMP '2024-01-01 11:30:00');
"""


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real Dagster instance on disk with the repository's dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    yield home


def _files_holding(home: Path, planted: str) -> list[Path]:
    """Every file under the folder whose bytes contain the planted value."""
    return [path for path in home.rglob("*") if path.is_file() and planted.encode() in path.read_bytes()]


def _preview(home: Path) -> str:
    """The preview of the newest delivery, as Dagster's event log keeps it."""
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey(["crm_users", "delivery"]))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization.metadata["preview"].value


def test_by_default_no_identity_or_attribute_value_reaches_dagsters_storage(
    make_warehouse, write_sync, dagster_home, capsys
):
    write_sync(user_sync(make_warehouse(PEOPLE_SQL)))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 3  # the identity-less row is rejected
    out, err = capsys.readouterr()
    assert EMAIL not in out + err and NAME not in out + err

    preview = _preview(dagster_home)
    assert "| customer_id, email | first_name, plan |" in preview  # names, and the profile id, only
    with open_profile_store(f"sqlite:///{dagster_home.parent / 'state' / 'profiles.sqlite'}") as store:
        assert store.profile("email", EMAIL, "production")["attributes"]["first_name"] == NAME
    assert _files_holding(dagster_home, EMAIL) == []
    assert _files_holding(dagster_home, NAME) == []


def test_preview_values_true_shows_identity_and_attribute_values_in_the_preview(
    make_warehouse, write_sync, dagster_home
):
    write_sync(user_sync(make_warehouse(PEOPLE_SQL), sync={"preview_values": True}))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 3

    preview = _preview(dagster_home)
    assert f"email={EMAIL}" in preview and f"first_name='{NAME}'" in preview
    assert _files_holding(dagster_home, EMAIL) != []  # the search above finds what is there


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://wsync:{PASSWORD}@db.internal:5432/profiles",
        f"postgresql://wsync:{PASSWORD}/with@slash@db.internal/profiles",
        f"postgresql://wsync@db.internal/profiles?sslmode=require&password={PASSWORD}",
    ],
    ids=["user_and_password", "password_with_unencoded_characters", "password_parameter"],
)
def test_a_store_url_with_a_password_as_plain_resource_config_is_refused_without_showing_it(url):
    with pytest.raises(ProfileStoreError) as refused:
        ProfileStoreResource(url=url)
    message = str(refused.value)
    assert message == (
        "profile_store resource: url holds a password, which Dagster would keep in its runs and show in its "
        'UI; pass url=EnvVar("WSYNC_PROFILE_STORE") or url_env="WSYNC_PROFILE_STORE" and set that variable '
        "to the URL"
    )
    assert not any(PASSWORD[i : i + 4] in message for i in range(len(PASSWORD) - 3))


@pytest.mark.parametrize(
    "resource",
    [
        ProfileStoreResource(url=EnvVar("CRM_PROFILE_STORE")),
        ProfileStoreResource(url_env="CRM_PROFILE_STORE"),
    ],
    ids=["env_var", "url_env"],
)
def test_a_store_url_from_the_environment_keeps_its_password_out_of_dagster(
    make_warehouse, write_sync, dagster_home, pg_store_database, monkeypatch, resource
):
    # The local PostgreSQL trusts its clients: the password is sent nowhere, yet it is in the URL.
    url = pg_store_url(pg_store_database).replace("postgres@", f"postgres:{PASSWORD}@", 1)
    monkeypatch.setenv("CRM_PROFILE_STORE", url)
    spec = load_sync_file(write_sync(user_sync(make_warehouse(PEOPLE_SQL))))
    with DagsterInstance.get() as instance:
        result = materialize(
            build_sync_assets(spec),
            partition_key="2024-01-01",
            instance=instance,
            resources={"profile_store": resource, warehouse_key(spec): warehouse_resource(spec)},
        )
    assert result.success
    with open_profile_store(url) as store:
        assert store.profile("customer_id", "C001", "production")["identities"]["email"] == EMAIL
    assert _files_holding(dagster_home, PASSWORD) == []


def test_a_url_env_that_is_not_set_fails_the_delivery_naming_the_variable(
    make_warehouse, write_sync, dagster_home, monkeypatch
):
    monkeypatch.delenv("CRM_PROFILE_STORE", raising=False)
    spec = load_sync_file(write_sync(user_sync(make_warehouse(PEOPLE_SQL))))
    with DagsterInstance.get() as instance:
        result = materialize(
            build_sync_assets(spec),
            partition_key="2024-01-01",
            instance=instance,
            resources={
                "profile_store": ProfileStoreResource(url_env="CRM_PROFILE_STORE"),
                warehouse_key(spec): warehouse_resource(spec),
            },
            raise_on_error=False,
        )
    error = next(event for event in result.all_events if event.is_step_failure).step_failure_data.error
    assert error.cause.message.strip() == (
        "wsync_dagster.store.ProfileStoreError: profile_store resource: the environment variable CRM_PROFILE_STORE (url_env) is not set; it holds "
        "the profile store URL"
    )
